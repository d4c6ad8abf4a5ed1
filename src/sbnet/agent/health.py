"""Health checks of load-balancer members (TCP, HTTP, PING, UDP-CONNECT), run by the agent of
the host holding them from a namespace on the member's network, verdicts reported to the API."""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from sbnet.model.lbaas import expected_codes

log = logging.getLogger("sbnet.agent.health")
CLONE_NEWNET = 0x40000000


def _enter(netns: str | None) -> None:
    """Move the calling thread (only it) into a network namespace."""
    if not netns:
        return
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


# --- the probes: True when the member answers as the monitor type requires ---

def probe_tcp(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def probe_http(address: str, port: int, timeout: float, method: str = "GET",
               path: str = "/", codes: str = "200") -> bool:
    host = f"[{address}]" if ":" in address else address
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"{method} {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = s.recv(64).split(b"\r\n", 1)[0].split()
        return len(head) >= 2 and head[1].isdigit() and int(head[1]) in expected_codes(codes)
    except OSError:
        return False


def probe_udp(address: str, port: int, timeout: float) -> bool:
    """UDP-CONNECT as Octavia: a datagram is sent; only an ICMP port unreachable (a refused
    receive on the connected socket) fails the member."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            s.send(b"\n")
            s.recv(1)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True
    return True


def probe_ping(address: str, timeout: float) -> bool:
    cmd = ["ping", "-6" if ":" in address else "-4", "-c", "1", "-W",
           str(max(1, int(timeout))), address]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 5).returncode == 0


def probe(monitor: dict, address: str, port: int) -> bool:
    kind, timeout = monitor["type"], float(monitor["timeout"]) or 1.0
    if kind == "TCP":
        return probe_tcp(address, port, timeout)
    if kind == "HTTP":
        return probe_http(address, port, timeout, monitor.get("http_method") or "GET",
                          monitor.get("url_path") or "/", monitor.get("expected_codes") or "200")
    if kind == "UDP-CONNECT":
        return probe_udp(address, port, timeout)
    if kind == "PING":
        return probe_ping(address, timeout)
    raise ValueError(f"health monitor type {kind} is not checked by sbnet")


# --- the state machine: Octavia's rise (max_retries) and fall (max_retries_down) ---

@dataclass
class MemberState:
    verdict: str | None = None     # ONLINE, ERROR, or None before the first check
    ups: int = 0
    downs: int = 0
    due: float = 0.0

    def observe(self, ok: bool, rise: int, fall: int) -> str | None:
        """Count one probe; the new verdict when it changes.  The first probe decides."""
        self.ups, self.downs = (self.ups + 1, 0) if ok else (0, self.downs + 1)
        new = self.verdict
        if ok and (self.verdict is None or self.ups >= rise):
            new = "ONLINE"
        elif not ok and (self.verdict is None or self.downs >= fall):
            new = "ERROR"
        if new == self.verdict:
            return None
        self.verdict = new
        return new


@dataclass
class HealthChecker:
    """Checks the members bound on `host` (each member's address is a port there) from the
    namespace `context(network_id)` gives (a port on the member's network), every monitor's
    delay; `report({member_id: verdict})` sends changed verdicts to the API."""

    host: str
    context: Callable[[str], str | None]
    report: Callable[[dict], None]
    states: dict[str, MemberState] = field(default_factory=dict)
    _pools: dict[str, ThreadPoolExecutor] = field(default_factory=dict)

    def targets(self, snap: dict) -> list[tuple[dict, dict, str]]:
        """(member, monitor, network id) of every monitored, enabled member bound here."""
        monitors = {m["pool_id"]: m for m in snap.get("lb_healthmonitor", ())
                    if m.get("admin_state_up", True)}
        where = {}
        for p in snap.get("port", ()):
            if p.get("binding:host_id") == self.host:
                for f in p.get("fixed_ips") or ():
                    where[f["ip_address"]] = p["network_id"]
        out = []
        for m in snap.get("lb_member", ()):
            hm = monitors.get(m.get("pool_id"))
            addr = m.get("monitor_address") or m["address"]
            if hm is not None and m.get("admin_state_up", True) and addr in where:
                out.append((m, hm, where[addr]))
        return out

    def step(self, snap: dict, now: float) -> dict[str, str]:
        """Probe what is due at `now` (in parallel, one thread per namespace), report the
        verdicts that changed, and return them."""
        due = []
        live = set()
        for member, hm, net in self.targets(snap):
            live.add(member["id"])
            st = self.states.setdefault(member["id"], MemberState())
            if now >= st.due:
                st.due = now + max(float(hm["delay"]), 0.5)
                due.append((member, hm, net, st))
        for gone in set(self.states) - live:
            del self.states[gone]
        futures = []
        for member, hm, net, st in due:
            ns = self.context(net)
            pool = self._pools.get(ns or "")
            if pool is None:
                pool = self._pools[ns or ""] = ThreadPoolExecutor(
                    8, initializer=_enter, initargs=(ns,), thread_name_prefix=f"hm-{ns}")
            addr = member.get("monitor_address") or member["address"]
            port = member.get("monitor_port") or member["protocol_port"]
            futures.append((member, hm, st, pool.submit(probe, hm, addr, port)))
        changed = {}
        for member, hm, st, fut in futures:
            try:
                ok = fut.result()
            except Exception as exc:  # noqa: BLE001 - a probe that cannot run fails the member
                log.warning("health probe of member %s: %s", member["id"], exc)
                ok = False
            verdict = st.observe(ok, int(hm["max_retries"]), int(hm.get("max_retries_down") or 3))
            if verdict is not None and member.get("health") != verdict:
                changed[member["id"]] = verdict
        if changed:
            self.report(changed)
        return changed

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


class HealthLoop:
    """Runs a HealthChecker every `tick` seconds on snapshots from `snapshot()` in a thread."""

    def __init__(self, checker: HealthChecker, snapshot: Callable[[], dict],
                 clock: Callable[[], float], tick: float = 0.2) -> None:
        self.checker, self.snapshot, self.clock, self.tick = checker, snapshot, clock, tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sbnet-health")

    def start(self) -> "HealthLoop":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.checker.step(self.snapshot(), self.clock())
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("health checks")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.checker.close()
