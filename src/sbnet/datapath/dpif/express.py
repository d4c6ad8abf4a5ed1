"""The express lane: a batch's common case (cache hits, outputs, VXLAN push, established ct and recirculation) in one compiled call."""

from __future__ import annotations

import sys
from typing import NamedTuple

import numba
import numpy as np

from sbnet.datapath import odp
from sbnet.datapath.batch import HEADROOM, TAILROOM, Batch
from sbnet.datapath.jit import entry_point, kernel
from sbnet.datapath.parse import Parsed
from sbnet.datapath.tunnel import TNL_F_OAM
from sbnet.datapath.conntrack_kernel import (F_CHECKSUMS, F_COMMIT, F_LIBERAL, F_NAT, W_ELIG,
                                             TIMEOUTS as CT_TIMEOUTS, WORK_W, _be, _csum_replace,
                                             _put16, borrowed, count_express,
                                             express_kernel as ct_kernel)
from sbnet.datapath.dpif import tunnel_fast
from sbnet.datapath.dpif.smc import HASHED as _HASHED, lookup_rows
from sbnet.datapath.dpif.extract import EXTRACT_SLOTS, extract_kernel
from sbnet.datapath.dpif.lanestate import LANE_STATE, new_state
from sbnet.datapath.dpif.tunnel_fast import (D_COLS, D_DST, D_FLAGS, D_ILEN, D_INNER, D_KEY,
                                             D_PORT, D_SRC, D_STATUS, decap_kernel,
                                             encap_fits, encap_one)
from sbnet.flows import fields as F

# Programs, one row per datapath action list (prog[aid]): whether the lane runs it (K_RUN;
# K_NONE: its packets go to the general path before they are counted), its number of
# steps, whether it recirculates, whether it has a ct step, then the steps, OP_W words
# each: (op, argument, argument, index of the datapath action it does).
K_NONE, K_RUN = 0, 1
P_KIND, P_OPS, P_RECIRC, P_CT, P_FIRST = range(5)
OP_OUTPUT, OP_TUNNEL, OP_CT, OP_RECIRC, OP_ETH_DST, OP_ETH_SRC, OP_TTL4, OP_TTL6 = range(1, 9)
OP_W, MAX_OPS = 4, 10
PROG_W = P_FIRST + OP_W * MAX_OPS
# Why a row left the lane (hand[g]): still to look up at hand_depth (with its keys as they
# are: recirc_id and ct_* set), or looked up and counted, the actions of its flow still to
# run from one of them on.
H_DONE, H_LOOKUP, H_ACTIONS, H_PARSE = 0, 1, 2, 3
_RECIRC_ID, _TCP_FLAGS = F.SLOT_INDEX["recirc_id"], F.SLOT_INDEX["tcp_flags"]
_ETH_SRC, _ETH_DST, _NW_TTL = F.SLOT_INDEX["eth_src"], F.SLOT_INDEX["eth_dst"], F.SLOT_INDEX["nw_ttl"]
TUN_SLOTS = [F.SLOT_INDEX[s] for s in ("tun_id", "tun_src", "tun_dst", "tun_flags")]
_TUN_ID, _TUN_SRC, _TUN_DST, _TUN_FLAGS = TUN_SLOTS
# Every slot the lane's kernels write: extract's, the tunnel's, recirc_id and ct_*.
_LANE_SLOTS = np.array(sorted(set(EXTRACT_SLOTS) | set(TUN_SLOTS) | {_RECIRC_ID} | set(
    range(F.SLOT_INDEX["ct_state"], F.SLOT_INDEX["ct_tp_dst"] + 1))), np.intp)
TMPL_W = 64


@numba.njit(cache=True, inline="always")
def _in_call(prog, aid, pc, zone, how):
    """Whether the ct step pc of program aid (aid -1: done) is one of the ct call's."""
    return aid >= 0 and prog[aid, P_FIRST + OP_W * pc + 1] == zone \
        and prog[aid, P_FIRST + OP_W * pc + 2] == how


