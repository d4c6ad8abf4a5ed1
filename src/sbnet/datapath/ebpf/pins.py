"""The kernel tier's maps pinned under /sys/fs/bpf/sbnet/NAME (or $SBNET_BPFFS/sbnet/NAME), so a restarted agent takes up the megaflows and connections its predecessor left (and removal of them for good)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import subprocess
from pathlib import Path

from sbnet.datapath.ebpf.libbpf import BpfError, pin, pinned, tc_detach_ingress

ENV = "SBNET_BPFFS"
# Maps that outlive the agent: what the program reads and writes while no agent runs.
PINNED = ("flows", "masks", "config", "ports", "conns", "conns6", "meters", "stats", "upcalls",
          "upcall_budget", "zone_limits", "zone_commits")


def bpffs() -> Path:
    """The BPF file system pins go to: /sys/fs/bpf, or $SBNET_BPFFS (`ip netns exec` gives
    its commands a /sys of their own, without the host's BPF file system)."""
    return Path(os.environ.get(ENV) or "/sys/fs/bpf")


def root() -> Path:
    return bpffs() / "sbnet"


def pin_dir(name: str) -> Path:
    """Where a switch's maps are pinned; `name` is the agent's host name (letters, digits,
    . _ - only: it is a directory)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name in (".", ".."):
        raise ValueError(f"pin name {name!r}: 1-64 letters, digits, _ . - only")
    return root() / name


def open_pinned(d: Path) -> dict[str, int] | None:
    """fds of every pinned map in `d`, None when nothing (or not everything) is pinned there
    (a partial set, left by a crash while pinning, is removed)."""
    fds: dict[str, int] = {}
    for name in PINNED:
        fd = pinned(str(d / name))
        if fd is None:
            break
        fds[name] = fd
    if len(fds) == len(PINNED):
        return fds
    for fd in fds.values():
        os.close(fd)
    _unpin(d)
    return None


def pin_maps(fds: dict[str, int], d: Path) -> None:
    """Pin each map at d/<map name> (bpffs mounted at /sys/fs/bpf)."""
    fs = bpffs()
    if not os.path.ismount(fs) and not _mount(fs):
        raise BpfError(errno.ENOENT, f"{fs} is not a BPF file system: mount -t bpf bpf {fs} "
                                     f"(or name one in ${ENV})")
    d.mkdir(parents=True, exist_ok=True)
    try:
        for name in PINNED:
            pin(fds[name], str(d / name))
    except BaseException:
        _unpin(d)
        raise


def _mount(fs: Path) -> bool:
    """Mount a BPF file system at the default place where a freshly booted host has none
    (as bpftool does before it pins); True when mounted.  A place named in $SBNET_BPFFS is
    the caller's to provide."""
    if os.environ.get(ENV) or not fs.is_dir():
        return False
    res = subprocess.run(["mount", "-t", "bpf", "bpf", str(fs)], capture_output=True)
    return res.returncode == 0 and os.path.ismount(fs)


def _unpin(d: Path) -> None:
    for name in PINNED:
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()
    with contextlib.suppress(OSError):
        d.rmdir()
        d.parent.rmdir()            # sbnet/ itself once no switch is pinned


def remove(name: str, netns: str | None = None) -> list[str]:
    """Take a kept switch away for good: the program off every device its port map names
    (in `netns`), then the pins.  Returns the devices it was taken off."""
    from sbnet.datapath.afpacket import in_netns
    from sbnet.datapath.ebpf import layout as L
    from sbnet.datapath.ebpf.libbpf import Map
    d = pin_dir(name)
    fds = open_pinned(d)
    if fds is None:
        return []
    gone = []
    try:
        ports = Map(fds["ports"], 4, L.PORT.size, "ports")
        with in_netns(netns):
            for key in ports.keys():
                ifindex = L.U32.unpack(key)[0]
                with contextlib.suppress(OSError):
                    dev = socket.if_indextoname(ifindex)
                    tc_detach_ingress(ifindex)
                    gone.append(dev)
    finally:
        for fd in fds.values():
            os.close(fd)
        _unpin(d)
    return gone
