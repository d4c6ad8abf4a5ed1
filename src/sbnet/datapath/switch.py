"""The reference switch: batches through parse -> megaflow cache -> slow path, with counters and revalidation."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sbnet.datapath import nsh, odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.classifier import Rule, Table
from sbnet.datapath.execute import execute
from sbnet.datapath.megaflow import Megaflow, MegaflowCache
from sbnet.datapath.meters import MeterStats, MeterTable
from sbnet.datapath.parse import ERROR_REASONS, Parsed, parse
from sbnet.datapath.ports import MemoryPort, Port
from sbnet.datapath.tunnel import (DECAP_DROPS, ENCAP_DROPS, TNL_F_OAM, TunnelPort, decap,
                                   encap, geneve_option)
from sbnet.datapath.underlay import Underlay
from sbnet.datapath.xlate import Xlate, XlateResult
from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.flows.flow import Flow
from sbnet.flows.ofctl import FlowFile, parse_file

MAX_IDLE = 10.0           # seconds an unused megaflow lives, as OVS's default max-idle
MAX_RECIRC = 6            # passes through conntrack per packet before it is dropped
_CT_POINT = 0xFFFFFF01    # pseudo-port: execute() hands back the packet as it reaches ct()
_TCP_FLAGS = F.SLOT_INDEX["tcp_flags"]
# Conntrack state travels with the packet (OVS's pkt->md), not in its bytes: kept across re-parses.
_CT_ROWS = slice(F.SLOT_INDEX["ct_state"], F.SLOT_INDEX["ct_tp_dst"] + 1)

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


class Switch:
    """One software switch instance (one bridge): ports, tables, groups, the megaflow cache."""

    def __init__(self, name: str = "br0", clock=time.monotonic, conntrack=None,
                 offload=None) -> None:
        """offload: a NIC profile (sbnet.offload.Profile or a built-in name such as
        "smartnic") whose NIC tier takes megaflows in front of the software cache."""
        from sbnet.datapath.conntrack import Conntrack
        self.name = name
        self.clock = clock
        self.conntrack = conntrack if conntrack is not None else Conntrack()
        self.tunnels: dict = {}                 # ofport -> TunnelPort
        self.underlay = Underlay()
        # Geneve option (class, type) -> (tun_metadataN, length in bytes), as OVS's TLV map.
        self.tlv_map: dict[tuple[int, int], tuple[str, int]] = {}
        self.tier = None
        self.tier_packets = {"nic": 0, "software": 0}
        self.mf_nic_packets: dict[int, int] = {}     # NIC-tier packets per live megaflow
        if offload is not None:
            from sbnet.offload import NicTier, builtin_profiles
            profile = builtin_profiles()[offload] if isinstance(offload, str) else offload
            self.tier = NicTier(profile)
            from sbnet.offload.conntrack import CtOffload
            self.ct_offload = CtOffload(self.tier, self.conntrack)
        self.ports: dict[int, Port] = {}
        self.tables: dict[int, Table] = {}
        self.groups: dict[int, A.GroupMod] = {}
        self.cache = MegaflowCache()
        self._port_set: set[int] = set()
        self.xlate = Xlate(self.tables, self.groups, self._port_set, self.tunnels)
        self.meters = MeterTable()
        self.xlate.meters = self.meters.dp_ids
        self._actions: list[tuple] = []
        self._action_ids: dict[tuple, int] = {}
        self._special: list[bool] = []      # per action list: has ct() or tunnel output
        self.parse_errors = np.zeros(len(ERROR_REASONS), dtype=np.int64)
        self.drops: dict[str, int] = {}
        self.upcalls = 0
        self.upcall_seconds = 0.0          # process CPU time in the slow path (cost model)
        self.tier_seconds = 0.0            # ... in the NIC tier's model (stands for the NIC)
        self.packet_ins: list[bytes] = []
        self.packets_in = 0
        # Called as cb(megaflow, packets, bytes) just before a megaflow leaves the cache,
        # so observers (flow records) see its final counts.
        self.on_evict: list = []
        # Every bridge has its LOCAL port, as in OVS; flood and all include it.
        self.add_port(F.OFPP_LOCAL, name)

    # -- ports ------------------------------------------------------------
    def add_port(self, ofport: int, name: str | None = None, port: Port | None = None) -> Port:
        if ofport in self.ports:
            raise ValueError(f"port {ofport} already exists on {self.name}")
        if not 1 <= ofport <= 0xFFFFFF00 and ofport != F.OFPP_LOCAL:
            raise ValueError(f"port number {ofport} is out of range")
        port = port or MemoryPort(ofport, name or f"p{ofport}")
        self.ports[ofport] = port
        self._port_set.add(ofport)
        self._revalidate_all()
        return port

    def add_tunnel_port(self, tunnel: TunnelPort, name: str | None = None) -> Port:
        """A vxlan/gre/geneve port; its packets leave and arrive through the underlay."""
        name = name or f"{tunnel.kind}{tunnel.ofport}"
        if tunnel.ofport in self.ports:
            raise ValueError(f"port {tunnel.ofport} already exists on {self.name}")
        # Known as a tunnel before add_port revalidates, so one pass sees it.
        self.tunnels[tunnel.ofport] = tunnel
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
            self.tlv_map[(cls, typ)] = (fld.name, ln)
            self.xlate.tlv_fields.add(fld.name)
        self._revalidate_all()

    def remove_port(self, ofport: int) -> None:
        self.tunnels.pop(ofport, None)
        self.ports.pop(ofport).close()
        self._port_set.discard(ofport)
        self._revalidate_all()

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
            self._revalidate_all()
        elif changed:
            self._revalidate(changed)

    def add_flows(self, flows: list[Flow]) -> None:
        self.bundle(add=flows)

    def delete_flows(self, flows: list[Flow]) -> None:
        self.bundle(delete=flows)

    def delete_group(self, group_id: int) -> None:
        self.groups.pop(group_id, None)
        self._revalidate_all()

    def clear(self) -> None:
        """Remove every flow and group."""
        for t in self.tables.values():
            for r in t.rules():
                t.remove(r)
        self.groups.clear()
        self._revalidate_all()

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
        for mf in list(self.cache.flows.values()):
            if gone in mf.actions:      # reached through a group bucket
                self._evict(mf)
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
        return self._rule_counts(rule)

    def _rule_counts(self, rule: Rule) -> tuple[int, int, float]:
        ids = np.fromiter(rule.megaflows, dtype=np.int64, count=len(rule.megaflows))
        used = rule.used
        if ids.size:
            used = max(used, float(self.cache.used[ids].max()))
        return (rule.n_packets + int(self.cache.packets[ids].sum()),
                rule.n_bytes + int(self.cache.bytes[ids].sum()), used)

    def dump_flows(self, now: float | None = None) -> list[FlowStats]:
        now = self.clock() if now is None else now
        self.fold_nic()
        out = []
        for r in self.rules():
            pk, by, used = self._rule_counts(r)
            out.append(FlowStats(r.flow, pk, by, now - r.created, now - used))
        out.sort(key=lambda s: (s.flow.table, -s.flow.priority))
        return out

    def actions_by_id(self, action_id: int) -> tuple:
        """The datapath actions a megaflow's action id (cache.action_of) stands for."""
        return self._actions[action_id]

    def dump_megaflows(self, now: float | None = None) -> list[str]:
        """One line per megaflow, in the spirit of `ovs-appctl dpctl/dump-flows -m`."""
        from sbnet.datapath.format import megaflow_text
        now = self.clock() if now is None else now
        self.fold_nic()
        c = self.cache
        lines = []
        for mf in c.flows.values():
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
        """Run a batch through the switch; returns (port, packets) emitted, also delivered to ports."""
        now = self.clock() if now is None else now
        if self.tunnels and len(batch):
            inner: list[tuple[int, Batch]] = []
            batch = self._decap(batch, now, inner)
            out = inner + self._local(batch, now)
        else:
            out = self._local(batch, now)
        if self.tier is not None:
            # After decapsulated packets too: their megaflows wait for the inserter as well.
            self.offload_tick(now)
        return out

    def _local(self, batch: Batch, now: float) -> list[tuple[int, Batch]]:
        n = len(batch)
        if n == 0:
            return []
        parsed = parse(batch)
        out: list[tuple[int, Batch]] = []
        self._pass(batch, parsed, self._well_formed(parsed), now, 0, out)
        return out

    def _decap(self, batch: Batch, now: float, out: list) -> Batch:
        """Strip tunnel headers from underlay packets addressed to our tunnel ports and
        switch the inner frames from the tunnel port; returns the packets left over."""
        n = len(batch)
        res = decap(batch, np.arange(n), list(self.tunnels.values()), self.underlay)
        for reason in DECAP_DROPS:
            if res.counters.get(reason):
                self._drop(f"tunnel decap: {reason}", res.counters[reason])
        if len(res.batch):
            inner = res.batch
            inner.in_port = res.in_port.astype(np.uint32)
            for p, c in zip(*np.unique(inner.in_port, return_counts=True)):
                port = self.ports.get(int(p))
                if port is not None:
                    port.rx_packets += int(c)
            parsed = parse(inner)
            keys = parsed.keys
            for name in ("tun_id", "tun_src", "tun_dst", "tun_ipv6_src_hi", "tun_ipv6_src_lo",
                         "tun_ipv6_dst_hi", "tun_ipv6_dst_lo"):
                keys[F.SLOT_INDEX[name]] = res.tun[name]
            # Only the OAM flag is visible to OpenFlow, as in OVS.
            keys[F.SLOT_INDEX["tun_flags"]] = res.tun["tun_flags"] & TNL_F_OAM
            if self.tlv_map:
                self._geneve_metadata(keys, res.tun["geneve_opts"])
            self._pass(inner, parsed, self._well_formed(parsed), now, 0, out)
        if res.other.size == n:
            return batch
        return batch.take(res.other)

    def _well_formed(self, parsed) -> np.ndarray:
        """Rows that parsed; the others are counted per reason (and so dropped)."""
        bad = parsed.error != 0
        if not bad.any():
            return np.arange(len(parsed))
        self.parse_errors += np.bincount(parsed.error[bad], minlength=len(ERROR_REASONS))
        return np.flatnonzero(~bad)

    def _geneve_metadata(self, keys: np.ndarray, options: list) -> None:
        """Mapped Geneve options into the tun_metadata fields (only packets with options)."""
        for i, raw in enumerate(options):
            off = 0
            while off + 4 <= len(raw):
                cls = int.from_bytes(raw[off:off + 2], "big")
                typ, words = raw[off + 2], raw[off + 3] & 0x1F
                data = raw[off + 4:off + 4 + 4 * words]
                mapped = self.tlv_map.get((cls, typ))
                if mapped is not None and len(data) == mapped[1]:
                    keys[F.SLOT_INDEX[mapped[0]], i] = int.from_bytes(data, "big")
                off += 4 + 4 * words

    def _drop(self, reason: str, n: int) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + int(n)

    def _pass(self, batch: Batch, parsed, rows: np.ndarray, now: float, depth: int,
              out: list) -> None:
        """One datapath pass: megaflow lookup, upcalls for misses, counters, actions."""
        if rows.size == 0:
            return
        keys = parsed.keys
        mf = self.cache.lookup(keys, rows)
        missing = mf < 0
        if missing.any():
            mf[missing] = self._upcall(keys, rows[missing], now)
        self._count(mf, batch.length[rows], now, keys[_TCP_FLAGS, rows], keys, rows, depth)
        self._emit(batch, rows, mf, parsed, now, depth, out)

    def _count(self, mf: np.ndarray, lengths: np.ndarray, now: float,
               tcp_flags: np.ndarray | None = None, keys: np.ndarray | None = None,
               rows: np.ndarray | None = None, depth: int = 0) -> None:
        c = self.cache
        if tcp_flags is not None:
            # TCP flags seen per megaflow, as OVS's datapath keeps them (flow records read them).
            np.bitwise_or.at(c.tcp_flags, mf, tcp_flags.astype(np.uint16))
        if self.tier is not None:
            # The NIC tier counts what it carried; the host counts the rest.  Packets of ct
            # megaflows are the NIC's only when their connection is in its conntrack table.
            t0 = time.process_time()
            held = None if keys is None else \
                self.ct_offload.held(self, mf, keys, rows, tcp_flags, now)
            on = self.tier.record(mf, lengths, now, held)
            self.tier_seconds += time.process_time() - t0
            n_on = int(np.count_nonzero(on))
            if depth == 0:      # a packet counts once, where its first datapath pass ran
                self.tier_packets["nic"] += n_on
                self.tier_packets["software"] += len(mf) - n_on
            if n_on:
                mf, lengths = mf[~on], lengths[~on]
        elif depth == 0:
            self.tier_packets["software"] += len(mf)
        # ufunc.at costs per packet, not per cached megaflow as bincount would.
        np.add.at(c.packets, mf, 1)
        np.add.at(c.bytes, mf, lengths.astype(np.int64))   # same dtype: the fast path
        c.used[mf] = now

    def _emit(self, batch: Batch, rows: np.ndarray, mf: np.ndarray, parsed, now: float,
              depth: int, out: list) -> None:
        act = self.cache.action_of[mf]
        order = np.argsort(act, kind="stable")
        sorted_act = act[order]
        cuts = np.flatnonzero(np.diff(sorted_act)) + 1
        for grp in np.split(order, cuts):
            aid = int(act[grp[0]])
            acts = self._actions[aid]
            if not acts:
                continue
            if self._special[aid]:
                self._run_special(batch, rows[grp], parsed, acts, now, depth, out)
            else:
                self._deliver(execute(batch, rows[grp], parsed.l3, parsed.l4, acts), out)

    def _deliver(self, emitted: list, out: list) -> None:
        for port, pb in emitted:
            if port == F.OFPP_CONTROLLER:
                self.packets_in += len(pb)
                self.packet_ins.extend(pb.packets()[:1024 - len(self.packet_ins)])
                continue
            dest = self.ports.get(port)
            if dest is not None:
                dest.deliver(pb)
            out.append((port, pb))

    def _run_special(self, batch: Batch, rows: np.ndarray, parsed, acts: tuple, now: float,
                     depth: int, out: list) -> None:
        """Actions the executor does not do itself (ct, tunnel output, NSH and Ethernet
        push/pop, NSH sets, recirculation, meters): edits and outputs up to each, then that step on
        the batch as it is at that point, then the rest of the actions."""
        i = 0
        while len(rows):
            j = next((k for k in range(i, len(acts)) if _is_special(acts[k])), len(acts))
            if j == len(acts):
                self._deliver(execute(batch, rows, parsed.l3, parsed.l4, acts[i:]), out)
                return
            a = acts[j]
            if isinstance(a, odp.Meter) and j == i:    # nothing to run first: drop rows in place
                rows = rows[self._meter(a, batch.length[rows], now)]
                i = j + 1
                continue
            emitted = execute(batch, rows, parsed.l3, parsed.l4, acts[i:j] + (odp.Output(_CT_POINT),))
            self._deliver(emitted[:-1], out)
            at = emitted[-1][1]
            every = np.arange(len(at))
            i = j + 1
            if isinstance(a, odp.Meter):    # after outputs or edits: meter the packets as edited
                keep = self._meter(a, at.length, now)
                at = at.take(keep)
                p2 = parse(at)
                p2.keys[_CT_ROWS] = parsed.keys[_CT_ROWS][:, rows[keep]]
                batch, rows, parsed = at, np.arange(len(at)), p2
                continue
            if isinstance(a, odp.TunnelPush):
                self._tunnel_out(at, a, out)
                batch, rows, parsed = at, every, parse(at)
                continue
            if isinstance(a, odp.Ct):
                at = at.take(every)     # conntrack rewrites NAT in place: own the batch
                p2 = parse(at)
                p2.keys[_CT_ROWS] = parsed.keys[_CT_ROWS][:, rows]
                self.conntrack.execute(at, p2, every, a.zone, commit=a.commit, nat=a.nat,
                                       set_mark=a.mark, set_label=a.label, now=now, force=a.force)
                if i < len(acts) and isinstance(acts[i], odp.Recirc):
                    self._recirculate(at, p2, acts[i].recirc_id, now, depth, out)
                    i += 1
                batch, rows, parsed = at, every, p2
                continue
            if isinstance(a, odp.Recirc):
                p2 = parse(at)
                self._recirculate(at, p2, a.recirc_id, now, depth, out)
                batch, rows, parsed = at, every, p2
                continue
            batch, ethernet = self._nsh_step(at, every, a)
            rows = np.arange(len(batch))
            parsed = parse(batch) if ethernet else _no_offsets(len(batch))

    def _meter(self, a: odp.Meter, lengths: np.ndarray, now: float) -> np.ndarray:
        """The mask of packets meter `a` lets through; the others count as meter drops."""
        keep = self.meters.run(a.meter_id, lengths, now)
        dropped = len(keep) - int(np.count_nonzero(keep))
        if dropped:
            self._drop("meter band drop", dropped)
        return keep

    def _nsh_step(self, at: Batch, rows: np.ndarray, a) -> tuple[Batch, bool]:
        """One NSH/Ethernet header operation; returns the batch and whether it is Ethernet."""
        match a:
            case odp.PushNsh(flags, ttl, mdtype, np_, spi, si, ctx):
                return nsh.push_nsh(at, rows, mdtype, np_, spi, si, flags, ttl, ctx), False
            case odp.PushEth(src, dst):
                return nsh.push_eth(at, rows, src, dst), True
            case odp.PopEth():
                return nsh.pop_eth(at, rows), False
            case odp.PopNsh():
                popped = nsh.pop_nsh(at, rows)
                bad = len(rows) - len(popped.batch)
                if bad:
                    self._drop("malformed NSH header", bad)
                return popped.batch, True
            case odp.SetFields("nsh", fields):
                own = at.take(rows)
                nsh.set_nsh(own, rows, **dict(fields))
                return own, True
        raise TypeError(f"not an NSH step: {a!r}")

    def _recirculate(self, batch: Batch, parsed, rid: int, now: float, depth: int,
                     out: list) -> None:
        """Send a copy of the packets through the datapath again under `rid`."""
        if depth + 1 >= MAX_RECIRC:
            self._drop("recirculation too deep", len(batch))
            return
        keys = parsed.keys.copy()
        keys[F.SLOT_INDEX["recirc_id"]] = rid
        again = Parsed(keys, parsed.l2_5, parsed.l3, parsed.l4, parsed.error)
        self._pass(batch, again, np.flatnonzero(parsed.error == 0), now, depth + 1, out)

    def _upcall(self, keys: np.ndarray, miss: np.ndarray, now: float) -> np.ndarray:
        """Slow path for cache misses: one translation per new megaflow, not per packet."""
        t0 = time.process_time()
        out = np.empty(miss.size, dtype=np.int64)
        # Megaflows made in this call, by mask: later misses of the same flow in
        # this batch find them here without another translation.
        fresh: dict[tuple, dict[tuple, int]] = {}
        for i, key in enumerate(keys[:, miss].T.tolist()):
            for slots_mask, table in fresh.items():
                slots, mask = slots_mask
                mf_id = table.get(tuple(key[s] & m for s, m in zip(slots, mask)))
                if mf_id is not None:
                    out[i] = mf_id
                    break
            else:
                mf = self._install(self.xlate.run(key), key, now)
                fresh.setdefault((mf.slots, mf.mask), {})[mf.value] = mf.mf_id
                out[i] = mf.mf_id
        self.upcall_seconds += time.process_time() - t0
        return out

    def _install(self, res: XlateResult, key, now: float) -> Megaflow:
        self.upcalls += 1
        # Userspace actions become outputs to the controller pseudo-port so
        # execute() emits the packet as it is at that point of the action list.
        acts = tuple(odp.Output(F.OFPP_CONTROLLER) if isinstance(a, odp.Userspace) else a
                     for a in res.actions)
        aid = self._action_ids.get(acts)
        if aid is None:
            aid = self._action_ids[acts] = len(self._actions)
            self._actions.append(acts)
            self._special.append(any(_is_special(a) for a in acts))
        mf = self.cache.add(res.wc, key, res.actions, aid, list(dict.fromkeys(res.rules)),
                            res.reason, res.modified, now)
        for r in mf.rules:
            r.megaflows.add(mf.mf_id)
        if self.tier is not None:
            self.tier.offer(mf, now)
        return mf

    def _tunnel_out(self, batch: Batch, push: odp.TunnelPush, out: list) -> None:
        tp = self.tunnels[push.ofport]
        tun = dict(_tun_arrays(push.tun))
        meta = [(n, v) for n, v in push.tun if n.startswith("tun_metadata")]
        if meta:
            by_field = {f: (c, t, ln) for (c, t), (f, ln) in self.tlv_map.items()}
            tun["geneve_opts"] = b"".join(
                geneve_option(by_field[n][0], by_field[n][1], v.to_bytes(by_field[n][2], "big"))
                for n, v in meta)
        res = encap(batch, np.arange(len(batch)), tp, tun, self.underlay)
        for reason in ENCAP_DROPS:
            if res.counters.get(reason):
                self._drop(f"tunnel encap: {reason}", res.counters[reason])
        if not len(res.batch):
            return
        self.ports[push.ofport].deliver(batch.take(res.rows))
        ports = np.unique(res.out_port)
        for p in ports:
            sel = res.batch if ports.size == 1 else res.batch.take(np.flatnonzero(res.out_port == p))
            self._deliver([(int(p), sel)], out)

    def drop_counts(self) -> dict[str, int]:
        """Dropped packets by reason: parse errors and translation outcomes."""
        self.fold_nic()
        out = {f"malformed: {ERROR_REASONS[i]}": int(c)
               for i, c in enumerate(self.parse_errors) if c and i}
        for mf in self.cache.flows.values():
            if mf.reason not in ("forwarded", "recirculated"):
                out[mf.reason] = out.get(mf.reason, 0) + int(self.cache.packets[mf.mf_id])
        for reason, c in self.drops.items():
            out[reason] = out.get(reason, 0) + c
        return {k: v for k, v in out.items() if v}

    # -- revalidation ---------------------------------------------------------
    def _revalidate(self, changed: list[Rule]) -> None:
        """Re-translate megaflows a changed rule could affect; delete those whose result moved."""
        for mf in list(self.cache.flows.values()):
            if any(_may_overlap(mf, r) for r in changed):
                self._recheck(mf)

    def _revalidate_all(self) -> None:
        for mf in list(self.cache.flows.values()):
            self._recheck(mf)

    def _recheck(self, mf: Megaflow) -> None:
        res = self.xlate.run(mf.key)
        rules = list(dict.fromkeys(res.rules))
        same_mask = all(res.wc[s] == m for s, m in zip(mf.slots, mf.mask)) and \
            sum(1 for m in res.wc if m) == len(mf.slots)
        if same_mask and res.actions == mf.actions and rules == mf.rules:
            return
        self._evict(mf)

    def _evict(self, mf: Megaflow) -> None:
        c = self.cache
        if self.tier is not None:
            self._fold_one(mf.mf_id, self.tier.remove(mf.mf_id))
        pk, by, used = int(c.packets[mf.mf_id]), int(c.bytes[mf.mf_id]), float(c.used[mf.mf_id])
        for r in mf.rules:
            r.megaflows.discard(mf.mf_id)
            r.n_packets += pk
            r.n_bytes += by
            r.used = max(r.used, used)
        self.mf_nic_packets.pop(mf.mf_id, None)
        for cb in self.on_evict:
            cb(mf, pk, by)
        if mf.reason not in ("forwarded", "recirculated") and pk:
            self.drops[mf.reason] = self.drops.get(mf.reason, 0) + pk
        c.remove(mf.mf_id)

    def offload_tick(self, now: float) -> None:
        """Let the NIC tier install queued megaflows (at its insertion rate) and fold its counts."""
        if self.tier is None:
            return
        t0 = time.process_time()
        ch = self.tier.advance(now)
        for i in ch.installed:
            if i in self.cache.flows:
                self.cache.flows[i].tier = "nic"
        for i in ch.evicted:
            if i in self.cache.flows:
                self.cache.flows[i].tier = "software"
        self.fold_nic()
        self.tier_seconds += time.process_time() - t0

    def fold_nic(self) -> None:
        """Bring the NIC tier's counters into the megaflows, so statistics are exact."""
        if self.tier is None:
            return
        for mf_id, c in self.tier.take_counters().items():
            if mf_id in self.cache.flows:
                self._fold_one(mf_id, c)

    def _fold_one(self, mf_id: int, c) -> None:
        # Kept apart too, so reports can split a megaflow's packets by tier.
        self.mf_nic_packets[mf_id] = self.mf_nic_packets.get(mf_id, 0) + c.packets
        self.cache.packets[mf_id] += c.packets
        self.cache.bytes[mf_id] += c.bytes
        self.cache.used[mf_id] = max(self.cache.used[mf_id], c.used)

    def flush_megaflows(self) -> None:
        for mf in list(self.cache.flows.values()):
            self._evict(mf)

    def maintain(self, now: float | None = None) -> None:
        """Expire idle megaflows and rules past their idle or hard timeouts (clock-driven)."""
        now = self.clock() if now is None else now
        self.fold_nic()      # a megaflow only the NIC used is not idle
        for mf in list(self.cache.flows.values()):
            if now - self.cache.used[mf.mf_id] > MAX_IDLE:
                self._evict(mf)
        expired = []
        for r in self.rules():
            f = r.flow
            if f.hard_timeout and now - r.created >= f.hard_timeout:
                expired.append(f)
            elif f.idle_timeout and now - self._rule_counts(r)[2] >= f.idle_timeout:
                expired.append(f)
        if expired:
            self.bundle(delete=expired, now=now)
        self.conntrack.expire(now)
        if self.tier is not None:
            self.ct_offload.expire()
        self.cache.resort()

    # -- tracing -------------------------------------------------------------
    def trace(self, in_port: int, packet: bytes) -> "TraceResult":
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


