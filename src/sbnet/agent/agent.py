"""The host agent: follows the model's change feed, keeps desired against installed flows and
applies only the difference, plugs what Nova plugged, reports ports up and down."""

from __future__ import annotations

import logging

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from sbnet.agent.announce import FipAnnouncer
from sbnet.agent.dhcp import Responder
from sbnet.agent.migration import MigrationDuty
from sbnet.cni.ports import vif_name
from sbnet.compiler.compile import Compiler, Diff, HostPipeline, diff
from sbnet.compiler.topology import (Chassis, Topology, is_vif, migration_targets,
                                     take_announcements)

if TYPE_CHECKING:
    from sbnet.agent.health import HealthLoop

ADMIN = {"X-Project-Id": "sbnet-agent", "X-Roles": "admin"}
HEARTBEAT = 10.0        # seconds between registrations, which the API takes as heartbeats


def datapath_config(datapath) -> dict:
    """What the host registers about its datapath, so that ports bound here are told how
    to plug (binding:vif_type and vif_details): OVS with its bridge and datapath type, or
    the reference switch (tap devices)."""
    from sbnet.ovs.backend import OvsDatapath
    if isinstance(datapath, OvsDatapath):
        return {"datapath": "ovs", "bridge": datapath.bridge,
                "datapath_type": datapath.datapath_type}
    # The kernel tier is named without importing it (it loads BPF programs on import).
    return {"datapath": "ebpf" if type(datapath).__name__ == "EbpfDatapath" else "reference"}


log = logging.getLogger("sbnet.agent")

class Source(Protocol):
    """Where the model comes from: the API of another process, or the store in-process."""

    def changes(self, since: int, wait: float) -> tuple[list[dict], int]: ...
    def register(self, host: str, body: dict) -> None: ...
    def port_status(self, port_id: str, status: str) -> None: ...
    def port_stats(self, host: str, ports: dict) -> None: ...
    def handover(self, port_id: str, body: dict) -> None: ...
    def binding_ready(self, port_id: str, host: str, ready: dict) -> None: ...
    def binding_announced(self, port_id: str, host: str, kind: str) -> None: ...


class ApiError(RuntimeError):
    """The API answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def unreachable(exc: Exception) -> bool:
    """A transport failure (refused, reset, timed out), not an answer: worth a retry."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpcore")


class ApiSource:
    """The Neutron API's change feed and the agents' endpoints, over HTTP (httpx.Client or
    the in-process TestClient, both have .get/.put).  `token`: sent as X-Auth-Token (an
    API started with --require-token), instead of the noauth admin headers."""

    def __init__(self, client, headers: dict | None = None, token: str | None = None) -> None:
        self.client = client
        self.headers = headers or ({"X-Auth-Token": token} if token else ADMIN)

    def _ok(self, r) -> dict:
        if r.status_code >= 400:
            raise ApiError(r.status_code, f"API {r.request.method} {r.request.url}: "
                           f"{r.status_code} {r.text}")
        return r.json() if r.content else {}

    def changes(self, since: int, wait: float) -> tuple[list[dict], int]:
        out = self._ok(self.client.get("/v2.0/sbnet/changes", headers=self.headers,
                                       params={"since": since, "wait": wait},
                                       timeout=wait + 30))
        return out["changes"], out["revision"]

    def register(self, host: str, body: dict) -> None:
        self._ok(self.client.put(f"/v2.0/sbnet/hosts/{host}", json={"host": body},
                                 headers=self.headers))

    def port_status(self, port_id: str, status: str) -> None:
        self._ok(self.client.put(f"/v2.0/sbnet/ports/{port_id}/status",
                                 json={"status": status}, headers=self.headers))

    def port_stats(self, host: str, ports: dict) -> None:
        self._ok(self.client.put(f"/v2.0/sbnet/hosts/{host}/stats", json={"ports": ports},
                                 headers=self.headers))

    def handover(self, port_id: str, body: dict) -> None:
        """A migrating port's connections, one part, for its destination (sbnet.api.bindings)."""
        self._ok(self.client.put(f"/v2.0/sbnet/ports/{port_id}/handover",
                                 json={"handover": body}, headers=self.headers))

    def binding_ready(self, port_id: str, host: str, ready: dict) -> None:
        self._ok(self.client.put(f"/v2.0/sbnet/ports/{port_id}/bindings/{host}/ready",
                                 json={"ready": ready}, headers=self.headers))

    def binding_announced(self, port_id: str, host: str, kind: str) -> None:
        """The VM announced itself on this host (kind: rarp, garp or na)."""
        self._ok(self.client.put(f"/v2.0/sbnet/ports/{port_id}/bindings/{host}/announced",
                                 json={"announced": kind}, headers=self.headers))

    def lb_health(self, verdicts: dict) -> None:
        """Load-balancer members' health verdicts ({member_id: ONLINE or ERROR})."""
        self._ok(self.client.put("/v2.0/sbnet/lbaas/health", json={"members": verdicts},
                                 headers=self.headers))


