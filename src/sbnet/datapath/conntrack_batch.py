"""Conntrack's vectorized batch path: lookups, steady updates and bulk commits for a whole batch at once."""

from __future__ import annotations

import numpy as np

from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.conntrack_nat import SNAT, first_candidates
from sbnet.datapath.conntrack_kernel import lookup_rows
from sbnet.datapath.conntrack_pkt import CtBatch
from sbnet.datapath.conntrack_tcp_kernel import update_many_compiled
from sbnet.datapath.conntrack_table import (
    _W, C_EXP, C_L4ST, C_NAT, C_PROTO, C_TCP, C_TUP, C_V6, C_ZONE, DNAT_BIT, EST, ICMP_REPLY,
    INV, MAX_TCP_ROUNDS, NEW, OTHER_BIDIR, RPL, SNAT_BIT, TM_ICMP_FIRST, TM_ICMP_REPLY,
    TM_OTHER_BIDIR, TM_OTHER_FIRST, meta_words, tuple_hashes)
from sbnet.flows.fields import IP_ICMP, IP_ICMPV6, IP_TCP

_NONE = np.zeros(0, dtype=np.intp)


def lookup(ct, b: CtBatch) -> None:
    """Find the connection of every keyed row (not related, not NATed before) and
    gather its table row into b.R (the zero row when none)."""
    tab = ct.table
    p, m, now = b.p, b.rows.size, b.now
    look = p.ok & ~p.related & ~b.natted
    if ct.compiled:
        mem = tab.mem
        b.R = np.zeros((m, _W), dtype=np.uint64)
        ct.stats["lookups_hit"] += lookup_rows(
            tab.index.kv, mem, mem.view(np.float64), p.hash, p.words, look, float(now), b.R,
            b.found, b.conn, b.reply)
        return
    same = None
    if look.all():
        li = np.arange(m)
        vals = tab.index.get_many(p.hash)
    else:
        li = np.flatnonzero(look)
        vals = tab.index.get_many(p.hash[li])
    hit = vals >= 0
    ci = np.where(hit, vals >> 1, tab.cap)
    di = (vals & 1).astype(np.intp)
    rl = tab.mem[ci]
    if li.size:
        tw = rl[:, C_TUP:C_TUP + 12].reshape(-1, 2, 6)[np.arange(ci.size), di]
        same = hit & (tw == p.words[li]).all(axis=1) & (rl[:, C_EXP].view(np.float64) > now)
        if not same.all():
            rl[~same] = 0
            li, ci, di = li[same], ci[same], di[same]
    if li.size == m:
        R = rl
    else:
        R = np.zeros((m, _W), dtype=np.uint64)
        R[li] = rl[same] if li.size != rl.shape[0] else rl
    b.R = R
    b.found[li] = True
    b.conn[li] = ci
    b.reply[li] = di.astype(bool)
    ct.stats["lookups_hit"] += li.size


