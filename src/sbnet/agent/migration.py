"""A host agent's part in a live migration: hand a leaving port's connections over, take an arriving port's in, say when the destination is ready."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from dataclasses import dataclass, field

from sbnet.agent.announce import arrival_frames, arrival_relay, rarp
from sbnet.agent.migrationwarm import first_frames

log = logging.getLogger("sbnet.agent")

PART = 200      # connections per handover request (under the API's body limit)


def port_addresses(topo, port: dict) -> list[str]:
    """Addresses a port's connections may carry: fixed IPs, allowed address pairs (single
    addresses) and the floating IPs NATed to it."""
    out = [f["ip_address"] for f in port.get("fixed_ips") or ()]
    for pair in port.get("allowed_address_pairs") or ():
        ip = str(pair.get("ip_address") or "")
        if ip and ("/" not in ip or ip.endswith(("/32", "/128"))):
            out.append(ip.split("/")[0])
    for fip in topo.floating_ips.values():
        if fip.get("port_id") == port["id"] and fip.get("floating_ip_address"):
            out.append(fip["floating_ip_address"])
    return out


def port_zones(topo, port: dict) -> set[int]:
    """Conntrack zones a port's connections live in: its network's (security groups) and
    those of the routers on that network (floating IP and SNAT)."""
    net = port["network_id"]
    zones = {topo.zone[net]} if net in topo.zone else set()
    return zones | {topo.router_zone[r] for r in topo.routers_on.get(net, ())
                    if r in topo.router_zone}


@dataclass
class Handover:
    """What this host has done for migrations in progress."""

    sent: dict[str, str] = field(default_factory=dict)          # port -> host we exported to
    imported: dict[str, tuple[str, list]] = field(default_factory=dict)   # port -> (serial, tuples)
    ready: dict[str, str] = field(default_factory=dict)         # port -> serial reported ready
    entries: dict[str, list] = field(default_factory=dict)      # port -> last entries imported
    held: dict[str, int] = field(default_factory=dict)          # arriving port -> VIF held
    log: list[tuple[str, str, int]] = field(default_factory=list)   # (port, what, connections)


class MigrationDuty:
    """Run after every sync of a HostAgent: as the source, export a migrating port's
    connections when its inactive binding appears (the pre-copy) and again, removing them
    here, when the binding is activated elsewhere (the final copy); as the destination,
    import each complete handover and report the binding ready once the port's VIF is
    plugged here, its pipeline installed and the latest handover imported.  A datapath
    without export/import (OVS: its userspace conntrack has no import) hands over nothing:
    its connections start again from scratch at the destination."""

    def __init__(self, host: str, datapath, source, physnets: dict[str, int] | None = None
                 ) -> None:
        """physnets: physical network -> its port here (where an arriving port's datapath
        announces it)."""
        self.host = host
        self.physnets = dict(physnets or {})
        self.datapath = datapath
        self.source = source
        self.state = Handover()
        self.moves_conns = all(hasattr(datapath, m) for m in
                               ("export_conns", "import_conns", "forget_conns"))
        self.can_hold = hasattr(datapath, "hold")
        self.hold_checked = False

    def step(self, snapshot: dict, topo, plugged: dict[str, int]) -> None:
        """plugged: the ports wired here, by id, and their VIF's ofport."""
        handovers = {h["port_id"]: h for h in snapshot.get("ct_handover", ())}
        st = self.state
        for pid in list(st.sent):
            port = topo.ports.get(pid)
            target = st.sent[pid]
            if port is None:
                del st.sent[pid]
            elif topo.active_host(port) == target:
                self._export(topo, port, target, final=True)
                del st.sent[pid]
            elif target not in topo.moving_to.get(pid, ()):
                del st.sent[pid]                       # aborted: the source keeps its state
        for pid, targets in topo.moving_to.items():
            port = topo.ports[pid]
            if topo.active_host(port) == self.host and targets and st.sent.get(pid) != targets[0]:
                self._export(topo, port, targets[0], final=False)
                st.sent[pid] = targets[0]
        for pid in list(st.imported):
            port = topo.ports.get(pid)
            if port is None:
                del st.imported[pid]
                st.entries.pop(pid, None)
            elif self.host in topo.moving_to.get(pid, ()):
                continue                                # still arriving
            elif topo.active_host(port) != self.host:
                self._forget(pid)                       # aborted: what came goes
            else:
                # Activated here.  The copies of the peer's segments this host saw while the
                # VM was still at the source moved the imported windows on without the VM's
                # answers: the connections re-learn them from their next segments again.
                entries = st.entries.pop(pid, None)
                if entries and self.moves_conns:
                    n = len(self.datapath.import_conns(entries))
                    st.log.append((pid, "re-armed at activation", n))
                if pid not in handovers:
                    del st.imported[pid]                # done, and the handover is gone
                else:
                    st.imported[pid] = (st.imported[pid][0], [])    # here for good
        for pid, h in handovers.items():
            port = topo.ports.get(pid)
            if port is None or h.get("target") != self.host or not h.get("complete"):
                continue
            arriving = self.host in topo.moving_to.get(pid, ())
            if not arriving and topo.active_host(port) != self.host:
                continue
            if st.imported.get(pid, ("", []))[0] != h["serial"]:
                self._import(pid, h)
            if arriving and pid in plugged and st.ready.get(pid) != h["serial"]:
                self._prewarm(topo, port, plugged[pid], h)
                self._ready(pid, h)
        for pid in list(st.ready):
            if self.host not in topo.moving_to.get(pid, ()):
                del st.ready[pid]

    def hold(self, topo, plugged: dict[str, int]) -> None:
        """Run first in every sync, before anything else reaches the datapath (plugged:
        every VIF here by port id, an arriving port's before it is wired): an arriving
        port's VIF is held while it is arriving (its datapath drops the other hosts' copies
        of its traffic, unread, until the VM sends its first frame here) and released when
        the port is here for good or stays where it was."""
        if not self.can_hold:
            return
        st = self.state
        if not self.hold_checked:
            # A restarted agent: holds its predecessor left on ports no longer arriving go
            # (the switch daemon outlives the agent; a VM that sends nothing stays held).
            self.hold_checked = True
            with contextlib.suppress(AttributeError):   # (a switch process without holds)
                arriving = {plugged[pid] for pid, hosts in topo.moving_to.items()
                            if self.host in hosts and pid in plugged and pid in topo.ports
                            and topo.active_host(topo.ports[pid]) != self.host}
                holds = self.datapath.holds()
                for ofport in {*holds["held"], *holds.get("relays", ())}:
                    if int(ofport) not in arriving:
                        self.datapath.release(int(ofport))
        for pid, ofport in list(st.held.items()):
            port = topo.ports.get(pid)
            if (port is None or self.host not in topo.moving_to.get(pid, ())
                    or topo.active_host(port) == self.host or plugged.get(pid) != ofport):
                self.datapath.release(ofport)
                del st.held[pid]
        for pid, targets in topo.moving_to.items():
            port = topo.ports.get(pid)
            if (port is not None and self.host in targets and pid in plugged
                    and pid not in st.held and topo.active_host(port) != self.host):
                try:
                    self.datapath.hold(plugged[pid], port["mac_address"])
                except AttributeError:  # a switch process whose datapath has no hold
                    self.can_hold = False
                    return
                st.held[pid] = plugged[pid]
                st.log.append((pid, "held", plugged[pid]))
                self._announce_on_arrival(topo, port, plugged[pid])

    def _announce_on_arrival(self, topo, port: dict, ofport: int) -> None:
        """Give the datapath what it does by itself on the held VIF's first frame (the VM
        runs here): send the port's and its floating IPs' announcements, and drop what the
        source relays of its floating IP's traffic from then on (until the hold's release
        at activation).  From this agent's own loop the announcements left tens of ms late
        on a busy host."""
        frames = arrival_frames(topo, port, self.physnets)
        relay = arrival_relay(topo, port) if frames else None
        if frames:
            with contextlib.suppress(AttributeError):   # a datapath that does neither
                self.datapath.announce_on_arrival(ofport, frames, relay)
                self.state.log.append((port["id"], "announce on arrival", len(frames)))

    def _export(self, topo, port: dict, target: str, final: bool) -> None:
        entries: list = []
        if self.moves_conns:
            keep = [ip for p in topo.local_ports(self.host) if p["id"] != port["id"]
                    for ip in port_addresses(topo, p)]
            entries = self.datapath.export_conns(
                sorted(port_zones(topo, port)), sorted(_ints(port_addresses(topo, port))),
                final, sorted(_ints(keep)))
        parts = [entries[i:i + PART] for i in range(0, len(entries), PART)] or [[]]
        try:
            for n, chunk in enumerate(parts):
                self.source.handover(port["id"], {"source": self.host, "target": target,
                                                  "part": n, "parts": len(parts),
                                                  "entries": chunk})
        except Exception as exc:
            # 409: the migration is over (Nova deleted our binding first): nothing to hand.
            if getattr(exc, "status", None) != 409:
                raise
            log.info("%s: port %s: handover to %s refused: %s", self.host, port["id"],
                     target, exc)
            return
        self.state.log.append((port["id"], "final" if final else "pre-copy", len(entries)))
        log.info("%s: port %s: %s of %d connections to %s", self.host, port["id"],
                 "final copy" if final else "pre-copy", len(entries), target)

    def _import(self, pid: str, h: dict) -> None:
        tuples = self.datapath.import_conns(h["entries"]) if self.moves_conns else []
        old = self.state.imported.get(pid, ("", []))[1]
        self.state.imported[pid] = (h["serial"], [*old, *tuples])
        if h["entries"]:
            self.state.entries[pid] = h["entries"]
        self.state.log.append((pid, f"import round {h['round']}", len(tuples)))

    def _forget(self, pid: str) -> None:
        self.state.entries.pop(pid, None)
        _, tuples = self.state.imported.pop(pid)
        if tuples and self.moves_conns:
            n = self.datapath.forget_conns(tuples)
            self.state.log.append((pid, "forget", n))

    def _prewarm(self, topo, port: dict, ofport: int, h: dict) -> None:
        """Translate the VM's first frames here before it runs here (the hypervisor's RARP
        announcing it, then its connections' next segments from its VIF): the switch-over
        then finds their datapath flows in place instead of sending every flow of the VM
        up at once (the RARP's upcall came first, and the VM's next frames waited behind
        it)."""
        warm = getattr(self.datapath, "prewarm", None)
        if warm is None or not h["entries"]:
            return
        frames = first_frames(topo, port, ofport, h["entries"])
        if frames:
            frames.insert(0, (ofport, rarp(port["mac_address"])))
            n = warm(frames, h["entries"])
            self.state.log.append((port["id"], "prewarmed", n))

    def _ready(self, pid: str, h: dict) -> None:
        n = len(self.state.imported.get(pid, ("", []))[1])
        try:
            self.source.binding_ready(pid, self.host, {"conntrack": n, "round": h["round"]})
        except Exception as exc:       # the binding went meanwhile: nothing to be ready for
            if getattr(exc, "status", None) != 404:
                raise
        self.state.ready[pid] = h["serial"]


def _ints(ips: list[str]) -> set[int]:
    return {int(ipaddress.ip_address(ip)) for ip in ips}
