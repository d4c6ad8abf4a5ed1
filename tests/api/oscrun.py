"""Runs the real python-openstackclient, in-process (same code path as the `openstack` binary) or as a process of its own."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import sys

from osc_lib import clientmanager
from openstackclient import shell


def _forget_clients() -> None:
    """osc-lib caches each service's client on the ClientManager class (a ClientCache
    descriptor per plugin), so in one process a command would reuse the endpoint of the
    first one run; forgotten before each command, as a fresh `openstack` process starts."""
    for attr in vars(clientmanager.ClientManager).values():
        if isinstance(attr, clientmanager.ClientCache):
            attr._handle = None


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`openstack ARGV` in this process, as the binary runs it: (exit status, stdout, stderr)."""
    _forget_clients()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = shell.main(argv)
        except SystemExit as exc:  # argparse exits on a usage error
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


class Osc:
    def __init__(self, url: str, extra: list[str] | None = None, process: bool = False) -> None:
        """process: each command in a process of its own (the `openstack` binary's way);
        otherwise in this one, its cached clients forgotten before each command."""
        self.base = ["--os-auth-type", "none", "--os-endpoint", url, *(extra or [])]
        self.process = process

    def run(self, cmd: str) -> tuple[int, str, str]:
        if self.process:
            res = subprocess.run([sys.executable, "-m", "openstackclient.shell", *self.base,
                                  *shlex.split(cmd)], capture_output=True, text=True, timeout=300)
            return res.returncode, res.stdout, res.stderr
        return run_cli([*self.base, *shlex.split(cmd)])

    def __call__(self, cmd: str) -> object:
        """Run a command that must succeed; parse its -f json output when it has any."""
        rc, out, err = self.run(cmd)
        assert rc == 0, f"{cmd!r} failed: {err}"
        return json.loads(out) if out.strip() else None

    def fails(self, cmd: str) -> str:
        rc, out, err = self.run(cmd)
        assert rc != 0, f"{cmd!r} unexpectedly succeeded: {out}"
        return err