def eligible(ct, b: CtBatch) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose whole update is vectorizable, and which TCP rows take the
    general vectorized update (one row of their connection in the batch)."""
    found, conn, R, p = b.found, b.conn, b.R, b.p
    fast = found.copy()
    general = np.zeros(found.size, dtype=bool)
    if not fast.any():
        return fast, general
    fi = np.flatnonzero(fast)
    c = conn[fi]
    proto = p.proto[fi]
    l4st = R[fi, C_L4ST]
    tcp = proto == IP_TCP
    icmp = (proto == IP_ICMP) | (proto == IP_ICMPV6)
    ok = np.where(icmp, l4st == ICMP_REPLY, l4st == OTHER_BIDIR)
    if tcp.any():
        ri = R.view(np.int64)
        fl = p.flags[fi]
        s0, s1 = ri[fi, C_TCP + 4], ri[fi, C_TCP + 9]
        simple = ((s0 == T.ESTABLISHED) & (s1 == T.ESTABLISHED)
                  & ((fl & (T.SYN | T.FIN | T.RST)) == 0) & ((fl & T.ACK) != 0))
        # A SYN on a connection closed both ways replaces it: per-packet path.
        renew = ((fl & (T.SYN | T.ACK)) == T.SYN) & (s0 >= T.FIN_WAIT_2) \
            & (s1 >= T.FIN_WAIT_2)
        gen = tcp & ~simple & ~renew & ct.table.unique(c)
        ok = np.where(tcp, simple | gen, ok)
        general[fi[gen]] = True
    if b.force:
        ok &= ~b.reply[fi]
    if not ok.all():
        fast[fi[~ok]] = False
        # A connection with any row on the slow path keeps all its rows there, in order.
        bad = np.isin(c, c[~ok])
        fast[fi[bad]] = False
        general &= fast
    return fast, general


def steady(ct, b: CtBatch, fast: np.ndarray, general: np.ndarray) -> np.ndarray:
    """Update the connections of the rows `fast` (a mask; rows the TCP passes hand
    back to the per-packet path are cleared in it); the rows to translate."""
    p, now, st = b.p, b.now, b.st
    fi = np.flatnonzero(fast)
    c = b.conn[fi]
    rp = b.reply[fi]
    proto = p.proto[fi]
    res = np.full(fi.size, T.VALID, dtype=np.int64)
    tcp = proto == IP_TCP
    gen = general[fi]
    simple = tcp & ~gen
    if simple.any():
        t = np.flatnonzero(simple)
        res[t] = established_rows(ct, p, fi[t], c[t], rp[t], now, fast)
    if gen.any():
        res[gen] = _general_tcp(ct, p, fi[gen], c[gen], rp[gen], now)
    if not tcp.all():
        oth = np.flatnonzero(~tcp)
        co = c[oth]
        icmp = (proto[oth] == IP_ICMP) | (proto[oth] == IP_ICMPV6)
        ct.table.exp[co] = now + ct.tmo[np.where(icmp, TM_ICMP_REPLY, TM_OTHER_BIDIR)]
    # Rows the passes left to the per-packet path are no longer fast.
    keep = fast[fi]
    if not keep.all():
        fi, c, rp, res = fi[keep], c[keep], rp[keep], res[keep]
    s = st[fi]
    est = (s | EST | np.where(rp, RPL, 0).astype(np.uint64)) & ~np.uint64(NEW)
    st[fi] = np.where(res == T.VALID, est,
                      np.where(res == T.INVALID, INV, s | NEW)).astype(np.uint64)
    b.tsrc[fi] = 1
    ct.stats["fast_path"] += fi.size
    if b.nat is None:
        return _NONE
    # OVS translates whatever the update said, invalid packets included.
    natc = b.R[fi, C_NAT]
    j = (natc != 0) & ~b.natted[fi]
    jobs = fi[j]
    snat = (natc[j] & SNAT) != 0
    st[jobs] |= np.where(snat != rp[j], SNAT_BIT, DNAT_BIT).astype(np.uint64)
    return jobs


def _general_tcp(ct, p, rows, c, rp, now) -> np.ndarray:
    """Any TCP segment of a connection with no other row in the batch (T.update_many)."""
    tab = ct.table
    fl = p.flags[rows]
    ws = np.where(fl & T.SYN, p.wscales(rows), 0)
    update = update_many_compiled if ct.compiled else T.update_many
    res, tm = update(tab.tcp, c, rp, fl, p.seq[rows], p.ack[rows], p.win[rows], p.plen[rows], ws,
                     ct.tcp_liberal)
    upd = tm >= 0
    tab.exp[c[upd]] = now + ct.tmo[tm[upd]]
    bad = res == T.INVALID
    if bad.any():
        flags_bad = T.invalid_flags_many(fl)
        ct.stats["tcp_invalid_flags"] += int((bad & flags_bad).sum())
        ct.stats["tcp_seq_chk_failed"] += int((bad & ~flags_bad).sum())
    return res


def established_rows(ct, seg, rows, c, rp, now, fast) -> np.ndarray:
    """Established ACK segments seg[rows] of connections c, any number per connection
    (T.established_runs); VALID/INVALID per row.  `seg` has seq, ack, win and plen
    arrays (a PacketInfo or T.Segments).

    Each pass settles every connection's rows up to its first invalid one;
    rows still open after MAX_TCP_ROUNDS passes are taken off `fast` and
    left to the per-packet path, which runs after, in order.
    """
    tab, stats, liberal = ct.table, ct.stats, ct.tcp_liberal
    valid = np.ones(rows.size, dtype=bool)
    est = ct.tmo[T.TM_TCP_EST]
    once = tab.unique(c)
    if not once.all():
        # Connections with one row here skip the prefix maxima (disjoint, so
        # the two groups can run in either order).
        o = np.flatnonzero(once)
        if o.size:
            r = rows[o]
            ok, _ = T.established_runs(tab.tcp, c[o], rp[o], _segments(seg, r), liberal, True)
            valid[o] = ok
            tab.exp[c[o[ok]]] = now + est
            stats["tcp_seq_chk_failed"] += int(o.size - np.count_nonzero(ok))
        left = np.flatnonzero(~once)
    else:
        left = np.arange(rows.size)
    unique = bool(once.all())
    for _ in range(MAX_TCP_ROUNDS):
        r = rows[left]
        cl = c[left]
        ok, done = T.established_runs(tab.tcp, cl, rp[left], _segments(seg, r), liberal, unique)
        valid[left] = ok
        settled = ok & done
        tab.exp[cl if settled.all() else cl[settled]] = now + est
        stats["tcp_seq_chk_failed"] += int(np.count_nonzero(~ok & done))
        if done.all():
            break
        left = left[~done]
    else:
        fast[rows[left]] = False
    return np.where(valid, T.VALID, T.INVALID)


def _segments(seg, r) -> T.Segments:
    return T.Segments(seg.seq[r], seg.ack[r], seg.win[r], seg.plen[r])


def _may_start(proto: np.ndarray, fl: np.ndarray, w4: np.ndarray) -> np.ndarray:
    """Rows that may start a connection (conn_not_found's valid_new): a TCP segment
    with sane flags that is not a SYN+ACK, an ICMP query, any other protocol."""
    bad_fl = T.invalid_flags_many(fl) | ((fl & (T.SYN | T.ACK)) == (T.SYN | T.ACK))
    icmp = (proto == IP_ICMP) | (proto == IP_ICMPV6)
    if not icmp.any():      # a batch of handshakes: no ICMP types to look up
        return np.where(proto == IP_TCP, ~bad_fl, True)
    typ = (w4 & np.uint64(0xFF)).astype(np.int64)
    icmp_ok = np.where(proto == IP_ICMP, np.isin(typ, (8, 13, 15)), typ == 128)
    return np.where(proto == IP_TCP, ~bad_fl, np.where(icmp, icmp_ok, True))


def uncommitted_new(ct, b: CtBatch, slow: np.ndarray) -> np.ndarray:
    """ct() without commit on rows `slow` whose tuple no connection owns (their hash in
    no slot, so the per-packet lookup could neither find nor expire one): +new, or +inv
    when they could not start a connection, all at once, as conn_not_found() does for
    each when it may not commit.  Returns the rows left for the per-packet path."""
    p = b.p
    if ct.table.overflow:
        return slow
    ci = np.flatnonzero(~b.found[slow] & ~p.related[slow] & ~b.natted[slow])
    if not ci.size:
        return slow
    ci = ci[ct.table.index.get_many(p.hash[slow[ci]]) < 0]
    if not ci.size:
        return slow
    rows = slow[ci]
    ok = _may_start(p.proto[rows], p.flags[rows], p.words[rows, 4])
    b.st[rows] = np.where(ok, np.uint64(NEW), np.uint64(INV))
    b.conn[rows] = -1
    b.reply[rows] = False
    b.tsrc[rows] = 2
    if ci.size == slow.size:
        return _NONE
    keep = np.ones(slow.size, dtype=bool)
    keep[ci] = False
    return slow[keep]


def bulk_new(ct, b: CtBatch, slow: np.ndarray) -> np.ndarray:
    """Commit, vectorized, the new connections among rows `slow` whose tuples
    (original and reply) no other packet of the batch touches, so order cannot
    matter; with NAT (IPv4), those whose first-choice reply tuple is free.  Only
    when the limits leave room for all of them.  Returns the rows left for the
    per-packet path; adds the rows to translate to b.jobs."""
    p, nat, tab = b.p, b.nat, ct.table
    act = nat.action if nat is not None else 0
    cand = ~b.found[slow] & ~p.related[slow] & ~b.natted[slow]
    if act:
        cand &= ~p.v6[slow]
    if not cand.any():
        return slow
    w = p.words[slow]
    proto = p.proto[slow]
    icmp = (proto == IP_ICMP) | (proto == IP_ICMPV6)
    cand &= _may_start(proto, p.flags[slow], w[:, 4])
    meta = meta_words(p.zone[slow], proto, p.v6[slow])
    h = tuple_hashes(meta, w[:, 0], w[:, 1], w[:, 2], w[:, 3], w[:, 4], w[:, 5])
    if act:
        rw = first_candidates(nat, ct.hash_basis, p.zone[slow], proto, w)
    else:
        rw = w[:, [2, 3, 0, 1, 5, 4]]
    rh = tuple_hashes(meta, rw[:, 0], rw[:, 1], rw[:, 2], rw[:, 3], rw[:, 4], rw[:, 5])
    ci = np.flatnonzero(cand)
    allh = np.concatenate([h, rh[ci]])
    _, inv, cnt = np.unique(allh, return_inverse=True, return_counts=True)
    once = cnt[inv] == 1
    cand[ci] &= once[:slow.size][ci] & once[slow.size:]
    ci = np.flatnonzero(cand)
    if not ci.size:
        return slow
    absent = (tab.index.get_many(h[ci]) < 0) & (tab.index.get_many(rh[ci]) < 0)
    ci = ci[absent]
    k = ci.size
    if not k:
        return slow
    zones = p.zone[slow[ci]].astype(np.int64)
    zu, zc = np.unique(zones, return_counts=True)
    if tab.n + k > ct.limit or any(
            ct.zone_limit(int(z)) and tab.zone_count.get(int(z), 0) + int(n) >
            ct.zone_limit(int(z)) for z, n in zip(zu, zc)):
        return slow
    rows = slow[ci]
    blk = np.zeros((k, _W), dtype=np.uint64)
    blk[:, C_TUP:C_TUP + 6] = w[ci]
    blk[:, C_TUP + 6:C_TUP + 12] = rw[ci]
    blk[:, C_NAT] = act
    blk[:, C_ZONE] = zones
    pk = proto[ci]
    blk[:, C_PROTO] = pk
    blk[:, C_V6] = p.v6[rows]
    cls = np.where(pk == IP_TCP, T.TM_TCP_FIRST,
                   np.where(icmp[ci], TM_ICMP_FIRST, TM_OTHER_FIRST))
    blk.view(np.float64)[:, C_EXP] = b.now + ct.tmo[cls]
    t = np.flatnonzero(pk == IP_TCP)
    if t.size:
        r = rows[t]
        blk.view(np.int64)[t, C_TCP:C_TCP + 10] = T.new_peers_many(
            p.flags[r], p.seq[r], p.win[r], p.plen[r],
            p.wscales(r)).reshape(-1, 10)
    slots = tab.create_many(blk, h[ci], rh[ci], zu, zc)
    b.st[rows] = NEW | (SNAT_BIT if act == SNAT else DNAT_BIT if act else 0)
    b.conn[rows] = slots
    b.reply[rows] = False
    b.tsrc[rows] = 1
    if act:
        b.jobs.append(rows)
    keep = np.ones(slow.size, dtype=bool)
    keep[ci] = False
    return slow[keep]
