"""Numba's on-disk cache of the datapath's kernels, dropped whole when a source they build from changes."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import sys

import numba

# numba checks a cached kernel against its own file only: a kernel that inlines or calls
# a function, or reads a constant, from another file keeps its old code when only that
# file changes (the express lane kept an older extract and decap after an update, and its
# ct + VXLAN figure read 0.9 Mpps where a fresh build gives 1.4).  Constants can move
# too (a slot number, a column of conntrack's table), so stale code may be wrong, not
# only slow.  The kernels read the datapath's modules and the flow language's fields.
_SBNET = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = (os.path.join(_SBNET, "datapath"), os.path.join(_SBNET, "flows"))
STAMP = "sbnet-kernels.digest"


def _files(roots) -> list[str]:
    return sorted(p for r in roots for p in glob.glob(os.path.join(r, "**", "*.py"),
                                                      recursive=True))


def digest(roots=SOURCES) -> str:
    """A hash of every source file under roots, numba's version and Python's."""
    h = hashlib.sha256(f"{numba.__version__} {sys.version}".encode())
    for path in _files(roots):
        h.update(path.encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def cache_dirs(roots=SOURCES) -> list[str]:
    """Where numba keeps the cache of a function defined under roots: __pycache__ beside
    its file, or under $NUMBA_CACHE_DIR in a directory named after the file's (its last
    name and a SHA-1 of its path, as numba's locator names it)."""
    dirs = sorted({os.path.dirname(p) for p in _files(roots)})
    out = [os.path.join(d, "__pycache__") for d in dirs]
    if numba.config.CACHE_DIR:
        out += [os.path.join(numba.config.CACHE_DIR, "_".join(
            [os.path.basename(d), hashlib.sha1(d.encode()).hexdigest()])) for d in dirs]
    return out


def drop_stale(roots=SOURCES) -> bool:
    """Remove every cached kernel under roots when their sources are not those the cache
    was last checked against (the digest kept in the first root's __pycache__), then
    record the sources' digest.  Returns whether it removed them.  A cache that cannot be
    written (an installed, read-only tree) is left to numba."""
    want = digest(roots)
    stamp = os.path.join(roots[0], "__pycache__", STAMP)
    with contextlib.suppress(OSError), open(stamp) as f:
        if f.read().strip() == want:
            return False
    for d in cache_dirs(roots):
        for path in glob.glob(os.path.join(d, "*.nb[ic]")):
            with contextlib.suppress(OSError):
                os.unlink(path)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(stamp), exist_ok=True)
        tmp = f"{stamp}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(want)
        os.replace(tmp, stamp)
    return True
