"""Compile the kernel tier's BPF program once per source version, cached by the hash of its sources."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sbnet.datapath.ebpf.libbpf import BpfError

SOURCE_DIR = Path(__file__).parent / "bpf"
PROGRAM = "sbnet_dp.bpf.c"
CFLAGS = ("-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror")


def cache_dir() -> Path:
    base = os.environ.get("SBNET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sbnet")
    return Path(base) / "ebpf"


def _includes() -> list[str]:
    """Debian keeps asm/ under the multiarch directory; clang -target bpf does not look there."""
    out = []
    for d in Path("/usr/include").glob("*-linux-gnu"):
        if (d / "asm").is_dir():
            out.append(f"-I{d}")
    return out


def source_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(SOURCE_DIR.iterdir()):
        if f.suffix in (".c", ".h"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    return h.hexdigest()[:16]


def object_path() -> Path:
    """The compiled object for the current sources, compiled now if not cached."""
    out = cache_dir() / f"sbnet_dp-{source_hash()}.o"
    if out.exists():
        return out
    clang = shutil.which("clang")
    if clang is None:
        raise BpfError(2, "clang is not installed: the kernel tier compiles its BPF program "
                          "with clang -target bpf (apt-get install clang llvm libbpf-dev)")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise BpfError(2, "libbpf headers are missing (apt-get install libbpf-dev)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".o")
    os.close(fd)
    cmd = [clang, *CFLAGS, *_includes(), "-c", str(SOURCE_DIR / PROGRAM), "-o", tmp]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        os.unlink(tmp)
        first = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip())
        raise BpfError(8, f"compiling {PROGRAM} failed: {first}")
    os.replace(tmp, out)          # atomic: concurrent builders agree on the result
    return out