class Mirror:
    """The model as the change feed tells it, at a revision."""

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, dict]] = defaultdict(dict)
        self.revision = 0

    def apply(self, rows: Iterable[dict]) -> None:
        for row in rows:
            if row["op"] == "delete":
                self.by_type[row["resource"]].pop(row["id"], None)
            else:
                self.by_type[row["resource"]][row["id"]] = row["body"]
            self.revision = max(self.revision, row["revision"])

    def snapshot(self) -> dict:
        out: dict = {"revision": self.revision}
        for typ, items in list(self.by_type.items()):
            out[typ] = list(items.copy().values())
        return out


@dataclass
class StepReport:
    """One sync: the revision, the flows changed, the ports reported up or down."""

    revision: int
    added: int = 0
    modified: int = 0
    deleted: int = 0
    up: list[str] = field(default_factory=list)
    down: list[str] = field(default_factory=list)
    seconds: float = 0.0
    faults: dict = field(default_factory=dict)   # (type, id) -> why it was left out
    started: float = 0.0                         # monotonic time the sync began
    applied: float = 0.0                         # seconds the datapath took the diff in

    @property
    def changed(self) -> int:
        return self.added + self.modified + self.deleted


def port_names(datapath) -> dict[str, int]:
    """Interface name -> ofport, whichever backend (the Datapath protocol)."""
    return datapath.port_names()


def apply_diff(datapath, d: Diff) -> None:
    """One atomic bundle per diff (modifications replace flows of the same identity); an
    empty diff sends the datapath nothing (a busy switch answers late, holding up the
    agent's step, as at a migration's activation when every host syncs at once)."""
    if not d:
        return
    for mid in d.delete_meters:
        datapath.delete_meter(mid)
    kw = {"meters": d.meters} if d.meters else {}
    datapath.bundle(add=[*d.add, *d.modify], delete=d.delete, groups=d.groups, **kw)
    for gid in d.delete_groups:
        datapath.delete_group(gid)