@numba.njit(cache=True)
def _set(data, keys, g, start, l3, op, v):
    """One set_field step on row g, as execute() writes it (the IPv4 header checksum
    updated as RFC 1624 says), and the key slot a later lookup reads."""
    if op == OP_ETH_DST or op == OP_ETH_SRC:
        at = start if op == OP_ETH_DST else start + 6
        for j in range(6):
            data[g, at + j] = np.uint8((v >> (40 - 8 * j)) & 0xFF)
        keys[_ETH_DST if op == OP_ETH_DST else _ETH_SRC, g] = np.uint64(v)
    elif l3 >= 0:
        if op == OP_TTL4:
            old = np.int64(_be(data, g, l3 + 8, 2))
            new = (old & 0xFF) | ((v & 0xFF) << 8)
            _put16(data, g, l3 + 10, _csum_replace(np.int64(_be(data, g, l3 + 10, 2)), old,
                                                   new, 1))
        data[g, l3 + 8 if op == OP_TTL4 else l3 + 7] = np.uint8(v & 0xFF)
        keys[_NW_TTL, g] = np.uint64(v & 0xFF)


@kernel(numba.int64(LANE_STATE, numba.uint8[:, ::1], numba.int32[:], numba.int32[:],
                    numba.uint32[:], numba.int32[:], numba.int32[:], numba.uint64[:, ::1],
                    numba.int32[:], numba.int32[:],
                    numba.uint8[:], numba.boolean, numba.int64[:], numba.int64[:, :],
                    numba.boolean, numba.float64, numba.boolean, numba.int64,
                    numba.uint8[:, :], numba.int32[:, ::1], numba.int64[:, :],
                    numba.int64[:, :], numba.int64))
