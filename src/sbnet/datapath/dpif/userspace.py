"""The userspace dpif: the batch loop (extract -> tiers -> per-flow batches -> actions) over datapath flows."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from sbnet.datapath import nsh, odp
from sbnet.datapath.batch import Batch, same_value
from sbnet.datapath.dpif.interface import DpifStats, FlowCounts, OffloadTier, SamePath, Upcall
from sbnet.datapath.dpif import tunnel_fast
from sbnet.datapath.dpif.express import (H_ACTIONS, H_LOOKUP, H_PARSE, TUN_SLOTS, ExpressLane,
                                         tunnel_args)
from sbnet.datapath.dpif.extract import extract
from sbnet.datapath.dpif.megaflow import Megaflow, MegaflowCache
from sbnet.datapath.dpif.misses import upcall_misses
from sbnet.datapath.dpif.smc import SignatureCache, count_kernel
from sbnet.datapath.execute import execute
from sbnet.datapath.meters import MeterTable
from sbnet.datapath.parse import ERROR_REASONS, Parsed, parse
from sbnet.datapath.ports import Port
from sbnet.datapath.tunnel import (DECAP_DROPS, ENCAP_DROPS, TNL_F_OAM, TunnelPort, decap,
                                   encap, geneve_option)
from sbnet.datapath.underlay import Underlay
from sbnet.flows import fields as F

MAX_RECIRC = 6            # passes through conntrack per packet before it is dropped
# A batch whose translated paths keep finding no other miss on them is asked about them
# after every 2, 4, ... up to this many translations only (each asking costs about what a
# translation does).
MAX_STRIDE = 64
_CT_POINT = 0xFFFFFF01    # pseudo-port: execute() hands back the packet as it reaches ct()
_TCP_FLAGS = F.SLOT_INDEX["tcp_flags"]
# Batches up to this size are counted and sorted in Python lists: numpy's fixed cost per
# call (a few us) outweighs its speed on a handful of rows.
_SMALL = 128
_WHOLE = np.arange(0)       # _from_underlay: every row of the batch (compared by identity)
# Conntrack state travels with the packet (OVS's pkt->md), not in its bytes: kept across re-parses.
_CT_ROWS = slice(F.SLOT_INDEX["ct_state"], F.SLOT_INDEX["ct_tp_dst"] + 1)


class UserspaceDpif:
    """The datapath below one bridge, in this process: ports, tunnels and the underlay,
    meters and conntrack as executed, and the tiers a packet meets (an optional offload
    tier in front, the megaflow classifier) before it goes up to the bridge's upcall.

    Packets of one batch are regrouped per datapath flow: each flow's counters are
    updated once per batch and its actions run once on all its packets."""

    def __init__(self, upcall: Upcall, meters: MeterTable, conntrack=None,
                 offload: OffloadTier | None = None, compiled: bool = True,
                 same_path: SamePath | None = None) -> None:
        """compiled: run the compiled tiers (extract, signature cache, counters); False
        keeps every step in the numpy code, the reference the compiled path is checked against.
        same_path: after each upcall of a batch, the flows of the batch's other misses
        that take the same path (one translation for all of them)."""
        from sbnet.datapath.conntrack import Conntrack
        self.upcall = upcall
        self.same_path = same_path
        self.max_stride = MAX_STRIDE
        self.meters = meters
        self.conntrack = conntrack if conntrack is not None else Conntrack(compiled=compiled)
        self.ports: dict[int, Port] = {}
        self.tunnels: dict[int, TunnelPort] = {}     # ofport -> TunnelPort
        self.underlay = Underlay()
        self.config_version = 0            # bumped on every port or tunnel change
        self._decap_key: tuple | None = None    # (config_version, underlay, its generation)
        self._decap_plan: tuple = ()
        # Geneve option (class, type) -> (tun_metadataN, length in bytes), as OVS's TLV map.
        self.tlv_map: dict[tuple[int, int], tuple[str, int]] = {}
        self.cache = MegaflowCache(compiled=compiled)
        self.compiled = compiled
        self.smc = SignatureCache() if compiled else None
        self._parse = extract if compiled else parse
        self._encap = tunnel_fast.encap if compiled else encap
        self._decap_rows = tunnel_fast.decap if compiled else decap
        self.tier = offload
        # The compiled express lane takes the common case whole; the offload tier's model
        # counts per packet what it carries, so with a tier every packet takes the tiers.
        self.lane = ExpressLane(self) if compiled and (offload is None or not offload.carries) \
            else None
        if offload is not None:
            if not callable(getattr(offload, "attach", None)):
                raise TypeError(f"offload takes a tier (sbnet.offload.nic_tier(profile)), "
                                f"not {offload!r}")
            offload.attach(self.conntrack, self)
        self.tier_packets = {"nic": 0, "software": 0}
        self.mf_nic_packets: dict[int, int] = {}     # offload-tier packets per live megaflow
        self._actions: list[tuple] = []
        self._action_ids: dict[tuple, int] = {}
        self._special: list[bool] = []      # per action list: has ct() or tunnel output
        self.parse_errors = np.zeros(len(ERROR_REASONS), dtype=np.int64)
        self.drops: dict[str, int] = {}
        self.upcalls = 0
        self.lane_packets = 0              # packets the express lane took from end to end
        self.lane_handed = 0               # ... and those it handed to the general path
        self.upcall_seconds = 0.0          # process CPU time in the slow path (cost model)
        self.tier_seconds = 0.0            # ... in the offload tier's model (stands for the NIC)
        self.packet_ins: list[bytes] = []
        self.packets_in = 0

    # -- ports ------------------------------------------------------------------------
    def add_port(self, ofport: int, port: Port) -> None:
        self.ports[ofport] = port
        self.config_version += 1

    def add_tunnel(self, tunnel: TunnelPort) -> None:
        """Known as a tunnel before its port is added, so one revalidation sees both."""
        self.tunnels[tunnel.ofport] = tunnel
        self.config_version += 1

    def remove_port(self, ofport: int) -> None:
        self.tunnels.pop(ofport, None)
        self.ports.pop(ofport).close()
        self.config_version += 1

    # -- datapath flows (the dpif provider interface) --------------------------------
    def action_list(self, action_id: int) -> tuple:
        """The datapath actions of an action id (megaflows sharing actions share the id)."""
        return self._actions[action_id]

    def action_lists(self) -> list[tuple]:
        """Every action list by id (ids are never reused)."""
        return self._actions

    def flow_put(self, wc: list[int], key, actions: tuple, rules: list, reason: str,
                 modified: int, now: float) -> Megaflow:
        """Install a datapath flow (match = key & wc) and offer it to the offload tier."""
        self.upcalls += 1
        mf = self.cache.add(wc, key, actions, self._action_id(actions), rules, reason,
                            modified, now)
        if self.smc is not None:
            self.smc.add(mf.mf_id, mf.slots, mf.mask, mf.value)
        if self.tier is not None:
            self.tier.offer(mf, now)
        return mf

    def flow_put_many(self, wc: list[int], keys: np.ndarray, actions: tuple, rules: list,
                      reason: str, modified: int, now: float) -> list[Megaflow]:
        """flow_put of one translation for the keys (columns of slot-major `keys`), each
        its own flow (key & wc), stored together."""
        if self.tier is not None:      # the NIC model places each as it is offered
            return [self.flow_put(wc, keys[:, i].tolist(), actions, rules, reason, modified, now)
                    for i in range(keys.shape[1])]
        self.upcalls += keys.shape[1]
        mfs = self.cache.add_many(wc, keys, actions, self._action_id(actions), rules, reason,
                                  modified, now)
        if self.smc is not None and mfs:
            self.smc.add_many(np.array([mf.mf_id for mf in mfs], dtype=np.int64), mfs[0].slots,
                              mfs[0].mask, np.array([mf.value for mf in mfs], dtype=np.uint64))
        return mfs

    def _action_id(self, actions: tuple) -> int:
        """The id of an action list (megaflows sharing actions share it).  Userspace
        actions become outputs to the controller pseudo-port, so execute() emits the
        packet as it is at that point of the action list."""
        acts = actions
        if any(type(a) is odp.Userspace for a in actions):
            acts = tuple(odp.Output(F.OFPP_CONTROLLER) if type(a) is odp.Userspace else a
                         for a in actions)
        aid = self._action_ids.get(acts)
        if aid is None:
            aid = self._action_ids[acts] = len(self._actions)
            self._actions.append(acts)
            self._special.append(any(_is_special(a) for a in acts))
        return aid

    def flow_del(self, mf_id: int) -> FlowCounts:
        """Delete a datapath flow; its final counters, every tier's packets included."""
        if self.tier is not None:
            self._fold_one(mf_id, self.tier.remove(mf_id))
        c = self.cache
        counts = FlowCounts(int(c.packets[mf_id]), int(c.bytes[mf_id]), float(c.used[mf_id]))
        self.mf_nic_packets.pop(mf_id, None)
        if self.smc is not None:
            self.smc.remove(mf_id)
        c.remove(mf_id)
        return counts

    def flow_dump(self) -> list[Megaflow]:
        """Every datapath flow, counters folded in from the offload tier first."""
        self.fold_nic()
        return list(self.cache.flows.values())

    def flow_counts(self, mf_ids) -> FlowCounts:
        """Packets and bytes summed, and the last use, over some datapath flows."""
        ids = np.fromiter(mf_ids, dtype=np.int64, count=len(mf_ids))
        if not ids.size:
            return FlowCounts(0, 0, 0.0)
        c = self.cache
        return FlowCounts(int(c.packets[ids].sum()), int(c.bytes[ids].sum()),
                          float(c.used[ids].max()))

    def flow_used(self, mf_id: int) -> float:
        return float(self.cache.used[mf_id])

    def flows_since(self, mark: int) -> tuple[list[Megaflow], int]:
        """The datapath flows put since `mark` (0: since the start) still there, and the
        mark to ask from next time."""
        c = self.cache
        end = c.next_id
        return [mf for mf in map(c.flows.get, range(mark, end)) if mf is not None], end

    def fold_counts(self, counts: dict) -> None:
        """Counts a tier below took for datapath flows (by id: packets, bytes, used,
        tcp_flags), added to theirs, so statistics are exact whichever tier forwarded."""
        c = self.cache
        for mf_id, k in counts.items():
            if mf_id in c.flows:
                c.packets[mf_id] += k.packets
                c.bytes[mf_id] += k.bytes
                c.used[mf_id] = max(c.used[mf_id], k.used)
                c.tcp_flags[mf_id] |= np.uint16(k.tcp_flags)

    def flow_find(self, key) -> int:
        return int(self.cache.lookup(np.array(key, dtype=np.uint64)[:, None], np.arange(1))[0])

    def stats(self) -> DpifStats:
        hits = sum(s.hits for s in self.cache.subtables.values())
        return DpifStats(flows=len(self.cache), masks=len(self.cache.subtables),
                         hits=hits, upcalls=self.upcalls, tier_packets=dict(self.tier_packets))

    def resort(self) -> None:
        self.cache.resort()

    # -- packets ------------------------------------------------------------------
    def process(self, batch: Batch, now: float) -> list[tuple[int, Batch]]:
        """Receive a batch; returns (port, packets) emitted, also delivered to the ports.
        The dpif owns the batch from here (its packets may be edited in place, as in
        OVS's datapath).  Tunnel decapsulation is tried only on packets that arrived on
        underlay ports."""
        n = len(batch.length)
        if not n:
            return []
        lane = self.lane
        if lane is not None and not lane.held:
            # No tunnels, or a port's receive batch (one comparison says so), the lane
            # free: the common case, its short way.  (With a lane there is no offload tier
            # to tick.)
            one = same_value(batch.in_port) if self.tunnels else -1
            if one is not None:
                out: list[tuple[int, Batch]] = []
                if one in self.underlay.ports:
                    rest = self._decap(batch, now, out)
                    return out if rest is None else out + self._local(rest, now)
                self._express(batch, None, None, now, out)
                return out
        under = self._from_underlay(batch) if self.tunnels else None
        if under is None:
            out = self._local(batch, now)
        else:
            inner: list[tuple[int, Batch]] = []
            whole = under is _WHOLE
            rest = self._decap(batch if whole else batch.take(under), now, inner)
            if not whole:
                local = np.ones(n, dtype=bool)
                local[under] = False
                others = batch.take(local)
                rest = others if rest is None or not len(rest) else _concat(others, rest)
            out = inner if rest is None else inner + self._local(rest, now)
        if self.tier is not None and self.tier.carries:
            # After decapsulated packets too: their megaflows wait for the inserter as well.
            # (A tier that never takes a packet has nothing to install or fold.)
            self.offload_tick(now)
        return out

    def _from_underlay(self, batch: Batch) -> np.ndarray | None:
        """Rows that arrived on an underlay port (None when there are none, _WHOLE when
        every row did)."""
        ports = self.underlay.ports
        if not ports:
            return None
        # A port's receive batch comes from one interface: one comparison says so.
        one = batch.single_port()
        if one is not None:
            return _WHOLE if one in ports else None
        n = len(batch)
        if n <= _SMALL:
            on = [p in ports for p in batch.in_port.tolist()]
            if all(on):         # several underlay ports' rows
                return _WHOLE
            rows = [i for i, u in enumerate(on) if u]
            return np.array(rows, np.int64) if rows else None
        hit = np.zeros(len(batch), dtype=bool)
        for p in ports:
            hit |= batch.in_port == p
        rows = np.flatnonzero(hit)
        if rows.size == n:
            return _WHOLE
        return rows if rows.size else None

    def _local(self, batch: Batch, now: float) -> list[tuple[int, Batch]]:
        n = len(batch)
        if n == 0:
            return []
        if self.lane is not None:
            out: list[tuple[int, Batch]] = []
            self._express(batch, None, None, now, out)
            return out
        parsed = self._parse(batch)
        out: list[tuple[int, Batch]] = []
        self._pass(batch, parsed, self._well_formed(parsed), now, 0, out)
        return out

    def _decap(self, batch: Batch, now: float, out: list) -> Batch | None:
        """Strip tunnel headers from underlay packets addressed to our tunnel ports and
        switch the inner frames from the tunnel port; returns the packets left over (None:
        none)."""
        n = len(batch.length)
        if self.lane is not None:
            key = (self.config_version, self.underlay, self.underlay.generation)
            if self._decap_key != key:
                self._decap_plan = tunnel_fast.decap_plan(self.tunnels.values(), self.underlay)
                self._decap_key = key
            if self.lane.held:
                res = tunnel_fast.decap_rows(batch, self._decap_plan)
            else:
                res, inner, ran = self.lane.run_decap(batch, self._decap_plan, now, MAX_RECIRC)
                if ran is not None:
                    try:
                        port = self.ports.get(ran.in_port)
                        if port is not None:
                            # The tunnel port every inner frame came in by (mostly one).
                            port.rx_packets += n
                        elif ran.in_port < 0:
                            self._count_rx(inner.in_port)
                        self._after_lane(inner, ran, now, out)
                    finally:
                        self.lane.release()
                    return None
            if res is not None:
                return self._decap_lane(batch, res, now, out)
        res = self._decap_rows(batch, np.arange(n), list(self.tunnels.values()), self.underlay)
        for reason in DECAP_DROPS:
            if res.counters.get(reason):
                self._drop(f"tunnel decap: {reason}", res.counters[reason])
        if len(res.batch):
            inner = res.batch
            inner.in_port = res.in_port.astype(np.uint32)
            self._count_rx(inner.in_port)
            parsed = self._parse(inner)
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

    def _decap_lane(self, batch: Batch, res: np.ndarray, now: float, out: list) -> Batch | None:
        """Compiled decap's inner frames into the express lane, read in place in the outer
        frames' rows (no copy when every packet was a tunnel packet); returns the packets
        that were not for a tunnel port, None when there are none."""
        st = res[:, tunnel_fast.D_STATUS]
        n = len(batch)
        if n <= _SMALL:
            # Python's own list beats numpy's per-call cost on a few rows.
            n_ok = st.tolist().count(tunnel_fast.D_OK)
        else:
            n_ok = int(np.count_nonzero(st == tunnel_fast.D_OK))
        if n_ok:
            ok = None if n_ok == n else st == tunnel_fast.D_OK
            r = res if ok is None else res[ok]
            data = batch.data if ok is None else batch.data[ok]
            in_port = r[:, tunnel_fast.D_PORT].astype(np.uint32)
            inner = Batch(data, r[:, tunnel_fast.D_INNER].astype(np.int32),
                          r[:, tunnel_fast.D_ILEN].astype(np.int32), in_port)
            self._count_rx(in_port)
            self._express(inner, None, None, now, out, r)
        if n_ok == n:
            return None
        return batch.take(st == tunnel_fast.D_OTHER)

    def _count_rx(self, in_port: np.ndarray) -> None:
        """Inner frames received, counted on the tunnel ports they came in by."""
        one = same_value(in_port)
        if one is not None:
            # A batch from the underlay is mostly one tunnel port's.
            counts = ((one, in_port.size),)
        elif in_port.size <= _SMALL:
            counts = Counter(in_port.tolist()).items()
        else:
            ports, c = np.unique(in_port, return_counts=True)
            counts = zip(ports.tolist(), c.tolist())
        for p, c in counts:
            port = self.ports.get(p)
            if port is not None:
                port.rx_packets += c

    def _well_formed(self, parsed) -> np.ndarray:
        """Rows that parsed; the others are counted per reason (and so dropped)."""
        if not parsed.error.any():
            return np.arange(len(parsed.error))
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
        """One datapath pass: the tiers (signature cache, megaflow classifier, upcall for
        what neither holds), counters once per flow, then each flow's actions on its packets."""
        if rows.size == 0:
            return
        if depth == 0 and self.lane is not None:
            self._express(batch, parsed, rows, now, out)
        else:
            self._pass_general(batch, parsed, rows, now, depth, out)

    def _express(self, batch: Batch, parsed, rows, now: float, out: list,
                 tun: np.ndarray | None = None) -> None:
        """The express lane over a pass's rows (parsed None: a whole batch, which it
        parses), then the general path for what it handed back, each row from the point
        it reached: its parse, a lookup at some pass, or the actions of the flow it was
        counted on."""
        lane = self.lane
        held = lane.held
        try:
            self._after_lane(batch, lane.run(batch, parsed, rows, now, MAX_RECIRC, tun), now,
                             out)
        finally:
            if not held:
                lane.release()

    def _after_lane(self, batch: Batch, res, now: float, out: list) -> None:
        """The lane's outputs delivered, then the general path for the rows it handed back."""
        if res.whole:
            self._whole_out(batch, res, out)
        elif len(res.outs):
            self._lane_outputs(batch, res, out)
        rows = res.rows
        if not res.n_hand:
            self.lane_packets += rows.size
            self.tier_packets["software"] += rows.size
            return
        self.lane_packets += rows.size - res.n_hand
        self.lane_handed += res.n_hand
        hand, parsed = res.hand, res.parsed
        back = rows[hand[rows, 0] != 0]
        kind, depth, aid, off = hand[back, 0], hand[back, 1], hand[back, 2], hand[back, 3]
        first = kind == H_PARSE
        # Rows handed back before their first lookup are counted there, as every packet is.
        self.tier_packets["software"] += rows.size - int(np.count_nonzero(
            first | ((kind == H_LOOKUP) & (depth == 0))))
        if first.any():
            self._parse_rest(batch, parsed, back[first])
            ok = back[first][parsed.error[back[first]] == 0]
            if ok.size:
                self._pass_general(batch, parsed, ok, now, 0, out)
        for d in range(MAX_RECIRC):
            at = (depth == d) & ~first
            if not at.any():
                continue
            look = back[at & (kind == H_LOOKUP)]
            if look.size:
                self._pass_general(batch, parsed, look, now, d, out)
            acts_at = at & (kind == H_ACTIONS)
            if not acts_at.any():
                continue
            # From the first action the lane did not run (its edits and ct are done).
            step = (aid << 16) | off
            for s in np.unique(step[acts_at]):
                sel = back[acts_at & (step == s)]
                a, k = int(s) >> 16, int(s) & 0xFFFF
                acts = self._actions[a][k:]
                if self._special[a] if k == 0 else any(_is_special(x) for x in acts):
                    self._run_special(batch, sel, parsed, acts, now, d, out)
                else:
                    self._deliver(execute(batch, sel, parsed.l3, parsed.l4, acts), out)

    def _parse_rest(self, batch: Batch, parsed, rows: np.ndarray) -> None:
        """The numpy parser's keys for the rows the compiled extract left; errors counted."""
        ref = parse(batch.take(rows))
        self.lane.dirty()
        tun = parsed.keys[TUN_SLOTS][:, rows]       # set from the outer headers, if any
        parsed.keys[:, rows] = ref.keys
        parsed.keys[np.array(TUN_SLOTS)[:, None], rows] = tun
        parsed.l2_5[rows], parsed.l3[rows], parsed.l4[rows] = ref.l2_5, ref.l3, ref.l4
        parsed.error[rows] = ref.error
        bad = ref.error[ref.error != 0]
        if bad.size:
            self.parse_errors += np.bincount(bad, minlength=len(ERROR_REASONS))

    def _whole_out(self, batch: Batch, res, out: list) -> None:
        """Deliver a batch the lane sent whole, in order, to one place (the common burst):
        _lane_outputs' work without its grouping."""
        port, tnl, nbytes = res.port, res.tnl, res.nbytes
        if tnl >= 0:
            self.ports[tnl].deliver(batch, nbytes)
            cols = res.enc_cols
            batch = Batch(res.enc, cols[1], cols[0], batch.in_port)
            nbytes = res.enc_nbytes
        if port == F.OFPP_CONTROLLER:
            self._deliver([(port, batch)], out)
            return
        dest = self.ports.get(port)
        if dest is not None:
            dest.deliver(batch, nbytes)
        out.append((port, batch))

    def _lane_outputs(self, batch: Batch, res, out: list) -> None:
        """Deliver what the lane output (not the whole batch to one place: _whole_out): the
        rows, or their outer frames, each tunnel port counting the inner frames it sent."""
        outs = res.outs
        # One key per (port, tunnel port): ofports are 32-bit, the tunnel port -1 or one.
        place = (outs[:, 1] << 33) | (outs[:, 2] + 1)
        if not (place != place[0]).any():
            groups = [(int(outs[0, 1]), int(outs[0, 2]), outs[:, 0])]
        else:
            groups = [(int(outs[g[0], 1]), int(outs[g[0], 2]), outs[g, 0])
                      for g in _runs(place)]
        for port, tnl, sel in groups:
            inner = batch.take(sel)
            if tnl < 0:
                self._deliver([(port, inner)], out)
                continue
            self.ports[tnl].deliver(inner)
            cols = res.enc_cols[:, sel]
            pb = Batch(res.enc[sel], cols[1], cols[0], batch.in_port[sel])
            self._deliver([(port, pb)], out)

    def _pass_general(self, batch: Batch, parsed, rows: np.ndarray, now: float, depth: int,
                      out: list) -> None:
        keys = parsed.keys
        mf = self._lookup(keys, rows, now)
        self._count(mf, batch.length[rows], now, keys[_TCP_FLAGS, rows], keys, rows, depth)
        self._emit(batch, rows, mf, parsed, now, depth, out)

    def _lookup(self, keys: np.ndarray, rows: np.ndarray, now: float) -> np.ndarray:
        """The datapath flow of each row, through the tiers in order; misses go up."""
        if self.smc is None:
            mf = self.cache.lookup(keys, rows)
            missing = mf < 0
            if missing.any():
                mf[missing] = self._upcall(keys, rows[missing], now)
            return mf
        mf, hashes, misses = self.smc.lookup(keys, rows)
        if misses:
            todo = np.flatnonzero(mf < 0) if misses < rows.size else np.arange(rows.size)
            sub = rows[todo]
            got = self.cache.lookup(keys, sub)
            missing = got < 0
            if missing.any():
                got[missing] = self._upcall(keys, sub[missing], now)
            mf[todo] = got
            self.smc.insert(hashes[todo], got)
        return mf

    def _count(self, mf: np.ndarray, lengths: np.ndarray, now: float,
               tcp_flags: np.ndarray, keys: np.ndarray, rows: np.ndarray, depth: int) -> None:
        c = self.cache
        if self.tier is not None:
            # The NIC tier counts what it carried; the host counts the rest.  Packets of ct
            # megaflows are the NIC's only when their connection is in its conntrack table.
            t0 = time.process_time()
            held = self.tier.held(mf, keys, rows, tcp_flags, now)
            on = self.tier.record(mf, lengths, now, held)
            self.tier_seconds += time.process_time() - t0
            n_on = int(np.count_nonzero(on))
            if depth == 0:      # a packet counts once, where its first datapath pass ran
                self.tier_packets["nic"] += n_on
                self.tier_packets["software"] += len(mf) - n_on
            if n_on:
                # The NIC's packets: only the TCP flags seen (the tier counts the rest).
                np.bitwise_or.at(c.tcp_flags, mf[on], tcp_flags[on].astype(np.uint16))
                host = ~on
                mf, lengths, tcp_flags = mf[host], lengths[host], tcp_flags[host]
        elif depth == 0:
            self.tier_packets["software"] += len(mf)
        if self.compiled:
            count_kernel(mf.astype(np.int64, copy=False), lengths.astype(np.int32, copy=False),
                         tcp_flags.astype(np.uint64, copy=False), float(now), c.packets, c.bytes,
                         c.used, c.tcp_flags)
            return
        # TCP flags seen per megaflow, as OVS's datapath keeps them (flow records read them).
        np.bitwise_or.at(c.tcp_flags, mf, tcp_flags.astype(np.uint16))
        # ufunc.at costs per packet, not per cached megaflow as bincount would.
        np.add.at(c.packets, mf, 1)
        np.add.at(c.bytes, mf, lengths.astype(np.int64))   # same dtype: the fast path
        c.used[mf] = now

    def _emit(self, batch: Batch, rows: np.ndarray, mf: np.ndarray, parsed, now: float,
              depth: int, out: list) -> None:
        act = self.cache.action_of[mf]
        first = int(act[0])
        if act.size == 1 or not (act != first).any():
            groups = [(first, rows)]         # one flow's actions (the common burst)
        else:
            groups = [(int(act[g[0]]), rows[g]) for g in _runs(act)]
        for aid, sel in groups:
            acts = self._actions[aid]
            if not acts:
                continue
            if self._special[aid]:
                self._run_special(batch, sel, parsed, acts, now, depth, out)
            else:
                self._deliver(execute(batch, sel, parsed.l3, parsed.l4, acts), out)

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
                p2 = self._parse(at)
                p2.keys[_CT_ROWS] = parsed.keys[_CT_ROWS][:, rows[keep]]
                batch, rows, parsed = at, np.arange(len(at)), p2
                continue
            if isinstance(a, odp.TunnelPush):
                self._tunnel_out(at, a, out)
                if i == len(acts):
                    return      # the push ended the actions: no parse of what is left
                batch, rows, parsed = at, every, self._parse(at)
                continue
            if isinstance(a, odp.Ct):
                at = at.take(every)     # conntrack rewrites NAT in place: own the batch
                p2 = self._parse(at)
                p2.keys[_CT_ROWS] = parsed.keys[_CT_ROWS][:, rows]
                self.conntrack.execute(at, p2, every, a.zone, commit=a.commit, nat=a.nat,
                                       set_mark=a.mark, set_label=a.label, now=now, force=a.force)
                if i < len(acts) and isinstance(acts[i], odp.Recirc):
                    self._recirculate(at, p2, acts[i].recirc_id, now, depth, out)
                    i += 1
                batch, rows, parsed = at, every, p2
                continue
            if isinstance(a, odp.Recirc):
                p2 = self._parse(at)
                self._recirculate(at, p2, a.recirc_id, now, depth, out)
                batch, rows, parsed = at, every, p2
                continue
            batch, ethernet = self._nsh_step(at, every, a)
            rows = np.arange(len(batch))
            parsed = self._parse(batch) if ethernet else _no_offsets(len(batch))

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
        """The megaflow id of each missed key column (misses.upcall_misses)."""
        t0 = time.process_time()
        try:
            return upcall_misses(self, keys, miss, now)
        finally:
            self.upcall_seconds += time.process_time() - t0

    def _tunnel_out(self, batch: Batch, push: odp.TunnelPush, out: list) -> None:
        tp = self.tunnels[push.ofport]
        tun = dict(tunnel_args(push.tun))
        meta = [(n, v) for n, v in push.tun if n.startswith("tun_metadata")]
        if meta:
            by_field = {f: (c, t, ln) for (c, t), (f, ln) in self.tlv_map.items()}
            tun["geneve_opts"] = b"".join(
                geneve_option(by_field[n][0], by_field[n][1], v.to_bytes(by_field[n][2], "big"))
                for n, v in meta)
        res = self._encap(batch, np.arange(len(batch)), tp, tun, self.underlay)
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

    def action_ids(self, mf_ids: np.ndarray) -> np.ndarray:
        """The action id of each datapath flow."""
        return self.cache.action_of[mf_ids]


