"""OpenStack's own Neutron API tests (tempest) against `sbnet serve` with a real Keystone.

Run: python bench/bench_tempest.py [--regex '^tempest.api.network'] [--concurrency 2]
Creates the separate venv (scripts/openstack-venv) if needed, starts a private Keystone
(SQLite, fernet) and `sbnet serve --keystone-config`, generates tempest.conf (dynamic
credentials; compute, image, volume and object storage off; api_extensions from what
/v2.0/extensions lists), runs tempest and prints each failure, each skip reason with its
count, and one line 'N passed, N failed, N skipped'.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
from pathlib import Path

from sbnet.api.openstack import keystone_and_sbnet, run_tempest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regex", default="^tempest.api.network")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--keep", help="copy tempest's output and log to this directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sbnet-tempest-"))
    try:
        with keystone_and_sbnet() as (ks, url):
            result = run_tempest(ks, url, args.regex, workdir, args.concurrency)
        if args.keep:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(workdir / "tempest-output.txt", keep)
            if (workdir / "tempest" / "tempest.log").exists():
                shutil.copy(workdir / "tempest" / "tempest.log", keep)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name in result.failures:
        print("FAILED", name)
    for reason, n in collections.Counter(result.skips.values()).most_common():
        print(f"skipped {n:3d}: {reason}")
    print(f"tempest {args.regex}: {result.seconds:.0f} s")
    print(result.summary())
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
