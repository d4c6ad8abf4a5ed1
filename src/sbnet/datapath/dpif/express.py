"""The express lane: a batch's common case (cache hits, outputs, VXLAN push, established ct and recirculation) in one compiled call."""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from sbnet.datapath import odp
from sbnet.datapath.batch import HEADROOM, TAILROOM, Batch
from sbnet.datapath.parse import Parsed
from sbnet.datapath.conntrack_kernel import (F_CHECKSUMS, F_LIBERAL, F_NAT, W_ELIG,
                                             TIMEOUTS as CT_TIMEOUTS,
                                             express_kernel as ct_kernel)
from sbnet.datapath.dpif import tunnel_fast
from sbnet.datapath.dpif.smc import _DEAD, HASHED as _HASHED, _covers, _key_hash, probe
from sbnet.datapath.dpif.extract import EXTRACT_SLOTS, extract_kernel
from sbnet.datapath.dpif.tunnel_fast import encap_kernel
from sbnet.flows import fields as F

# Program kinds, one row per datapath action list (prog[aid]): what the lane does itself.
K_NONE, K_OUTPUT, K_TUNNEL, K_CT, K_DROP = range(5)
PROG_W = 8
MAX_OUT = PROG_W - 2          # outputs a K_OUTPUT program may name
# Why a row left the lane (hand[g]): still to look up at hand_depth (with its keys as they
# are: recirc_id and ct_* set), or looked up and counted, its actions still to run.
H_DONE, H_LOOKUP, H_ACTIONS, H_PARSE = 0, 1, 2, 3
_RECIRC_ID, _TCP_FLAGS = F.SLOT_INDEX["recirc_id"], F.SLOT_INDEX["tcp_flags"]
TUN_SLOTS = [F.SLOT_INDEX[s] for s in ("tun_id", "tun_src", "tun_dst", "tun_flags")]
_TUN_ID, _TUN_SRC, _TUN_DST, _TUN_FLAGS = TUN_SLOTS
# Every slot the lane's kernels write: extract's, the tunnel's, recirc_id and ct_*.
_LANE_SLOTS = np.array(sorted(set(EXTRACT_SLOTS) | set(TUN_SLOTS) | {_RECIRC_ID} | set(
    range(F.SLOT_INDEX["ct_state"], F.SLOT_INDEX["ct_tp_dst"] + 1))), np.intp)
TMPL_W = 64


@numba.njit("int64(uint8[:, :], int32[:], int32[:], uint32[:], uint64[:, :], int32[:], int32[:],"
            " uint8[:], boolean, int64[:], int64[:, :], uint64[:, :], uint64[:, :], int64[:], int64[:, :],"
            " int64[:], int64[:], float64[:], uint16[:], float64, uint8[:, :], int64[:, :],"
            " boolean, uint64[:, :], uint64[:, ::1], int64, float64[:], int8[:], int64[:],"
            " uint8[:, :], int32[:], int64[:, :], int64[:, :], int64, int64[:])",
            cache=True, nogil=True)
