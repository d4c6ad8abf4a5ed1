"""The bridge (ofproto side): ports, OpenFlow tables, groups, meters, bundles, dumps and trace, over a dpif."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sbnet.datapath import odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.dpif.interface import OffloadTier
from sbnet.datapath.dpif.megaflow import Megaflow
from sbnet.datapath.dpif.userspace import UserspaceDpif
from sbnet.datapath.meters import MeterStats, MeterTable
from sbnet.datapath.ofproto.classifier import Rule, Table
from sbnet.datapath.ofproto.replay import Path
from sbnet.datapath.ofproto.revalidator import Revalidator
from sbnet.datapath.ofproto.xlate import Xlate, XlateResult
from sbnet.datapath.parse import ERROR_REASONS, parse
from sbnet.datapath.ports import MemoryPort, Port
from sbnet.datapath.tunnel import TunnelPort
from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.flows.flow import Flow
from sbnet.flows.ofctl import FlowFile, parse_file

# Actions this switch does not execute yet, and why: refused when installed.
_UNSUPPORTED = {
    A.Normal: "NORMAL (MAC learning) is not implemented: sbnet compiles explicit L2 flows",
}
_UNSUPPORTED_FIELDS = {
    "ct_": "conntrack fields are set only by ct(commit,exec(...))",
}


class UnsupportedFlow(ValueError):
    """A flow this switch cannot execute: refused loudly at install, never ignored."""


@dataclass
class FlowStats:
    flow: Flow
    n_packets: int
    n_bytes: int
    duration: float
    idle_age: float


class Bridge:
    """One bridge of the reference switch: the OpenFlow side (ports, tables, groups,
    meters, bundles, trace) over a dpif that holds datapath flows and runs packets.

    A miss in the dpif comes up through `upcall`: translated over the tables (xlate),
    installed as a datapath flow, recorded on the rules that made it.  After any table
    change the revalidator keeps the datapath flows true to the tables."""

    def __init__(self, name: str = "br0", clock=time.monotonic, conntrack=None,
                 offload: OffloadTier | None = None, compiled: bool = True) -> None:
        """offload: a tier in front of the software tiers (an sbnet.offload.NicTier, made
        for a NIC profile by sbnet.offload.nic_tier) that may carry datapath flows.
        compiled: the dpif's compiled fast path (False: the numpy reference code only)."""
        self.name = name
        self.clock = clock
        self.tables: dict[int, Table] = {}
        self.groups: dict[int, A.GroupMod] = {}
        self.meters = MeterTable()
        self.dpif = UserspaceDpif(self.upcall, self.meters, conntrack, offload, compiled,
                                  same_path=self.upcall_same)
        self._last: tuple[XlateResult, list[int]] | None = None   # the last upcall's translation
        self._port_set: set[int] = set()
        self.xlate = Xlate(self.tables, self.groups, self._port_set, self.dpif.tunnels)
        self.xlate.meters = self.meters.dp_ids
        self.revalidator = Revalidator(self.xlate, self.dpif)
        # Every bridge has its LOCAL port, as in OVS; flood and all include it.
        self.add_port(F.OFPP_LOCAL, name)

    # -- what the dpif holds, read through the bridge -------------------------------
    @property
    def ports(self) -> dict[int, Port]:
        return self.dpif.ports

    @property
    def tunnels(self) -> dict[int, TunnelPort]:
        return self.dpif.tunnels

    @property
    def underlay(self):
        return self.dpif.underlay

    @underlay.setter
    def underlay(self, underlay) -> None:
        self.dpif.underlay = underlay

    @property
    def tlv_map(self) -> dict:
        return self.dpif.tlv_map

    @property
    def conntrack(self):
        return self.dpif.conntrack

    @property
    def cache(self):
        return self.dpif.cache

    @property
    def tier(self):
        return self.dpif.tier

    @property
    def tier_packets(self) -> dict[str, int]:
        return self.dpif.tier_packets

    @property
    def mf_nic_packets(self) -> dict[int, int]:
        return self.dpif.mf_nic_packets

    @property
    def upcalls(self) -> int:
        return self.dpif.upcalls

    @property
    def upcall_seconds(self) -> float:
        return self.dpif.upcall_seconds

    @property
    def tier_seconds(self) -> float:
        return self.dpif.tier_seconds

    @property
    def parse_errors(self) -> np.ndarray:
        return self.dpif.parse_errors

    @property
    def drops(self) -> dict[str, int]:
        return self.dpif.drops

    @property
    def packet_ins(self) -> list[bytes]:
        return self.dpif.packet_ins

    @property
    def packets_in(self) -> int:
        return self.dpif.packets_in

    @property
    def on_evict(self) -> list:
        return self.revalidator.on_evict

    # -- the upcall ---------------------------------------------------------------
    def upcall(self, key: list[int], now: float) -> Megaflow:
        """A dpif miss: translate, install the datapath flow, note it on its rules."""
        res = self.xlate.run(key, record=True)
        self._last = (res, key)
        return self.revalidator.put(key, res, now)

    def upcall_same(self, keys: np.ndarray, owner: np.ndarray, index: dict,
                    now: float) -> tuple[np.ndarray, np.ndarray]:
        """After an upcall: the datapath flows of the batch's misses without one that take
        the path it translated (sbnet.datapath.ofproto.replay), installed; returns the
        columns of `keys` given one and the flow id of each (dpif.interface.SamePath)."""
        last, self._last = self._last, None
        path = Path.of(*last) if last is not None else None
        cols = path.followers(keys, owner, index) if path is not None else None
        if cols is None or not cols.size:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        firsts, group = path.groups(keys, cols)
        mfs = self.revalidator.put_many(keys[:, firsts], path.result, now)
        return cols, np.array([mf.mf_id for mf in mfs], dtype=np.int64)[group]

    # -- ports ------------------------------------------------------------
    def add_port(self, ofport: int, name: str | None = None, port: Port | None = None) -> Port:
        if ofport in self.ports:
            raise ValueError(f"port {ofport} already exists on {self.name}")
        if not 1 <= ofport <= 0xFFFFFF00 and ofport != F.OFPP_LOCAL:
            raise ValueError(f"port number {ofport} is out of range")
        port = port or MemoryPort(ofport, name or f"p{ofport}")
        self.dpif.add_port(ofport, port)
        self._port_set.add(ofport)
        self.revalidator.revalidate_all()
        return port

    def add_tunnel_port(self, tunnel: TunnelPort, name: str | None = None) -> Port:
        """A vxlan/gre/geneve port; its packets leave and arrive through the underlay."""
        name = name or f"{tunnel.kind}{tunnel.ofport}"
        if tunnel.ofport in self.ports:
            raise ValueError(f"port {tunnel.ofport} already exists on {self.name}")
        # Known as a tunnel before add_port revalidates, so one pass sees it.
        self.dpif.add_tunnel(tunnel)
        return self.add_port(tunnel.ofport, name, port=Port(tunnel.ofport, name))

    def add_tlv_map(self, text: str) -> None:
        """Map Geneve options to fields, in ovs-ofctl add-tlv-map syntax:
        "{class=0xffff,type=0x80,len=4}->tun_metadata0,{...}->tun_metadata1"."""
        import re
        found = re.findall(r"\{([^}]*)\}\s*->\s*(\w+)", text)
        if not found:
            raise ValueError(f"no {{class=..,type=..,len=..}}->tun_metadataN in {text!r}")
        for body, name in found:
            kv = dict(p.strip().split("=", 1) for p in body.split(",") if p.strip())
            try:
                cls, typ, ln = int(kv["class"], 0), int(kv["type"], 0), int(kv["len"], 0)
            except (KeyError, ValueError):
                raise ValueError(f"TLV map entry {{{body}}} needs class, type and len") from None
            fld = F.lookup(name) if F.exists(name) else None
            if fld is None or not fld.name.startswith("tun_metadata"):
                raise ValueError(f"{name} is not a tun_metadata field")
            if not (0 < ln <= 8 and ln % 4 == 0) or not (0 <= cls <= 0xFFFF and 0 <= typ <= 0xFF):
                raise ValueError(f"TLV {{{body}}}: len must be 4 or 8 (bytes), class 16 and type 8 bits")
            self.dpif.tlv_map[(cls, typ)] = (fld.name, ln)
            self.xlate.tlv_fields.add(fld.name)
        self.revalidator.revalidate_all()

    # The Datapath protocol's port methods (the names every backend shares).
    def plug(self, name: str, ofport: int) -> int:
        self.add_port(ofport, name)
        return ofport

    def unplug(self, name: str) -> None:
        num = self.port_names().get(name)
        if num is not None:
            self.remove_port(num)

    def add_tunnel(self, name: str, kind: str, ofport: int, **options) -> int:
        self.add_tunnel_port(TunnelPort(ofport, kind, key="flow", **options), name)
        return ofport

    def port_names(self) -> dict[str, int]:
        return {p.name: num for num, p in self.ports.items() if num != F.OFPP_LOCAL}

    def dump_conntrack(self, zone: int | None = None) -> list[str]:
        return self.conntrack.dump(zone)

    def remove_port(self, ofport: int) -> None:
        self.dpif.remove_port(ofport)
        self._port_set.discard(ofport)
        self.revalidator.revalidate_all()

    # -- flows --------------------------------------------------------------
    def check_flow(self, flow: Flow) -> None:
        """Raise UnsupportedFlow if this switch cannot execute `flow`'s actions."""
        _check_actions(flow.actions, flow)     # formatted only if refused
        conj = [a for a in flow.actions if isinstance(a, A.Conjunction)]
        if conj and len(conj) != len(flow.actions):
            raise UnsupportedFlow(f"{flow}: conjunction() cannot be mixed with other actions")

    def bundle(self, add: list[Flow] = (), delete: list[Flow] = (), groups: list[A.GroupMod] = (),
               now: float | None = None, meters: list[A.MeterMod] = ()) -> None:
        """Apply meters (added, or modified if changed), deletions, then additions atomically:
        all are checked before any is applied.  Flows may name meters of the same bundle."""
        for m in meters:
            self.meters.check(m, adding=None)
        pending = {m.meter_id for m in meters}
        for f in add:
            self.check_flow(f)
            self.meters.check_refs(f.actions, f, pending)
        for g in groups:
            for b in g.buckets:
                _check_actions(b.actions, f"group {g.group_id}")
                self.meters.check_refs(b.actions, f"group {g.group_id}", pending)
        now = self.clock() if now is None else now
        for m in meters:
            self.meters.set(m, now)
        changed: list[Rule] = []
        for f in delete:
            tbl = self.tables.get(f.table)
            rule = tbl.by_key.get((f.priority, f.match)) if tbl else None
            if rule is not None:
                tbl.remove(rule)
                changed.append(rule)
        for f in add:
            tbl = self.tables.setdefault(f.table, Table(f.table))
            rule = Rule.of(f, now)
            old = tbl.insert(rule)
            changed.append(rule)
            if old is not None:
                changed.append(old)
        for g in groups:
            self.groups[g.group_id] = g
        if groups:
            self.revalidator.revalidate_all(now)
        elif changed:
            self.revalidator.revalidate(changed, now)

    def add_flows(self, flows: list[Flow]) -> None:
        self.bundle(add=flows)

    def delete_flows(self, flows: list[Flow]) -> None:
        self.bundle(delete=flows)

    def delete_group(self, group_id: int) -> None:
        self.groups.pop(group_id, None)
        self.revalidator.revalidate_all()

    def clear(self) -> None:
        """Remove every flow and group."""
        for t in self.tables.values():
            for r in t.rules():
                t.remove(r)
        self.groups.clear()
        self.revalidator.revalidate_all()

    def load(self, text: str) -> FlowFile:
        """Load a flow file (flows, group_id= and meter= lines) in one bundle."""
        ff = parse_file(text)
        self.bundle(add=ff.flows, groups=ff.groups, meters=ff.meters)
        return ff

    # -- meters -------------------------------------------------------------
    def add_meter(self, mod: A.MeterMod, now: float | None = None) -> None:
        """ovs-ofctl add-meter; meters.MeterError (OFPMMFC_METER_EXISTS, ...) where OVS refuses."""
        self.meters.add(mod, self.clock() if now is None else now)

    def modify_meter(self, mod: A.MeterMod, now: float | None = None) -> None:
        """ovs-ofctl mod-meter: a full bucket and fresh counters, as dpif-netdev replaces the meter."""
        self.meters.modify(mod, self.clock() if now is None else now)

    def delete_meter(self, meter_id: int, now: float | None = None) -> list[Flow]:
        """Delete a meter and, as OVS does, every flow naming it; returns those flows."""
        if meter_id not in self.meters:
            return []
        users = [r.flow for r in self.rules() if A.Meter(meter_id) in r.flow.actions]
        self.bundle(delete=users, now=now)
        gone = odp.Meter(self.meters.dp_id(meter_id))
        self.meters.delete(meter_id)
        for mf in self.dpif.flow_dump():
            if gone in mf.actions:      # reached through a group bucket
                self.revalidator.evict(mf)
        return users

    def dump_meters(self) -> list[A.MeterMod]:
        return self.meters.mods()

    def meter_stats(self, now: float | None = None) -> list[MeterStats]:
        """Per meter, as ovs-ofctl meter-stats: flows naming it, packets in, band drops."""
        now = self.clock() if now is None else now
        uses: dict[int, int] = {}
        for r in self.rules():
            for a in r.flow.actions:
                if isinstance(a, A.Meter):
                    uses[a.meter_id] = uses.get(a.meter_id, 0) + 1
        return [self.meters.stats(m.meter_id, uses.get(m.meter_id, 0), now)
                for m in self.meters.mods()]

    def rules(self) -> list[Rule]:
        return [r for t in sorted(self.tables) for r in self.tables[t].rules()]

    def rule_stats(self, rule: Rule) -> tuple[int, int, float]:
        """(packets, bytes, last used) of a rule, whichever tier carried its packets."""
        self.fold_nic()
        return self.revalidator.rule_counts(rule)

    def dump_flows(self, now: float | None = None) -> list[FlowStats]:
        now = self.clock() if now is None else now
        self.fold_nic()
        out = []
        for r in self.rules():
            pk, by, used = self.revalidator.rule_counts(r)
            out.append(FlowStats(r.flow, pk, by, now - r.created, now - used))
        out.sort(key=lambda s: (s.flow.table, -s.flow.priority))
        return out

    def dump_megaflows(self, now: float | None = None) -> list[str]:
        """One line per megaflow, in the spirit of `ovs-appctl dpctl/dump-flows -m`."""
        from sbnet.datapath.format import megaflow_text
        now = self.clock() if now is None else now
        c = self.cache
        lines = []
        for mf in self.dpif.flow_dump():
            key = [0] * F.N_SLOTS
            wc = [0] * F.N_SLOTS
            for s, m, v in zip(mf.slots, mf.mask, mf.value):
                key[s], wc[s] = v, m
            used = now - float(c.used[mf.mf_id])
            why = ""
            if self.tier is not None and mf.tier != "nic":
                placed = self.tier.placement(mf.mf_id)
                why = f" ({placed.reason})" if placed is not None and placed.reason else ""
            lines.append(f"{megaflow_text(key, wc)}, packets:{int(c.packets[mf.mf_id])}, "
                         f"bytes:{int(c.bytes[mf.mf_id])}, used:{used:.3f}s, tier:{mf.tier}{why}, "
                         f"actions:{odp.format_actions(mf.actions)}")
        return lines


    # -- packets -------------------------------------------------------------
    def process(self, batch: Batch, now: float | None = None) -> list[tuple[int, Batch]]:
        """Run a batch through the datapath; returns (port, packets) emitted, also delivered to ports."""
        return self.dpif.process(batch, self.clock() if now is None else now)

    def offload_tick(self, now: float) -> None:
        """Let the offload tier install queued flows (at its insertion rate) and fold its counts."""
        self.dpif.offload_tick(now)

    def fold_nic(self) -> None:
        """Bring the offload tier's counters into the datapath flows, so statistics are exact."""
        self.dpif.fold_nic()

    def drop_counts(self) -> dict[str, int]:
        """Dropped packets by reason: parse errors, translation outcomes, datapath drops."""
        out = {f"malformed: {ERROR_REASONS[i]}": int(c)
               for i, c in enumerate(self.parse_errors) if c and i}
        c = self.cache
        for mf in self.dpif.flow_dump():
            if mf.reason not in ("forwarded", "recirculated"):
                out[mf.reason] = out.get(mf.reason, 0) + int(c.packets[mf.mf_id])
        for drops in (self.revalidator.drops, self.dpif.drops):
            for reason, n in drops.items():
                out[reason] = out.get(reason, 0) + n
        return {k: v for k, v in out.items() if v}

    # -- revalidation ---------------------------------------------------------
    def flush_megaflows(self) -> None:
        self.revalidator.flush()

    def maintain(self, now: float | None = None) -> None:
        """Expire idle datapath flows and rules past their idle or hard timeouts (clock-driven)."""
        now = self.clock() if now is None else now
        self.revalidator.expire(now)      # a flow only the offload tier used is not idle
        expired = []
        for r in self.rules():
            f = r.flow
            if f.hard_timeout and now - r.created >= f.hard_timeout:
                expired.append(f)
            elif f.idle_timeout and now - self.revalidator.rule_counts(r)[2] >= f.idle_timeout:
                expired.append(f)
        if expired:
            self.bundle(delete=expired, now=now)
        self.conntrack.expire(now)
        if self.tier is not None:
            self.tier.expire()
        self.dpif.resort()

    # -- tracing -------------------------------------------------------------
    def trace(self, in_port: int, packet: bytes) -> TraceResult:
        from sbnet.datapath.format import megaflow_text
        b = Batch.from_packets([packet], in_port)
        parsed = parse(b)
        err = int(parsed.error[0])
        key = parsed.keys[:, 0]
        if err:
            return TraceResult(key, None, f"malformed packet: {ERROR_REASONS[err]}", "", ())
        res = self.xlate.run(key, trace=True)
        text = megaflow_text(key, res.wc)
        return TraceResult(key, res, "\n".join(res.trace), text, res.actions)


@dataclass
class TraceResult:
    key: np.ndarray
    result: XlateResult | None
    text: str
    megaflow: str
    actions: tuple

    def datapath_actions(self) -> str:
        return odp.format_actions(self.actions)


def _check_actions(actions: tuple, where: object) -> None:
    for a in actions:
        why = _UNSUPPORTED.get(type(a))
        if isinstance(a, A.Encap) and a.header != "ethernet":
            why = f"encap({a.header}) is not executed by this switch yet"
        if why is None and isinstance(a, (A.SetField, A.Load, A.Move)):
            target = a.field if isinstance(a, A.SetField) else a.dst.field
            for prefix, reason in _UNSUPPORTED_FIELDS.items():
                if target.startswith(prefix):
                    why = reason
        if why:
            raise UnsupportedFlow(f"{where}: action {a} refused: {why}")

