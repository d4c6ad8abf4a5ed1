"""The host agent's slow path on a real host: a veth whose one end is a switch port (SERVICE_OFPORT) and whose other the agent answers on (native DHCP; its kernel holds the metadata address)."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import select
import socket
import subprocess
import threading
from typing import Callable

from sbnet.compiler.dhcp import AGENT_MAC, METADATA_IP
from sbnet.datapath.afpacket import CLONE_NEWNET, ETH_P_ALL, PACKET_OUTGOING

SWITCH_END, AGENT_END = "sbnet-svc", "sbnet-svc-a"
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(netns: str | None):
    """The calling thread in a network namespace given by name (/run/netns) or by path
    (/proc/PID/ns/net: the switch's daemon's); what it opens or starts stays there."""
    if netns is None:
        yield
        return
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    back, target = os.open("/proc/thread-self/ns/net", os.O_RDONLY), os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {path}")
        try:
            yield
        finally:
            _libc.setns(back, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(back)


def _ip(netns: str | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    with in_netns(netns):            # a child started by this thread is in its namespace
        res = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {res.stderr.strip()}")
    return res


def _mac(value: int) -> str:
    return value.to_bytes(6, "big").hex(":")


def _sysctl(netns: str | None, key: str, value: str) -> None:
    # /proc/sys/net is the namespace of the process that mounted /proc: ask a child in it.
    with in_netns(netns):
        subprocess.run(["sysctl", "-qw", f"{key.replace('/', '.')}={value}"],
                       capture_output=True, timeout=30)


class ServicePort:
    """The veth pair (made if missing; kept across agent restarts, as a tunnel port is) and
    a thread that hands each frame the switch sends to `handler` and sends back its answer.
    The handler is read on every frame, so the agent can swap it when the model changes."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.handler: Callable[[bytes], bytes | None] = lambda frame: None
        self.answered = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def create(self) -> str:
        """Make the pair if it is not there; the switch's end's name (attach it at
        SERVICE_OFPORT).  Neither end has addresses, ARP or IPv6: the kernel says nothing.
        A pair already set up (a restarted agent's) is left as it is: each change to a
        link takes the kernel's network-wide lock, and the switch is using this one."""
        if self._ready():
            return SWITCH_END
        if _ip(self.netns, "link", "show", SWITCH_END, check=False).returncode != 0:
            _ip(self.netns, "link", "add", SWITCH_END, "type", "veth", "peer", "name", AGENT_END)
        _ip(self.netns, "link", "set", AGENT_END, "address", _mac(AGENT_MAC))
        for dev in (SWITCH_END, AGENT_END):
            _sysctl(self.netns, f"net/ipv6/conf/{dev}/disable_ipv6", "1")
            _ip(self.netns, "link", "set", dev, "arp", "off", "up")
        # The metadata service's address, for the proxy's TCP (see compiler.dhcp); the
        # kernel's checksums complete before the frames reach the switch.
        _ip(self.netns, "addr", "replace", f"{ipaddress.IPv4Address(METADATA_IP)}/16", "dev",
            AGENT_END)
        with in_netns(self.netns):
            subprocess.run(["ethtool", "-K", AGENT_END, "tx", "off"], capture_output=True,
                           timeout=30)
        return SWITCH_END

    def _ready(self) -> bool:
        """Both ends up without ARP, the agent's with its MAC and the metadata address
        only, its transmit checksums off: what create() leaves."""
        import json
        res = _ip(self.netns, "-j", "addr", "show", check=False)
        links = {x["ifname"]: x for x in json.loads(res.stdout or "[]")} \
            if res.returncode == 0 else {}
        want = {SWITCH_END: [], AGENT_END: [str(ipaddress.IPv4Address(METADATA_IP))]}
        for name, addrs in want.items():
            link = links.get(name)
            if link is None or not {"UP", "NOARP"} <= set(link.get("flags", ())) or \
                    [a["local"] for a in link.get("addr_info", ())] != addrs:
                return False
        if links[AGENT_END].get("address") != _mac(AGENT_MAC):
            return False
        with in_netns(self.netns):
            k = subprocess.run(["ethtool", "-k", AGENT_END], capture_output=True, text=True,
                               timeout=30)
        return "tx-checksumming: off" in k.stdout

    def start(self) -> "ServicePort":
        with in_netns(self.netns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind((AGENT_END, ETH_P_ALL))
        self._thread = threading.Thread(target=self._run, name="sbnet-slowpath", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.2)
            if not ready:
                continue
            try:
                frame, addr = sock.recvfrom(65536)
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:          # our own answers
                continue
            try:
                out = self.handler(frame)
                if out is not None:
                    sock.send(out)
                    self.answered += 1
            except Exception:                       # one bad frame never stops the others
                self.errors += 1

    def close(self, remove: bool = False) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        if remove:
            _ip(self.netns, "link", "del", SWITCH_END, check=False)