def lane_kernel(data, start, length, in_port, keys, l3, l4, error, do_extract, rows, tun,
                table, matches, action_of, prog, packets, nbytes, used, tcp_flags, now, tmpl,
                tprm, ct_ok, kv, mem, ct_flags, tmo, mark, count, enc, enc_len, outs, hand,
                max_recirc, stats):
    """Every row of `rows` through the signature cache and its datapath flow's actions,
    pass after pass, as far as the lane can take it: counters, outputs (recorded in
    outs: row, port, tunnel ofport or -1 for a plain output), VXLAN push (the outer frame
    of row g into enc[g]), ct on established connections (conntrack's compiled express
    path) and recirculation.  A row the lane cannot finish is handed back (hand[g]) at
    the point it reached: hand[g] = (H_LOOKUP, H_ACTIONS or H_PARSE, pass, action id).
    stats: ct express rows, invalid among them, outputs, rows the cache took (a row
    handed back at its lookup is the general path's to count), whether every row went
    out once, in order, to one place.  Returns the number of rows handed back."""
    n = rows.shape[0]
    active = rows.copy()
    n_hand = 0
    ct_stats = stats[:2]
    ct_stats[0] = 0
    ct_stats[1] = 0
    stats = stats[2:]
    hashed = _HASHED
    memi = mem.view(np.int64)
    memf = mem.view(np.float64)
    work = np.empty((n, 5), np.int64)
    slow = np.zeros(data.shape[0], np.bool_)
    for g in range(tun.shape[0]):
        # Decapsulated here: the outer headers' fields OpenFlow sees (only the OAM flag).
        keys[_TUN_ID, g] = np.uint64(tun[g, 0])
        keys[_TUN_SRC, g] = np.uint64(tun[g, 1])
        keys[_TUN_DST, g] = np.uint64(tun[g, 2])
        keys[_TUN_FLAGS, g] = np.uint64(tun[g, 3])
    if do_extract:
        # keys zero (but the tunnel's), l3 and l4 -1: extract_kernel's contract.  Rows it leaves (uncommon
        # or malformed packets) are the numpy parser's and the general path's.
        if extract_kernel(data, start, length, in_port, keys, l3, l4, slow):
            k = 0
            for a in range(n):
                g = rows[a]
                if slow[g]:
                    hand[g, 0] = H_PARSE
                    n_hand += 1
                else:
                    active[k] = g
                    k += 1
            n = k
    nxt = np.empty(n, np.int64)
    ct_rows = np.empty(n, np.int64)
    ct_aid = np.empty(n, np.int64)
    sub = np.empty(n, np.int64)
    zones = np.empty(n, np.uint64)
    hashes = np.empty(n, np.uint64)
    found = np.empty(n, np.int64)
    cst = np.zeros(2, np.int64)
    size_mask = np.uint64(table.shape[0] - 2)
    n_out = 0
    hits = 0
    depth = 0
    n_act = n
    while n_act:
        # Hash, probe and verify in separate passes, so the random loads of many packets
        # overlap instead of waiting on memory one after another (as smc_lookup).
        for a in range(n_act):
            hashes[a] = _key_hash(keys, active[a], hashed)
        for a in range(n_act):
            found[a] = probe(table, hashes[a], size_mask)
        for a in range(n_act):
            f = found[a]
            if f >= 0 and (matches[f, 0] == _DEAD or not _covers(keys, active[a], matches[f])):
                found[a] = -1
        n_ct = 0
        n_next = 0
        for a in range(n_act):
            g = active[a]
            f = found[a]
            if f < 0:
                hand[g, 0] = H_LOOKUP
                hand[g, 1] = depth
                n_hand += 1
                continue
            aid = action_of[f]
            kind = prog[aid, 0]
            if kind == K_NONE or (kind == K_CT and (not ct_ok or depth + 1 >= max_recirc)):
                hand[g, 0] = H_LOOKUP
                hand[g, 1] = depth
                n_hand += 1
                continue
            hits += 1
            packets[f] += 1
            nbytes[f] += length[g]
            used[f] = now
            tcp_flags[f] |= np.uint16(keys[_TCP_FLAGS, g])
            if kind == K_OUTPUT:
                for k in range(prog[aid, 1]):
                    outs[n_out, 0] = g
                    outs[n_out, 1] = prog[aid, 2 + k]
                    outs[n_out, 2] = -1
                    n_out += 1
            elif kind == K_TUNNEL:
                t = prog[aid, 1]
                if encap_kernel(data[g:g + 1], start[g:g + 1], length[g:g + 1],
                                tmpl[t, :tprm[t, 1]], tprm[t, :6], enc[g:g + 1]) < 0:
                    hand[g, 0] = H_ACTIONS
                    hand[g, 1] = depth
                    hand[g, 2] = aid
                    n_hand += 1
                    continue
                enc_len[g] = length[g] + np.int32(tprm[t, 1])
                outs[n_out, 0] = g
                outs[n_out, 1] = tprm[t, 6]
                outs[n_out, 2] = prog[aid, 2]
                n_out += 1
            elif kind == K_CT:
                ct_rows[n_ct] = g
                ct_aid[n_ct] = aid
                n_ct += 1
        # ct, one call per zone (in batch order within it), as one ct() action would.
        done = 0
        while done < n_ct:
            z = -1
            m = 0
            for c in range(n_ct):
                aid = ct_aid[c]
                if aid < 0:
                    continue
                if z < 0:
                    z = prog[aid, 1]
                if prog[aid, 1] == z:
                    sub[m] = ct_rows[c]
                    zones[m] = np.uint64(z)
                    m += 1
            cst[0] = 0
            cst[1] = 0
            ct_kernel(data, sub[:m], l3, l4, keys, error, zones[:m], kv, mem, memi, memf, now,
                      ct_flags, tmo, work[:m], mark, count, cst)
            ct_stats[0] += cst[0]
            ct_stats[1] += cst[1]
            r = 0
            for c in range(n_ct):
                aid = ct_aid[c]
                if aid < 0 or prog[aid, 1] != z:
                    continue
                g = ct_rows[c]
                if work[r, W_ELIG]:
                    keys[_RECIRC_ID, g] = np.uint64(prog[aid, 2])
                    nxt[n_next] = g
                    n_next += 1
                else:
                    hand[g, 0] = H_ACTIONS
                    hand[g, 1] = depth
                    hand[g, 2] = aid
                    n_hand += 1
                ct_aid[c] = -1
                r += 1
                done += 1
        for a in range(n_next):
            active[a] = nxt[a]
        n_act = n_next
        depth += 1
    stats[0] = n_out
    stats[1] = hits
    # Every row output once, in order (the common burst): the batch can go out as it is.
    same = n_out == rows.shape[0]
    for k in range(n_out):
        if not same:
            break
        same = outs[k, 0] == rows[k] and outs[k, 1] == outs[0, 1] and outs[k, 2] == outs[0, 2]
    stats[2] = 1 if same else 0
    return n_hand