def lane_kernel(s, data, start, length, in_port, ostart, olength, keys, l3, l4, error,
                do_extract, rows, tun, decap, now, ct_ok, ct_flags, enc, enc_cols, outs, hand,
                max_recirc):
    """Every row of `rows` through the signature cache and its datapath flow's program,
    pass after pass, as far as the lane can take it: counters, outputs (recorded in outs:
    row, port, tunnel ofport or -1 for a plain output), Ethernet addresses and TTL set,
    VXLAN push (the outer frame of row g into enc[g], its length and start into
    enc_cols[:, g]), ct with or without NAT on
    established connections (conntrack's compiled express path) and recirculation.  A
    row the lane cannot finish is handed back (hand[g]) at the point it reached:
    hand[g] = (H_LOOKUP, H_ACTIONS or H_PARSE, pass, action id, index of the first of its
    actions still to run).  s: the long-lived arrays (lanestate: caches, programs,
    conntrack, counters out: ct express rows, invalid among them, outputs, rows the
    cache took (a row handed back at its lookup is the general path's to count), whether
    every row went out once, in order, to one place).  do_extract: rows is every row of
    the batch, whose buffers (reused across batches) the lane resets first: hand, l3, l4
    and error, and the key slots in s.zero.  tun: per row of a batch just decapsulated,
    decap_kernel's result (tunnel fields for its keys).  decap: the batch's frames came
    from the underlay, where ostart and olength say (without decap, not read):
    decap_kernel first (its result into tun), and when every frame is a tunnel packet
    for one of our tunnel ports start, length and in_port become its inner frames' (as
    OVS pops a header by moving the packet's start), else the lane returns -1 (some frame
    is not; tun says which) or -2 (some frame is the numpy decap's) having changed
    nothing else.  Returns the number of rows handed back."""
    # Every array borrowed (see borrowed()): rows of them are viewed and handed to
    # helpers row by row (the frames to _flow_hash, match rows to the verify), each
    # a reference counted twice, atomically, where a borrowed view's is a null test.
    table, matches, action_of = borrowed(s.table), borrowed(s.matches), borrowed(s.action_of)
    packets, nbytes, used = borrowed(s.packets), borrowed(s.nbytes), borrowed(s.used)
    tcp_flags, prog, tmpl, tprm = (borrowed(s.tcp_flags), borrowed(s.prog), borrowed(s.tmpl),
                                   borrowed(s.tprm))
    kv, mem, tmo, mark = borrowed(s.kv), borrowed(s.mem), borrowed(s.tmo), borrowed(s.mark)
    count, stats, zero, masks = (borrowed(s.count), borrowed(s.stats), borrowed(s.zero),
                                 borrowed(s.masks))
    data, start, length, in_port = (borrowed(data), borrowed(start), borrowed(length),
                                    borrowed(in_port))
    ostart, olength = borrowed(ostart), borrowed(olength)
    keys, l3, l4, error, rows = (borrowed(keys), borrowed(l3), borrowed(l4), borrowed(error),
                                 borrowed(rows))
    tun, enc, enc_cols, outs, hand = (borrowed(tun), borrowed(enc), borrowed(enc_cols),
                                      borrowed(outs), borrowed(hand))
    if decap:
        if decap_kernel(data, ostart, olength, s.local4, s.local6, s.udp_ports, s.udp_kinds,
                        s.tports, tun):
            return -2
        for a in range(rows.shape[0]):
            if tun[rows[a], D_STATUS] != tunnel_fast.D_OK:
                return -1
        for a in range(rows.shape[0]):
            g = rows[a]
            start[g] = np.int32(tun[g, D_INNER])
            length[g] = np.int32(tun[g, D_ILEN])
            in_port[g] = np.uint32(tun[g, D_PORT])
    n = rows.shape[0]
    for a in range(n):
        hand[rows[a], 0] = H_DONE
    if do_extract:
        for z in zero:
            keys[z, :n] = 0
        l3[:n] = -1
        l4[:n] = -1
        error[:n] = 0
    # The per-call scratch in one allocation (of the few a call makes, each costs about
    # as much as a packet's lookup at batch 32): the live rows, next pass's, the ct call's
    # and the run list, then hashes and flow ids.
    scr = np.empty((1 + WORK_W + 9) * n + 3, np.int64)
    active = scr[:n]
    active[:] = rows
    n_hand = 0
    ct_stats = stats[:3]
    ct_stats[:] = 0
    stats = stats[3:]
    hashed = _HASHED
    memi = mem.view(np.int64)
    memf = mem.view(np.float64)
    work = scr[n:n * (1 + WORK_W)].reshape((n, WORK_W))
    # slow: extract's; good: rows whose checksums a ct found good, bytes unchanged since
    # (so the next ct of the row, after a recirculation say, need not sum them again).
    slow = np.zeros(2 * data.shape[0], np.bool_)
    good = slow[data.shape[0]:]
    slow = slow[:data.shape[0]]
    for g in range(tun.shape[0]):
        # Decapsulated here (decap_kernel's row): the outer headers' fields OpenFlow sees,
        # of the flags only the OAM one.
        keys[_TUN_ID, g] = np.uint64(tun[g, D_KEY])
        keys[_TUN_SRC, g] = np.uint64(tun[g, D_SRC])
        keys[_TUN_DST, g] = np.uint64(tun[g, D_DST])
        keys[_TUN_FLAGS, g] = np.uint64(tun[g, D_FLAGS] & TNL_F_OAM)
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
    # n is now the rows extract kept: scratch views past work's.
    w0 = rows.shape[0] * (1 + WORK_W)
    nxt, ct_rows, ct_aid = scr[w0:w0 + n], scr[w0 + n:w0 + 2 * n], scr[w0 + 2 * n:w0 + 3 * n]
    ct_pc, run_row = scr[w0 + 3 * n:w0 + 4 * n], scr[w0 + 4 * n:w0 + 5 * n]
    run_aid, run_pc = scr[w0 + 5 * n:w0 + 6 * n], scr[w0 + 6 * n:w0 + 7 * n]
    sub, found = scr[w0 + 7 * n:w0 + 8 * n], scr[w0 + 8 * n:w0 + 9 * n]
    cst = scr[w0 + 9 * n:w0 + 9 * n + 3]
    zones = np.empty(2 * n, np.uint64)
    hashes = zones[n:]
    zones = zones[:n]
    n_out = 0
    hits = 0
    depth = 0
    n_act = n
    sink = np.uint64(0)
    while n_act:
        # Rows 0 to n-1 in order (hash_span): a whole batch's first pass, and a later one
        # when every row recirculated.
        in_order = True
        for a in range(n_act):
            if active[a] != a:
                in_order = False
                break
        sink ^= lookup_rows(keys, active, n_act, in_order, hashed, table, matches, masks,
                            action_of, hashes, found)[1]
        n_run = 0
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
            if prog[aid, P_KIND] == K_NONE or (prog[aid, P_RECIRC] and depth + 1 >= max_recirc) \
                    or (prog[aid, P_CT] and not ct_ok):
                hand[g, 0] = H_LOOKUP
                hand[g, 1] = depth
                n_hand += 1
                continue
            hits += 1
            packets[f] += 1
            nbytes[f] += length[g]
            used[f] = now
            tcp_flags[f] |= np.uint16(keys[_TCP_FLAGS, g])
            run_row[n_run] = g
            run_aid[n_run] = aid
            run_pc[n_run] = 0
            n_run += 1
        # Each row's steps up to its next ct (or its end); then ct, one call per zone and
        # kind (NAT, commit; in batch order within it), as one ct() action would; again
        # from there.
        while n_run:
            n_ct = 0
            for c in range(n_run):
                g = run_row[c]
                aid = run_aid[c]
                pc = run_pc[c]
                while pc < prog[aid, P_OPS]:
                    at = P_FIRST + OP_W * pc
                    op = prog[aid, at]
                    if op == OP_CT:
                        ct_rows[n_ct] = g
                        ct_aid[n_ct] = aid
                        ct_pc[n_ct] = pc
                        n_ct += 1
                        break
                    if op == OP_OUTPUT:
                        outs[n_out, 0] = g
                        outs[n_out, 1] = prog[aid, at + 1]
                        outs[n_out, 2] = -1
                        n_out += 1
                    elif op == OP_TUNNEL:
                        t = prog[aid, at + 1]
                        if not encap_fits(tprm, t, length[g]):
                            hand[g, 0] = H_ACTIONS
                            hand[g, 1] = depth
                            hand[g, 2] = aid
                            hand[g, 3] = prog[aid, at + 3]
                            n_hand += 1
                            break
                        encap_one(data, g, np.int64(start[g]), np.int64(length[g]), tmpl, tprm,
                                  t, enc, g)
                        enc_cols[0, g] = length[g] + np.int32(tprm[t, 1])
                        enc_cols[1, g] = HEADROOM
                        outs[n_out, 0] = g
                        outs[n_out, 1] = tprm[t, 7]
                        outs[n_out, 2] = prog[aid, at + 2]
                        n_out += 1
                    elif op == OP_RECIRC:
                        keys[_RECIRC_ID, g] = np.uint64(prog[aid, at + 1])
                        nxt[n_next] = g
                        n_next += 1
                    else:
                        _set(data, keys, g, np.int64(start[g]), np.int64(l3[g]), op,
                             prog[aid, at + 1])
                        good[g] = False
                    pc += 1
            n_run = 0
            done = 0
            while done < n_ct:
                z = -1
                how = 0
                m = 0
                for c in range(n_ct):
                    aid = ct_aid[c]
                    if aid >= 0 and z < 0:
                        z = prog[aid, P_FIRST + OP_W * ct_pc[c] + 1]
                        how = prog[aid, P_FIRST + OP_W * ct_pc[c] + 2]
                    if _in_call(prog, aid, ct_pc[c], z, how):
                        sub[m] = ct_rows[c]
                        zones[m] = np.uint64(z)
                        m += 1
                cst[:] = 0
                ct_kernel(data, sub[:m], l3, l4, keys, error, zones[:m], kv, mem, memi, memf,
                          now, ct_flags | how, tmo, work[:m], mark, count, cst, good)
                ct_stats += cst
                r = 0
                for c in range(n_ct):
                    aid = ct_aid[c]
                    if not _in_call(prog, aid, ct_pc[c], z, how):
                        continue
                    at = P_FIRST + OP_W * ct_pc[c]
                    g = ct_rows[c]
                    if work[r, W_ELIG]:
                        run_row[n_run] = g
                        run_aid[n_run] = aid
                        run_pc[n_run] = ct_pc[c] + 1
                        n_run += 1
                    else:
                        hand[g, 0] = H_ACTIONS
                        hand[g, 1] = depth
                        hand[g, 2] = aid
                        hand[g, 3] = prog[aid, at + 3]
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
    # Every row of the batch output once, in order (the common burst): the batch can go
    # out as it is.
    same = n_out == rows.shape[0] and n_out == start.shape[0]
    for k in range(n_out):
        if not same:
            break
        same = outs[k, 0] == k and outs[k, 1] == outs[0, 1] and outs[k, 2] == outs[0, 2]
    stats[2] = 1 if same else 0
    stats[3] = np.int64(sink & np.uint64(0xFF))
    # The one place of a whole batch, read back with the counters (no numpy scalars).
    stats[4] = outs[0, 1] if same and n_out else -1
    stats[5] = outs[0, 2] if same and n_out else -1
    # The port every row came in by (the tunnel port of a decapsulated batch, mostly one),
    # -1 when they differ.
    one = np.int64(in_port[rows[0]]) if rows.shape[0] else -1
    for a in range(rows.shape[0]):
        if np.int64(in_port[rows[a]]) != one:
            one = -1
            break
    stats[6] = one
    # A whole batch's bytes, and its outer frames' (the ports it leaves by count them).
    nb = np.int64(0)
    ne = np.int64(0)
    if same:
        for a in range(n_out):
            nb += length[a]
            if outs[a, 2] >= 0:
                ne += enc_cols[0, a]
    stats[7] = nb
    stats[8] = ne
    return n_hand


