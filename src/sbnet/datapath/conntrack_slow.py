"""Conntrack's per-packet path, as OVS process_one(): lookups, conn_update, conn_not_found, related NAT."""

from __future__ import annotations

import numpy as np

from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.conntrack_nat import SNAT, allocate, rewrite_related
from sbnet.datapath.conntrack_pkt import CtBatch
from sbnet.datapath.conntrack_table import (
    _M64, _NAT_BITS, _S, _ICMP_NEW_TYPES, DNAT_BIT, EST, ICMP_FIRST, ICMP_REPLY, INV, NEW,
    OTHER_BIDIR, OTHER_MULTIPLE, REL, RPL, SNAT_BIT, TM_ICMP_FIRST, TM_OTHER_FIRST, _reverse)
from sbnet.flows.fields import IP_ICMP, IP_ICMPV6, IP_TCP, IP_UDP


def per_packet(ct, b: CtBatch, slow: np.ndarray) -> None:
    """Run the rows `slow` one by one, in batch order, through ct (the Conntrack
    engine): lookups, state updates, new connections, ICMP errors, NAT set-up;
    adds the rows to translate to b.jobs."""
    tab, stats, p = ct.table, ct.stats, b.p
    st, conn, reply, natted = b.st, b.conn, b.reply, b.natted
    now, force = b.now, b.force
    jobs = []
    info = p.rows_info(slow)
    nat_in = b.nat is not None
    for k, i in enumerate(slow.tolist()):
        t, related, flags = info[k]
        s = int(st[i])
        c, rp = _lookup_pkt(tab, t, bool(natted[i]), now)
        if c >= 0 and force and rp:
            tab.delete(c)
            c = -1
        create = False
        if c >= 0:
            if related:
                s |= REL | (RPL if rp else 0)
                stats["related"] += 1
            else:
                res = _update(ct, c, rp, p, i, flags, now)
                if res == T.VALID:
                    s = (s | EST | (RPL if rp else 0)) & ~NEW
                elif res == T.INVALID:
                    s = INV
                elif res == T.NEW:
                    tab.delete(c)
                    c = -1
                    create = True
                else:
                    s |= NEW
            if c >= 0 and nat_in and tab.nat[c] and not s & _NAT_BITS:
                s |= _nat_bits(tab, c, rp)
                if related:
                    _nat_related(tab, b, int(b.rows[i]), c, rp)
                else:
                    jobs.append(i)
        elif related:
            s = INV
        else:
            create = True
        if create:
            s, c = _not_found(ct, b, t, i, flags)
            rp = False
            if c >= 0 and tab.nat[c]:
                jobs.append(i)
        st[i] = s
        conn[i] = c
        reply[i] = rp
        b.tsrc[i] = 1 if c >= 0 else 2
    b.jobs.append(np.array(jobs, dtype=np.intp))


def _lookup_pkt(tab, t: tuple, natted: bool, now: float) -> tuple[int, bool]:
    if natted:
        # Already translated by an earlier ct in this zone: find it by the reverse.
        c, d = tab.lookup(_reverse(t), now)
        if c >= 0:
            return c, not d
    c, d = tab.lookup(t, now)
    return c, bool(d)


def _nat_bits(tab, c: int, rp: bool) -> int:
    snat = bool(tab.nat[c] & SNAT)
    return SNAT_BIT if snat != rp else DNAT_BIT


def _segment(p, i: int, flags: int) -> T.TcpPacket:
    return T.TcpPacket(flags, int(p.seq[i]), int(p.ack[i]), int(p.win[i]), int(p.plen[i]),
                       p.wscale(i) if flags & T.SYN else 0)


def _update(ct, c: int, rp: bool, p, i: int, flags: int, now: float) -> int:
    """conn_update() of connection c by row i of p; the update result (T.VALID...)."""
    tab = ct.table
    proto = int(tab.proto[c])
    if proto == IP_TCP:
        peers = tab.tcp[c].tolist()
        res, cls = T.update(peers, rp, _segment(p, i, flags), ct.tcp_liberal)
        tab.tcp[c] = peers
        if res == T.INVALID:
            key = "tcp_invalid_flags" if T.invalid_flags(flags) else "tcp_seq_chk_failed"
            ct.stats[key] += 1
        if cls is not None:
            tab.exp[c] = now + ct.tmo[cls]
        return res
    st = int(tab.l4st[c])
    if proto in (IP_ICMP, IP_ICMPV6):
        res = T.VALID
        if rp and st == ICMP_FIRST:
            st = ICMP_REPLY
        elif st == ICMP_FIRST:
            res = T.VALID_NEW
        tab.l4st[c] = st
        tab.exp[c] = now + ct.tmo[TM_ICMP_FIRST + st]
        return res
    res = T.VALID
    if rp and st != OTHER_BIDIR:
        st = OTHER_BIDIR
    elif st != OTHER_BIDIR:
        # OVS 3.1 as observed on its dummy datapath: +new until a reply is seen
        # (conntrack-other.c alone would say +est from the third packet).
        st = OTHER_MULTIPLE
        res = T.VALID_NEW
    tab.l4st[c] = st
    tab.exp[c] = now + ct.tmo[TM_OTHER_FIRST + st]
    return res