class ExpressLane:
    """The datapath flows' action lists as programs the lane runs, and its calls.

    A program is one row: a kind (plain outputs, a VXLAN/IPv4 push to a resolved
    destination, ct without commit, NAT or metadata followed by recirculation, drop)
    and its arguments; any other action list is K_NONE and its packets are handed to the
    general path before they are counted.  Tunnel programs hold an outer-header template,
    so they are rebuilt when the underlay or the tunnel ports change."""

    def __init__(self, dpif) -> None:
        self.dpif = dpif
        self.prog = np.zeros((64, PROG_W), np.int64)
        self.built = 0                  # action ids with a program
        self.tmpl = np.zeros((8, TMPL_W), np.uint8)
        self.tprm = np.zeros((8, 8), np.int64)
        self.n_tmpl = 0
        self._version = self._generation = -1
        # ct, stats, then the kernel's: outputs, rows the cache took, whole batch out.
        self._stats = np.zeros(5, np.int64)
        self._ws = np.zeros((F.N_SLOTS, 256), np.uint64)    # keys, reused (see _keys)
        self._lane_n = self._all_n = self._n = 0
        # conntrack's timeouts are fixed when it is made.
        self._tmo = dpif.conntrack.tmo[CT_TIMEOUTS].astype(np.float64)

    def _refresh(self) -> None:
        d = self.dpif
        if (d.config_version, d.underlay.generation) != (self._version, self._generation):
            self._version, self._generation = d.config_version, d.underlay.generation
            self.built = 0
            self.n_tmpl = 0
        n = len(d.action_lists())
        if n > self.prog.shape[0]:
            grown = np.zeros((max(n, 2 * self.prog.shape[0]), PROG_W), np.int64)
            grown[:self.built] = self.prog[:self.built]
            self.prog = grown
        for aid in range(self.built, n):
            self.prog[aid] = self._program(d.action_list(aid))
        self.built = n

    def _program(self, acts: tuple) -> np.ndarray:
        row = np.zeros(PROG_W, np.int64)
        if not acts:
            row[0] = K_DROP
        elif all(isinstance(a, odp.Output) for a in acts):
            ports = [a.port for a in acts]
            if len(ports) <= MAX_OUT and F.OFPP_CONTROLLER not in ports:
                row[0], row[1] = K_OUTPUT, len(ports)
                row[2:2 + len(ports)] = ports
        elif len(acts) == 1 and isinstance(acts[0], odp.TunnelPush):
            t = self._template(acts[0])
            if t is not None:
                row[0], row[1], row[2] = K_TUNNEL, t, acts[0].ofport
        elif (len(acts) == 2 and isinstance(acts[0], odp.Ct) and isinstance(acts[1], odp.Recirc)
              and acts[0] == odp.Ct(zone=acts[0].zone)):
            row[0], row[1], row[2] = K_CT, acts[0].zone, acts[1].recirc_id
        return row

    def _template(self, push: odp.TunnelPush) -> int | None:
        d = self.dpif
        tp = d.tunnels.get(push.ofport)
        if tp is None or push.ofport not in d.ports or any(
                n.startswith("tun_metadata") for n, _ in push.tun):
            return None
        plan = tunnel_fast.push_plan(tp, dict(tunnel_args(push.tun)), d.underlay)
        if plan is None or plan[0].size > TMPL_W:
            return None
        tmpl, prm, out_port = plan
        t = self.n_tmpl
        if t == self.tmpl.shape[0]:
            self.tmpl = np.concatenate([self.tmpl, np.zeros_like(self.tmpl)])
            self.tprm = np.concatenate([self.tprm, np.zeros_like(self.tprm)])
        self.tmpl[t, :tmpl.size] = tmpl
        self.tprm[t, :6] = prm
        self.tprm[t, 6] = out_port
        self.n_tmpl += 1
        return t

    def run(self, batch: Batch, parsed: Parsed | None, rows: np.ndarray | None, now: float,
            max_recirc: int, tun: np.ndarray = None) -> LaneResult:
        """The lane over `rows` of a parsed batch, or (parsed None) over a whole batch it
        parses itself, handing rows it cannot parse back as H_PARSE; tun: per row of a
        batch just decapsulated, (tun_id, tun_src, tun_dst, tun_flags) for its keys."""
        d = self.dpif
        if d.config_version != self._version or d.underlay.generation != self._generation \
                or len(d.action_lists()) != self.built:
            self._refresh()
        ct = d.conntrack
        tab = ct.table
        c = d.cache
        smc = d.smc
        n = len(batch)
        if parsed is None:
            keys = self._keys(n)
            off = np.full((3, n), -1, np.int32)
            parsed = Parsed(keys, off[0], off[1], off[2], np.zeros(n, np.uint8))
            rows = np.arange(n)
            fresh = True
        else:
            fresh = False
        enc = self._enc(n, batch.data.shape[1])
        enc_len = np.zeros(n if self.n_tmpl else 0, np.int32)
        outs = np.empty((n * MAX_OUT, 3), np.int64)
        hand = np.zeros((n, 3), np.int64)
        mem = tab.mem
        i32 = np.int32
        st = self._stats
        n_hand = lane_kernel(
            batch.data, batch.start.astype(i32, copy=False), batch.length.astype(i32, copy=False),
            batch.in_port.astype(np.uint32, copy=False), parsed.keys,
            parsed.l3.astype(i32, copy=False), parsed.l4.astype(i32, copy=False),
            parsed.error.astype(np.uint8, copy=False), fresh, rows.astype(np.int64, copy=False),
            _NO_TUN if tun is None else tun, smc.table, smc.matches, c.action_of, self.prog, c.packets, c.bytes, c.used,
            c.tcp_flags, float(now), self.tmpl, self.tprm, ct.compiled and not tab.overflow,
            tab.index.kv, mem, (F_CHECKSUMS if ct.checksums else 0)
            | (F_LIBERAL if ct.tcp_liberal else 0), self._tmo, tab.scratch(np.int8),
            tab.scratch(np.int64), enc, enc_len, outs, hand, max_recirc, st)
        kept = int(st[3])
        smc.lookups += kept
        smc.hits += kept
        k = int(st[0])
        if k:
            s = ct.stats
            nbad = int(st[1])
            s["packets"] += k
            s["lookups_hit"] += k
            s["fast_path"] += k
            s["invalid"] += nbad
            s["tcp_seq_chk_failed"] += nbad
        return LaneResult(parsed, rows, outs[:int(st[2])], bool(st[4]), hand, n_hand, enc,
                          enc_len)

    def _keys(self, n: int) -> np.ndarray:
        """Zero keys for n packets, in a buffer kept across batches: a batch's key matrix
        is 736 bytes a packet, and zeroing a fresh one cost more than the lane's work.
        Only what earlier batches may have written is zeroed again: the lane's slots of
        the columns it used, and whole columns where the numpy parser wrote."""
        w = self._ws
        if w.shape[1] < n:
            w = self._ws = np.zeros((F.N_SLOTS, max(n, 2 * w.shape[1])), np.uint64)
            self._lane_n = self._all_n = 0
        if self._all_n:
            w[:, :self._all_n] = 0
            self._all_n = 0
        d = min(self._lane_n, n)
        if d:
            w[_LANE_SLOTS, :d] = 0
        self._lane_n = max(self._lane_n, n)
        self._n = n
        return w[:, :n]

    def dirty(self) -> None:
        """The general path wrote whole key columns of the current batch."""
        self._all_n = max(self._all_n, self._n)

    def _enc(self, n: int, width: int) -> np.ndarray:
        # encap_kernel writes a row's inner frame behind HEADROOM + header and the header
        # before it: the rest of the row is never read back, so it need not be zero.
        if not self.n_tmpl:
            return _NO_ENC
        return np.empty((n, (HEADROOM + TMPL_W + width + TAILROOM + 7) & ~7), np.uint8)


class LaneResult(NamedTuple):
    parsed: Parsed          # the batch's keys as the lane left them (recirc_id, ct_* set)
    rows: np.ndarray
    outs: np.ndarray        # (row, port, tunnel ofport or -1) per output
    whole: bool             # every row output once, in order, to one place
    hand: np.ndarray        # per row: (H_*, pass, action id)
    n_hand: int
    enc: np.ndarray         # outer frames of tunnelled rows
    enc_len: np.ndarray


_NO_ENC = np.zeros((0, 0), np.uint8)
_NO_TUN = np.zeros((0, 4), np.int64)


def tunnel_args(tun: tuple):
    """TunnelPush fields as encap() takes them (128-bit addresses split hi/lo)."""
    for name, v in tun:
        if name.startswith("tun_metadata"):
            continue
        if name in ("tun_ipv6_dst", "tun_ipv6_src"):
            yield f"{name}_hi", v >> 64
            yield f"{name}_lo", v & 0xFFFFFFFFFFFFFFFF
        else:
            yield name, v