_SPECIAL = (odp.Ct, odp.TunnelPush, odp.PushNsh, odp.PushEth, odp.PopEth, odp.PopNsh, odp.Recirc,
            odp.Meter)


def _is_special(a) -> bool:
    """Datapath actions the switch runs itself rather than through execute()."""
    return isinstance(a, _SPECIAL) or (isinstance(a, odp.SetFields) and a.header == "nsh")


def _runs(key: np.ndarray) -> list[np.ndarray]:
    """Positions grouped by key value, one array per distinct value, each in order."""
    order = np.argsort(key, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(key[order])) + 1)


def _no_offsets(n: int) -> Parsed:
    """Offsets for packets without Ethernet (NSH between push_nsh and push_eth): none."""
    none = np.full(n, -1, dtype=np.int32)
    return Parsed(np.zeros((F.N_SLOTS, n), dtype=np.uint64), none, none, none,
                  np.zeros(n, dtype=np.uint8))


def _concat(a: Batch, b: Batch) -> Batch:
    """Two batches as one (rows of a, then rows of b), widened to the larger capacity."""
    width = max(a.data.shape[1], b.data.shape[1])
    data = np.zeros((len(a) + len(b), width), dtype=np.uint8)
    data[:len(a), :a.data.shape[1]] = a.data
    data[len(a):, :b.data.shape[1]] = b.data
    return Batch(data, np.concatenate([a.start, b.start]), np.concatenate([a.length, b.length]),
                 np.concatenate([a.in_port, b.in_port]))