class ExpressLane:
    """The datapath flows' action lists as programs the lane runs, and its calls.

    A program is one row of steps: outputs, a VXLAN/IPv4 push to a resolved destination,
    Ethernet address and TTL sets, ct (commit and NAT included, without mark, label or
    force), a final recirculation; nothing at all is a drop.  Any other action list is
    K_NONE and its packets are handed to the general path before they are counted.  Tunnel programs hold an outer-header template,
    so they are rebuilt when the underlay or the tunnel ports change."""

    def __init__(self, dpif) -> None:
        self.dpif = dpif
        self.prog = np.zeros((64, PROG_W), np.int64)
        self.built = 0                  # action ids with a program
        self.tmpl = np.zeros((8, TMPL_W), np.uint8)
        self.tprm = np.zeros((8, 8), np.int64)
        self.n_tmpl = 0
        self._version = self._generation = -1
        # ct's (conntrack_kernel.S_*), then the lane's: outputs, rows the cache took,
        # whole batch out, a byte of what its touch loops read (so they are kept), and
        # the port and tunnel port of a whole batch, the in_port every row shares, its
        # bytes and its outer frames'.
        self._stats = np.zeros(12, np.int64)
        # A batch's keys, offsets, hand-back and output records, in buffers kept across
        # batches (see _buffers): allocating and zeroing them cost more than the lane's
        # work on a small batch (a key column is 736 bytes).
        self._cap = 0
        self._by_n: dict[int, tuple] = {}          # views of the buffers, per batch size
        self._grow(256)
        self._all_n = self._n = 0
        self.held = False
        # conntrack's timeouts are fixed when it is made.
        self._tmo = dpif.conntrack.tmo[CT_TIMEOUTS].astype(np.float64)
        # The long-lived arrays as one struct (lanestate), rebuilt when one is replaced:
        # ours when we replace them, the caches' and conntrack's when they are not the
        # ones it holds.
        self._state = None
        self._ext: tuple = ()
        self._plan = _NO_PLAN
        # The buffers _enc and _inner made last, and the sizes they were made for.
        self._last_enc: tuple = (None, None, -1, -1)
        self._last_inner: tuple = (None, None, None, -1)

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
            self._state = None
        for aid in range(self.built, n):
            self.prog[aid] = self._program(d.action_list(aid))
        self.built = n

    def _program(self, acts: tuple) -> np.ndarray:
        row = np.zeros(PROG_W, np.int64)
        ops = []
        # Outputs leave with the row's final bytes: no edit may follow them, not even in a
        # later pass.
        out = False
        for i, a in enumerate(acts):
            if isinstance(a, odp.Output) and a.port != F.OFPP_CONTROLLER:
                ops.append((OP_OUTPUT, a.port, 0, i))
                out = True
            elif isinstance(a, odp.TunnelPush) and not any(op[0] == OP_TUNNEL for op in ops):
                # One outer frame per row (enc[g]): a second push goes to the general path.
                t = self._template(a)
                if t is None:
                    return row
                ops.append((OP_TUNNEL, t, a.ofport, i))
                out = True
            elif isinstance(a, odp.Ct) and not out and a.mark is None and a.label is None \
                    and not a.force:
                # commit adds nothing for an established connection; the others go up.
                ops.append((OP_CT, a.zone, (F_NAT if a.nat is not None else 0)
                            | (F_COMMIT if a.commit else 0), i))
                row[P_CT] = 1
            elif isinstance(a, odp.Recirc) and i == len(acts) - 1 and not out:
                ops.append((OP_RECIRC, a.recirc_id, 0, i))
                row[P_RECIRC] = 1
            elif isinstance(a, odp.SetFields) and not out and _SETS.get(
                    (a.header, tuple(n for n, _ in a.fields))) is not None:
                ops.extend((op, v, 0, i) for op, (_, v) in zip(
                    _SETS[a.header, tuple(n for n, _ in a.fields)], a.fields))
            else:
                return row
        if len(ops) > MAX_OPS:
            return row
        row[P_KIND], row[P_OPS] = K_RUN, len(ops)
        for k, op in enumerate(ops):
            row[P_FIRST + OP_W * k:P_FIRST + OP_W * (k + 1)] = op
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
            self._state = None
        self.tmpl[t, :tmpl.size] = tmpl
        self.tprm[t, :7] = prm
        self.tprm[t, 7] = out_port
        self.n_tmpl += 1
        return t

    def run(self, batch: Batch, parsed: Parsed | None, rows: np.ndarray | None, now: float,
            max_recirc: int, tun: np.ndarray = None) -> LaneResult:
        """The lane over `rows` of a parsed batch, or (parsed None) over a whole batch it
        parses itself, handing rows it cannot parse back as H_PARSE; tun: per row of a
        batch just decapsulated, decap_kernel's result (tunnel fields for its keys).
        The result lives in the lane's buffers until release(); a run before then (the
        general path calling back into the lane) gets buffers of its own."""
        n = len(batch)
        parsed_n, rows_n, outs, hand, keys, _ = self._acquire(n)
        fresh = parsed is None
        if fresh:
            parsed, rows = parsed_n, rows_n
        elif not parsed.keys.flags.c_contiguous:
            keys = np.ascontiguousarray(parsed.keys)
        else:
            keys = parsed.keys
        enc, enc_cols = self._enc(n, batch.data.shape[1])[:2]
        # Every argument's type is fixed here (_as, the lane's own arrays): the compiled
        # entry of lane_kernel's one signature takes them without the dispatcher working
        # out each one's type (for the state struct a Python-level lookup, ~2 us).
        l3, l4, error = parsed.l3, parsed.l4, parsed.error
        if not fresh:       # the numpy parser's: its types are not the lane's own
            l3, l4, error, rows = _as(l3, _I32), _as(l4, _I32), _as(error, _U8), _as(rows, _I64)
        data, start, length, in_port = batch.data, batch.start, batch.length, batch.in_port
        if (start.dtype, length.dtype, in_port.dtype, data.dtype) != _COLUMNS:
            data, start = _as(data, _U8), _as(start, _I32)
            length, in_port = _as(length, _I32), _as(in_port, _U32)
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        n_hand = _LANE(self._current(None), data, start, length, in_port, start, length,
                       keys, l3, l4, error, fresh, rows, _NO_TUN if tun is None else tun,
                       False, float(now), *self._ct_args(), enc, enc_cols, outs, hand,
                       max_recirc)
        if keys is not parsed.keys and not fresh:
            parsed.keys[...] = keys         # the lane's key writes (recirc_id, ct_*) back
        if data is not batch.data:
            batch.data[...] = data          # and its frame writes (set_field, TTL)
        return self._result(parsed, rows, outs, hand, n_hand, enc, enc_cols)

    def run_decap(self, batch: Batch, plan: tuple, now: float, max_recirc: int):
        """A batch of underlay frames decapsulated and its inner frames through the lane,
        in one compiled call, when every frame is a tunnel packet for one of our tunnel
        ports (plan: tunnel_fast.decap_plan's).  Returns (res, inner, result): result the
        lane's, as run()'s, over `inner`, the inner frames where they lie in the batch's
        rows; result None: not every frame was (res: decap_kernel's verdicts); res None
        too: some frame is the numpy decap's.  The lane must not be held; it is released
        when there is no result."""
        data, ostart, olength = batch.data, batch.start, batch.length
        n = len(olength)
        parsed, rows, outs, hand, keys, res = self._acquire(n)
        enc, enc_cols = self._enc(n, data.shape[1])[:2]
        start, length, in_port = self._inner(n)[:3]
        if data.dtype != _U8 or not data.flags.c_contiguous:
            data = np.ascontiguousarray(data, _U8)
        if ostart.dtype != _I32 or olength.dtype != _I32:
            ostart, olength = ostart.astype(_I32), olength.astype(_I32)
        # The inner frames' columns are the lane's buffers, which it writes: the caller's
        # batch stays as it came.
        n_hand = _LANE(self._current(plan), data, start, length, in_port, ostart, olength,
                       keys, parsed.l3, parsed.l4, parsed.error, True, rows, res, True,
                       float(now), *self._ct_args(), enc, enc_cols, outs, hand, max_recirc)
        if n_hand < 0:
            self.release()
            return (None if n_hand == -2 else res), None, None
        return res, Batch(data, start, length, in_port), self._result(
            parsed, rows, outs, hand, n_hand, enc, enc_cols)

    def _acquire(self, n: int) -> tuple:
        """(parsed, rows, outs, hand, keys, decap) for a run over n rows: the lane's own
        buffers, held until release(), or (the lane already held) new ones; keys is the
        whole key buffer whose first n columns parsed.keys views (C-contiguous: the lane's
        compiled code indexes it without reading strides, and resets its slots as plain
        memory); decap: decap_kernel's result (run_decap's)."""
        d = self.dpif
        if d.config_version != self._version or d.underlay.generation != self._generation \
                or len(d.action_lists()) != self.built:
            self._refresh()
        if self.held:
            return _views(_buffers(n), n)
        self.held = True
        if self._all_n:
            self._clean()
        if n > self._cap:
            self._grow(n)
        v = self._by_n.get(n)
        if v is None:
            v = self._by_n[n] = _views(self._bufs, n)
        self._n = n
        return v

    def _ct_args(self) -> tuple[bool, int]:
        """lane_kernel's ct_ok (the compiled conntrack may run: its table has not
        overflowed into Python) and ct_flags."""
        ct = self.dpif.conntrack
        return (ct.compiled and not ct.table.overflow,
                (F_CHECKSUMS if ct.checksums else 0) | (F_LIBERAL if ct.tcp_liberal else 0))

    def _arrays(self) -> tuple:
        """The caches' and conntrack's arrays the lane reads and writes."""
        d = self.dpif
        smc, c, tab = d.smc, d.cache, d.conntrack.table
        return (smc.table, smc.matches, c.action_of, c.packets, c.bytes, c.used, c.tcp_flags,
                tab.index.kv, tab.mem, tab.scratch(np.int8), tab.scratch(np.int64), smc.masks)

    def _current(self, plan: tuple | None):
        """The lane state, rebuilt if one of its arrays was replaced (plan: the decap plan
        the call needs; None: any).  Checked array by array, in _arrays' order: building
        that tuple to compare cost a third of a microsecond a batch more.  Conntrack's
        scratch arrays are not asked for again: they are only ever replaced by larger ones
        for a larger table (a new mem), and any array of the table's size will do."""
        d = self.dpif
        smc, c, tab = d.smc, d.cache, d.conntrack.table
        e = self._ext
        if self._state is None or (plan is not None and plan is not self._plan) or not (
                smc.table is e[0] and smc.matches is e[1] and c.action_of is e[2]
                and c.packets is e[3] and c.bytes is e[4] and c.used is e[5]
                and c.tcp_flags is e[6] and tab.index.kv is e[7] and tab.mem is e[8]
                and smc.masks is e[11]):
            self._new_state(self._arrays(), plan or self._plan)
        return self._state

    def _result(self, parsed, rows, outs, hand, n_hand: int, enc, enc_cols) -> LaneResult:
        v = self._stats.tolist()        # one conversion, not a numpy scalar per counter
        d = self.dpif
        smc = d.smc
        smc.lookups += v[4]
        smc.hits += v[4]
        if v[0]:
            count_express(d.conntrack.stats, v)
        # Made as a tuple (a NamedTuple's own constructor costs three times as much).
        return _new_tuple(LaneResult, (parsed, rows, outs[:v[3]], v[5] == 1, hand, n_hand,
                                       enc, enc_cols, v[7], v[8], v[9], v[10], v[11]))

    def _new_state(self, ext: tuple, plan: tuple) -> None:
        self._state = new_state(ext[:7] + (self.prog, self.tmpl, self.tprm) + ext[7:9] + (
            self._tmo, ext[9], ext[10], self._stats, _LANE_SLOTS) + plan + ext[11:])
        self._ext, self._plan = ext, plan

    def release(self) -> None:
        """The caller is done with the last run's result: its buffers may be reused."""
        self.held = False

    def _grow(self, n: int) -> None:
        self._cap = max(n, 2 * self._cap)
        self._bufs = _buffers(self._cap)
        self._by_n.clear()
        self._all_n = 0

    def _clean(self) -> None:
        """What the numpy parser wrote into the buffers beyond the lane's own slots (the
        lane resets l3, l4, error and its key slots itself, batch by batch)."""
        a = self._all_n
        keys, off = self._bufs[0], self._bufs[1]
        keys[:, :a] = 0
        off[0, :a] = -1
        self._all_n = 0

    def dirty(self) -> None:
        """The general path wrote whole key columns of the current batch."""
        self._all_n = max(self._all_n, self._n)

    def _enc(self, n: int, width: int) -> tuple:
        """The outer frames' rows, and their lengths and starts (one array, the columns of
        their batch), for a run over n rows of `width` columns (then n and width).  encap
        writes a row's inner frame behind HEADROOM + header and the header before it: the
        rest of the row is never read back, so it need not be zero; nor the columns of a
        row with no outer frame."""
        if not self.n_tmpl:
            return _NO_ENC, _NO_COLS, n, width
        last = self._last_enc
        if last[2] != n or last[3] != width or _held(last):
            w = (HEADROOM + TMPL_W + width + TAILROOM + 7) & ~7
            last = self._last_enc = (np.empty((n, w), np.uint8), np.empty((2, n), np.int32),
                                     n, width)
        return last

    def _inner(self, n: int) -> tuple:
        """The columns of n inner frames a run_decap makes: their starts, lengths and
        in_port (then n)."""
        last = self._last_inner
        if last[3] != n or _held(last) or sys.getrefcount(last[2]) != _ALONE:
            last = self._last_inner = (np.empty(n, np.int32), np.empty(n, np.int32),
                                       np.empty(n, np.uint32), n)
        return last