class HostAgent:
    """One host's agent.  `vifs` finds the VIFs plugged on the datapath (default: interfaces
    named as Nova names taps); `now` and all I/O are at the edges (source, datapath)."""

    def __init__(self, host: str, datapath, source: Source, tunnel_ip: str,
                 physnets: dict[str, int] | None = None, profile: str = "software",
                 vifs: Callable[[], dict[str, int]] | None = None,
                 service_ofport: int | None = None, slow_path=None) -> None:
        """service_ofport / slow_path: the switch port to the agent's slow path and the
        ServicePort that answers there (native DHCP); without them the host has no DHCP."""
        self.host = host
        self.datapath = datapath
        self.source = source
        self.tunnel_ip = tunnel_ip
        self.physnets = dict(physnets or {})
        self.profile = profile
        self.vifs = vifs or self._tap_vifs
        self.service_ofport = service_ofport
        self.slow_path = slow_path
        self.mirror = Mirror()
        self.compiler = Compiler(host)
        self.migration = MigrationDuty(host, datapath, source, self.physnets)
        self.announcer = FipAnnouncer(host, getattr(slow_path, "netns", None))
        self.pipeline: HostPipeline | None = None
        self.reported: dict[str, str] = {}
        self.history: list[StepReport] = []
        self.errors: list[str] = []               # what run() survived, for the record
        self._plugged: dict[str, int] = {}
        self._registered = float("-inf")          # monotonic time of the last registration
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tap_vifs(self) -> dict[str, int]:
        names = port_names(self.datapath)
        mine = self.mirror.by_type.get("port", {})
        return {pid: names[vif_name(pid)] for pid in mine if vif_name(pid) in names}

    def start(self) -> None:
        """Register the host (tunnel endpoint, physical networks, NIC profile, datapath);
        repeated every HEARTBEAT seconds by step(), it is the agent's heartbeat."""
        self.source.register(self.host, {"tunnel_ip": self.tunnel_ip,
                                         "physnets": self.physnets, "profile": self.profile,
                                         **datapath_config(self.datapath)})
        self._registered = time.monotonic()

    def port_at(self, ofport: int) -> tuple[dict, str] | None:
        """The local port whose VIF is at `ofport` and its first IPv4 address (the metadata
        proxy's question; asked from its own thread)."""
        ports = self.mirror.by_type.get("port", {})
        for pid, num in list(self._plugged.items()):
            if num == ofport and pid in ports:
                ips = [f["ip_address"] for f in ports[pid].get("fixed_ips") or ()
                       if ":" not in f["ip_address"]]
                return (ports[pid], ips[0]) if ips else None
        return None

    def start_when_up(self, say: Callable[[str], None], first: float = 0.5,
                      most: float = 30.0) -> bool:
        """Register, retrying with back-off while the API cannot be reached or answers 5xx
        (an agent started before its API), one line each time.  Refused credentials are
        final: ApiError.  False when stopped before the API came up."""
        delay = first
        while not self._stop.is_set():
            try:
                self.start()
                return True
            except ApiError as exc:
                if exc.status < 500:
                    raise
                why = f"answers {exc.status}"
            except Exception as exc:
                if not unreachable(exc):
                    raise
                why = f"unreachable ({exc or type(exc).__name__})"
            say(f"{self.host}: API {why}; retrying in {delay:g} s")
            self._stop.wait(delay)
            delay = min(delay * 2, most)
        return False

    def step(self, wait: float = 0.0) -> StepReport | None:
        """Take what changed (waiting up to `wait` s), recompile, apply the difference."""
        if time.monotonic() - self._registered >= HEARTBEAT:
            self.start()
        rows, revision = self.source.changes(self.mirror.revision, wait)
        self.mirror.apply(rows)
        plugged = self.vifs()
        if self.pipeline is not None and not rows and plugged == self._plugged:
            return None
        start = time.monotonic()
        self._plugged = plugged
        snapshot = take_announcements(self.mirror.snapshot())
        # Ports bound here, and those migrating here (their VIF is plugged before the VM
        # moves, so the pipeline is ready when it arrives).
        ports = {p["id"]: p for p in snapshot.get("port", ())}
        arriving = {pid for pid, hosts in migration_targets(
            snapshot.get("port_binding", ()), ports).items() if self.host in hosts}
        bound = {pid for pid, p in ports.items() if is_vif(p) and (
            p.get("binding:host_id") == self.host or pid in arriving)}
        # A port arriving by an inactive binding is wired here once its connections have
        # come (the handover to this host is complete: the step that wires it imports
        # them, then reports ready): until then what other hosts clone to it here is
        # dropped where it enters, not sent up as connections this host does not know
        # (a bulk stream through the slow path held up everything else on it).
        waiting = {b["port_id"] for b in snapshot.get("port_binding", ())
                   if b.get("host") == self.host and not b.get("former")} - {
            h["port_id"] for h in snapshot.get("ct_handover", ())
            if h.get("target") == self.host and h.get("complete")}
        me = Chassis(self.host, self.tunnel_ip,
                     {p: o for p, o in plugged.items() if p in bound and p not in waiting},
                     self.physnets, self.profile, self.service_ofport)
        topo = Topology(snapshot, [me])
        self.migration.hold(topo, plugged)
        known = self.compiler.faults
        new = self.compiler.compile(topo)
        if self.slow_path is not None:
            self.slow_path.handler = Responder(topo, self._announced).answer
        if self.pipeline is None:
            # First sync (a fresh start or a restart): compare with what the datapath
            # holds, so a restart changes nothing that is already right (no flush).
            d = diff(HostPipeline(self.host, installed_flows(self.datapath)), new)
        else:
            d = self.compiler.last_diff
        t_apply = time.monotonic()
        apply_diff(self.datapath, d)
        t_apply = time.monotonic() - t_apply
        self.pipeline = new
        self.migration.step(snapshot, topo, dict(me.ofports))
        if self.physnets:
            try:
                self.announcer.step(topo, self.physnets, port_names(self.datapath))
            except OSError as exc:          # the outside learns it from the VM's next frame
                log.warning("%s: floating IP announcement failed: %s", self.host, exc)
        report = StepReport(self.mirror.revision, len(d.add), len(d.modify), len(d.delete),
                            faults=dict(self.compiler.faults), started=start, applied=t_apply)
        for (typ, ident), why in report.faults.items():
            if known.get((typ, ident)) != why:           # each fault once, when it appears
                log.warning("%s: %s %s left out: %s", self.host, typ, ident, why)
        # A trunk's sub-ports are up when their parent's VIF is (they have none of their own).
        up = set(me.ofports) | {sid for sid, (t, _) in topo.subport_of.items()
                                if t["port_id"] in me.ofports}
        self._report_status(snapshot, up, report, topo)
        report.seconds = time.monotonic() - start
        self.history.append(report)
        return report

    def _announced(self, port_id: str, kind: str) -> None:
        """A migrating VM announced itself on its VIF here (the slow path's thread): the
        binding's activation strategy makes this host the port's (sbnet.api.bindings)."""
        try:
            self.source.binding_announced(port_id, self.host, kind)
            log.info("%s: port %s announced itself here (%s)", self.host, port_id, kind)
        except Exception as exc:          # gone, activated meanwhile, not its strategy
            self.errors.append(f"announcement of {port_id}: {exc}")

    def _report_status(self, snapshot: dict, plugged: set[str], report: StepReport,
                       topo: Topology) -> None:
        for p in snapshot.get("port", ()):
            if topo.active_host(p) != self.host or not is_vif(p):
                continue
            # A port the compiler had to leave out carries no traffic: say so on the port.
            want = "ERROR" if ("port", p["id"]) in report.faults else \
                "ACTIVE" if p["id"] in plugged else "DOWN"
            if p.get("status") != want and self.reported.get(p["id"]) != want:
                self.source.port_status(p["id"], want)
                self.reported[p["id"]] = want
                (report.up if want == "ACTIVE" else report.down).append(p["id"])

    def port_counters(self) -> dict[str, dict[str, int]]:
        """Per local port, from the flows' counters, as OVS counts an interface: rx what the
        switch received from the VIF (its classify flows), tx what it delivered to it (its
        deliver flows), whichever tier did the work."""
        if self.pipeline is None:
            return {}
        origins = self.pipeline.origins
        out: dict[str, dict[str, int]] = {}
        names = {"classify": ("rx_packets", "rx_bytes"), "deliver": ("tx_packets", "tx_bytes")}
        for s in self.datapath.dump_flows():
            stage, kind, ident = (origins.get(s.flow.cookie) or "- - -").split(" ", 2)
            if kind != "port" or stage not in names:
                continue
            pk, by = names[stage]
            c = out.setdefault(ident, {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0,
                                       "tx_bytes": 0})
            c[pk] += s.n_packets
            c[by] += s.n_bytes
        return out

    def report_counters(self) -> int:
        """Send the ports' counters to the API (GET /v2.0/sbnet/ports/ID/stats)."""
        counters = self.port_counters()
        if counters:
            self.source.port_stats(self.host, counters)
        return len(counters)

    # --- running in the background --------------------------------------------------------

    def run(self, wait: float = 1.0, on_error: Callable[[Exception], None] | None = None,
            stats_every: float = 10.0) -> None:
        self.start()
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                self.step(wait)
                if time.monotonic() - last >= stats_every:
                    last = time.monotonic()
                    self.report_counters()
            except Exception as exc:      # keep following: the next revision may be fine
                self.errors.append(repr(exc))
                if on_error is None:
                    raise
                on_error(exc)
                self._stop.wait(1.0)

    def start_health(self, context: Callable[[str], str | None]) -> "HealthLoop":
        """Health-check the load-balancer members bound here, from the namespace
        `context(network_id)` names (a port on the member's network), reporting verdicts
        to the API; stop the returned loop to end it."""
        from sbnet.agent.health import HealthChecker, HealthLoop
        checker = HealthChecker(self.host, context, self.source.lb_health)
        return HealthLoop(checker, self.mirror.snapshot, time.monotonic).start()

    def start_thread(self, wait: float = 0.5) -> "HostAgent":
        self._thread = threading.Thread(target=self.run, args=(wait, lambda e: None),
                                        name=f"agent-{self.host}", daemon=True)
        self._thread.start()
        return self

    @property
    def stopping(self) -> threading.Event:
        """Set when the agent is asked to stop: by stop(), or by its command's signal handler
        (the command's own loop waits on it too)."""
        return self._stop

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=35)
        if self.slow_path is not None:
            self.slow_path.close()


def installed_flows(datapath) -> dict:
    """The flows a datapath holds now, by OpenFlow identity."""
    return {s.flow.key: s.flow for s in datapath.dump_flows()}