_SPECIAL = (odp.Ct, odp.TunnelPush, odp.PushNsh, odp.PushEth, odp.PopEth, odp.PopNsh, odp.Recirc,
            odp.Meter)


def _is_special(a) -> bool:
    """Datapath actions the switch runs itself rather than through execute()."""
    return isinstance(a, _SPECIAL) or (isinstance(a, odp.SetFields) and a.header == "nsh")


def _no_offsets(n: int) -> Parsed:
    """Offsets for packets without Ethernet (NSH between push_nsh and push_eth): none."""
    none = np.full(n, -1, dtype=np.int32)
    return Parsed(np.zeros((F.N_SLOTS, n), dtype=np.uint64), none, none, none,
                  np.zeros(n, dtype=np.uint8))


def _tun_arrays(tun: tuple):
    """TunnelPush fields as encap() takes them (128-bit addresses split hi/lo)."""
    for name, v in tun:
        if name.startswith("tun_metadata"):
            continue
        if name in ("tun_ipv6_dst", "tun_ipv6_src"):
            yield f"{name}_hi", v >> 64
            yield f"{name}_lo", v & 0xFFFFFFFFFFFFFFFF
        else:
            yield name, v


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


def _may_overlap(mf: Megaflow, rule: Rule) -> bool:
    """Could `rule` match a packet of `mf` at some table lookup? Conservative on rewritten slots."""
    fixed = dict(zip(mf.slots, mf.mask))
    for s, v, m in rule.slots:
        if mf.modified >> s & 1:
            continue
        both = m & fixed.get(s, 0)
        if (mf.key[s] ^ v) & both:
            return False
    return True