def _held(last: tuple) -> bool:
    """Whether anything but the lane holds one of the first two arrays of `last` (buffers
    of the batch a run made last, kept to be reused): a port that keeps what it sent, a
    caller keeping process()'s output, a view of either.  Their only reference is
    otherwise the tuple's."""
    return sys.getrefcount(last[0]) != _ALONE or sys.getrefcount(last[1]) != _ALONE


def _alone() -> int:
    """What getrefcount says, counted as _held counts, of an array only its tuple holds:
    2 on CPython 3.11 (the tuple's and getrefcount's argument); later versions may count
    the argument differently (3.14 borrows stack references), so it is asked, not assumed."""
    last = (np.empty(0),)
    return sys.getrefcount(last[0])


_ALONE = _alone()


class LaneResult(NamedTuple):
    parsed: Parsed          # the batch's keys as the lane left them (recirc_id, ct_* set)
    rows: np.ndarray
    outs: np.ndarray        # (row, port, tunnel ofport or -1) per output
    whole: bool             # every row of the batch output once, in order, to one place
    hand: np.ndarray        # per row: (H_*, pass, action id, first action still to run)
    n_hand: int
    enc: np.ndarray         # outer frames of tunnelled rows
    enc_cols: np.ndarray    # their lengths (row 0) and starts (row 1)
    port: int               # whole: the port every row went out of
    tnl: int                # ... and its tunnel port (-1: a plain output)
    in_port: int            # the in_port every row shares (-1: they differ)
    nbytes: int             # whole: the batch's bytes
    enc_nbytes: int         # ... and its outer frames' (tnl >= 0)