def _valid_new(t: tuple, flags: int) -> bool:
    proto = t[1]
    if proto == IP_TCP:
        return T.valid_new(flags)
    if proto in (IP_ICMP, IP_ICMPV6):
        return (t[5] & 0xFF) in _ICMP_NEW_TYPES[proto]
    return True


def _not_found(ct, b: CtBatch, t: tuple, i: int, flags: int) -> tuple[int, int]:
    """conn_not_found() for row i, tuple t: (ct_state, new slot or -1)."""
    tab, nat, now = ct.table, b.nat, b.now
    if not _valid_new(t, flags):
        return INV, -1
    if not b.commit:
        return NEW, -1
    zone = t[0]
    zl = ct.zone_limit(zone)
    if zl and tab.zone_count.get(zone, 0) >= zl:
        ct.stats["zone_full"] += 1
        return NEW, -1
    if tab.n >= ct.limit:
        ct.stats["conntrack_full"] += 1
        return NEW, -1
    act = nat.action if nat is not None else 0
    if act:
        rev = allocate(nat, t, tab.taken, ct.hash_basis)
        if rev is None:
            ct.stats["nat_exhausted"] += 1
            return NEW, -1
    else:
        rev = _reverse(t)
    c = tab.create(t, rev, act)
    proto = t[1]
    if proto == IP_TCP:
        tab.tcp[c] = T.new_peers(_segment(b.p, i, flags))
        tab.exp[c] = now + ct.tmo[T.TM_TCP_FIRST]
    elif proto in (IP_ICMP, IP_ICMPV6):
        tab.exp[c] = now + ct.tmo[TM_ICMP_FIRST]
    else:
        tab.exp[c] = now + ct.tmo[TM_OTHER_FIRST]
    s = NEW
    if act:
        s |= SNAT_BIT if act == SNAT else DNAT_BIT
    return s, c


def _nat_related(tab, b: CtBatch, row: int, c: int, rp: bool) -> None:
    """Translate an ICMP error and the header it quotes (OVS reverse_nat_packet)."""
    batch, parsed = b.batch, b.parsed
    v6 = bool(tab.v6[c])
    orig, rev = tab.tuple(c, 0), tab.tuple(c, 1)
    # The packet's outer addresses become those of the other direction's tuple
    # (reversed); the quoted packet travelled the opposite way.
    want = _reverse(rev) if not rp else _reverse(orig)
    quoted = _reverse(want)
    act = int(tab.nat[c])
    outer_src = outer_dst = None
    if (act == SNAT) != rp:
        outer_src = want[3]
        inner = {"dst": quoted[4], "dport": quoted[6]}
    else:
        outer_dst = want[4]
        inner = {"src": quoted[3], "sport": quoted[5]}
    if quoted[1] not in (IP_TCP, IP_UDP):
        inner.pop("sport", None)
        inner.pop("dport", None)
    s = int(batch.start[row])
    n = int(batch.length[row])
    pkt = bytearray(batch.data[row, s:s + n].tobytes())
    l3 = int(parsed.l3[row]) - s
    rewrite_related(pkt, l3, v6, outer_src, outer_dst, inner)
    batch.data[row, s:s + n] = np.frombuffer(bytes(pkt), dtype=np.uint8)
    keys = parsed.keys
    if v6:
        for name, a in (("src", outer_src), ("dst", outer_dst)):
            if a is not None:
                keys[_S[f"ipv6_{name}_hi"], row] = a >> 64
                keys[_S[f"ipv6_{name}_lo"], row] = a & _M64
    else:
        if outer_src is not None:
            keys[_S["nw_src"], row] = outer_src
        if outer_dst is not None:
            keys[_S["nw_dst"], row] = outer_dst