# SetFields the lane writes itself: (header, field names) -> one step per field.
_SETS = {("eth", ("eth_dst",)): (OP_ETH_DST,), ("eth", ("eth_src",)): (OP_ETH_SRC,),
         ("eth", ("eth_dst", "eth_src")): (OP_ETH_DST, OP_ETH_SRC),
         ("ipv4", ("ip_ttl",)): (OP_TTL4,), ("ipv6", ("ip_ttl",)): (OP_TTL6,)}
_NO_ENC = np.zeros((0, 0), np.uint8)
_NO_TUN = np.zeros((0, tunnel_fast.D_COLS), np.int64)
_NO_COLS = np.zeros((2, 0), np.int32)
_I32, _U32, _I64, _U8 = (np.dtype(t) for t in (np.int32, np.uint32, np.int64, np.uint8))
_COLUMNS = (_I32, _I32, _U32, _U8)      # a batch's start, length, in_port and data
_LANE = entry_point(lane_kernel)
_new_tuple = tuple.__new__
# decap_kernel's plan with no tunnel ports (tunnel_fast.decap_plan's shapes).
_NO_PLAN = (np.zeros(0, np.uint64), np.zeros((0, 2), np.uint64), np.zeros(0, np.int64),
            np.zeros(0, np.int64), np.zeros((0, 8), np.int64))


def _as(a: np.ndarray, dt: np.dtype) -> np.ndarray:
    """a in dtype dt; the array itself when it already is (the common case, and cheaper to
    see than astype(copy=False) is to call)."""
    return a if a.dtype == dt else a.astype(dt)


def _buffers(cap: int) -> tuple:
    """A run's buffers for up to cap rows: keys, offsets (l2_5, l3, l4), errors, row
    numbers, output records, hand-back, decap's result."""
    return (np.zeros((F.N_SLOTS, cap), np.uint64), np.full((3, cap), -1, np.int32),
            np.zeros(cap, np.uint8), np.arange(cap, dtype=np.int64),
            np.empty((cap * MAX_OPS, 3), np.int64), np.zeros((cap, 4), np.int64),
            np.zeros((cap, D_COLS), np.int64))


def _views(bufs: tuple, n: int) -> tuple:
    """(parsed, rows, outs, hand, keys, decap) of a batch of n rows in _buffers' buffers."""
    keys, off, err, rows, outs, hand, tun = bufs
    return (Parsed(keys[:, :n], off[0, :n], off[1, :n], off[2, :n], err[:n]), rows[:n],
            outs[:n * MAX_OPS], hand[:n], keys, tun[:n])


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

