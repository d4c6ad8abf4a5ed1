"""Conntrack engine: TCP states and windows, UDP/ICMP pseudo-connections, related errors, zones, limits, expiry."""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP
from scapy.packet import Raw

from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.conntrack import Conntrack, Timeouts
from sbnet.datapath.conntrack_tcp_kernel import update_many_compiled
from tests.datapath.test_conntrack_util import A, B, E, S, Tcp, ct_run, one, udp


def _conn(ct):
    (slot,) = ct.connections()
    return slot


def test_tcp_handshake_data_fin_states():
    ct = Conntrack()
    c = Tcp()
    assert one(ct, c.pkt(0, "S")) == "+new+trk"
    slot = _conn(ct)
    assert ct.tcp_state(slot) == ("SYN_SENT", "CLOSED")
    assert one(ct, c.pkt(1, "SA")) == "+est+rpl+trk"
    assert ct.tcp_state(slot) == ("ESTABLISHED", "SYN_SENT")
    assert one(ct, c.pkt(0, "A")) == "+est+trk"
    assert ct.tcp_state(slot) == ("ESTABLISHED", "ESTABLISHED")
    assert one(ct, c.pkt(0, "PA", b"hello")) == "+est+trk"
    assert one(ct, c.pkt(1, "A")) == "+est+rpl+trk"
    assert ct.dump()[0].endswith("protoinfo=(state=ESTABLISHED)")
    assert one(ct, c.pkt(0, "FA")) == "+est+trk"
    assert ct.tcp_state(slot) == ("CLOSING", "ESTABLISHED")
    assert one(ct, c.pkt(1, "A")) == "+est+rpl+trk"
    assert ct.tcp_state(slot) == ("FIN_WAIT_2", "ESTABLISHED")
    assert one(ct, c.pkt(1, "FA")) == "+est+rpl+trk"
    assert ct.tcp_state(slot) == ("FIN_WAIT_2", "CLOSING")
    assert one(ct, c.pkt(0, "A")) == "+est+trk"
    assert ct.tcp_state(slot) == ("FIN_WAIT_2", "FIN_WAIT_2")
    assert ct.dump()[0].endswith("protoinfo=(state=TIME_WAIT)")
    # Closed both ways: a new SYN on the same tuple replaces the connection.
    c2 = Tcp(isn_a=90000)
    assert one(ct, c2.pkt(0, "S")) == "+new+trk"
    assert ct.tcp_state(_conn(ct)) == ("SYN_SENT", "CLOSED")


def test_tcp_timeouts_follow_state():
    to = Timeouts()
    ct = Conntrack(timeouts=to)
    c = Tcp()
    one(ct, c.pkt(0, "S"), now=0)
    slot = _conn(ct)
    assert ct.exp[slot] == to.tcp_syn_sent
    one(ct, c.pkt(1, "SA"), now=1)
    assert ct.exp[slot] == 1 + to.tcp_syn_recv
    one(ct, c.pkt(0, "A"), now=2)
    assert ct.exp[slot] == 2 + to.tcp_established
    one(ct, c.pkt(0, "FA"), now=3)
    assert ct.exp[slot] == 3 + to.tcp_fin_wait
    one(ct, c.pkt(1, "FA"), now=4)
    assert ct.exp[slot] == 4 + to.tcp_time_wait
    one(ct, c.pkt(0, "A"), now=5)
    assert ct.exp[slot] == 5 + to.tcp_close


def test_tcp_rst_closes():
    ct = Conntrack()
    c = Tcp()
    for p in c.handshake():
        one(ct, p)
    assert one(ct, c.pkt(1, "R")) == "+est+rpl+trk"
    assert ct.tcp_state(_conn(ct)) == ("TIME_WAIT", "TIME_WAIT")


def test_tcp_rst_needs_exact_sequence():
    ct = Conntrack()
    c = Tcp()
    for p in c.handshake():
        one(ct, p)
    bad = c.pkt(1, "R", seq=c.seq[1] + 5000)
    assert one(ct, bad) == "+inv+trk"
    assert ct.tcp_state(_conn(ct)) == ("ESTABLISHED", "ESTABLISHED")


def test_out_of_window_invalid_and_liberal_accepts():
    for liberal, want in ((False, "+inv+trk"), (True, "+est+trk")):
        ct = Conntrack(tcp_liberal=liberal)
        c = Tcp()
        for p in c.handshake():
            one(ct, p)
        far = c.pkt(0, "PA", b"x" * 100, seq=c.seq[0] + 10_000_000)
        assert one(ct, far) == want
    assert ct.stats["tcp_seq_chk_failed"] == 0


def test_out_of_window_fast_path_batch():
    ct = Conntrack()
    conns = [Tcp(sport=2000 + i) for i in range(8)]
    for c in conns:
        for p in c.handshake():
            one(ct, p)
    pkts = []
    for i, c in enumerate(conns):
        pkts.append(c.pkt(0, "PA", b"d" * 10))
        pkts.append(c.pkt(0, "PA", b"e" * 10))
        if i % 2:
            pkts.append(c.pkt(0, "PA", b"x" * 10, seq=c.seq[0] + 50_000_000))
    before = ct.stats["fast_path"]
    r = ct_run(ct, pkts)
    want = []
    for i in range(8):
        want += ["+est+trk", "+est+trk"] + (["+inv+trk"] if i % 2 else [])
    assert r.states == want
    assert ct.stats["fast_path"] - before == len(pkts)
    assert ct.stats["tcp_seq_chk_failed"] == 4


def test_invalid_flags_and_synack_without_connection():
    ct = Conntrack()
    c = Tcp()
    assert one(ct, c.pkt(0, "SF")) == "+inv+trk"
    assert one(ct, c.pkt(0, "F")) == "+inv+trk"
    assert one(ct, c.pkt(1, "SA")) == "+inv+trk"
    assert len(ct) == 0
    # A mid-stream ACK may pick a connection up (OVS tcp_valid_new).
    assert one(ct, c.pkt(0, "A")) == "+new+trk"
    assert len(ct) == 1


def test_simultaneous_open():
    ct = Conntrack()
    c = Tcp()
    assert one(ct, c.pkt(0, "S")) == "+new+trk"
    assert one(ct, c.pkt(1, "S")) == "+new+trk"     # VALID_NEW: no +rpl, as OVS
    slot = _conn(ct)
    assert ct.tcp_state(slot) == ("SYN_SENT", "SYN_SENT")
    assert one(ct, c.pkt(0, "SA", seq=1000)) == "+est+trk"
    assert one(ct, c.pkt(1, "SA", seq=5000)) == "+est+rpl+trk"
    assert ct.tcp_state(slot) == ("ESTABLISHED", "ESTABLISHED")


def test_syn_retransmit_stays_new_and_uncommitted_not_stored():
    ct = Conntrack()
    c = Tcp()
    syn = c.pkt(0, "S")
    assert one(ct, syn, commit=False) == "+new+trk"
    assert len(ct) == 0
    assert one(ct, syn) == "+new+trk"
    assert one(ct, syn) == "+new+trk"     # SYN retransmission: VALID_NEW
    assert len(ct) == 1


def test_window_scaling_tracks_scaled_windows():
    ct = Conntrack()
    c = Tcp(win=1000)
    one(ct, c.pkt(0, "S", options=[("WScale", 7)]))
    one(ct, c.pkt(1, "SA", options=[("WScale", 7)]))
    one(ct, c.pkt(0, "A"))
    one(ct, c.pkt(1, "A"))       # B's first scaled window opens A's send window
    # 1000 << 7 = 128000 bytes of window: a segment 100 kB ahead is in window.
    assert one(ct, c.pkt(0, "PA", b"z" * 10, seq=c.seq[0] + 100_000)) == "+est+trk"
    assert one(ct, c.pkt(0, "PA", b"z" * 10, seq=c.seq[0] + 400_000)) == "+inv+trk"


def test_batch_handshake_in_one_batch():
    ct = Conntrack()
    c = Tcp()
    r = ct_run(ct, c.handshake() + [c.pkt(0, "PA", b"abc")])
    assert r.states == ["+new+trk", "+est+rpl+trk", "+est+trk", "+est+trk"]


def test_ct_tuple_fields_are_original_direction():
    ct = Conntrack()
    c = Tcp()
    r = ct_run(ct, [c.pkt(0, "S"), udp()], zone=7)       # committed in bulk
    assert r.key("ct_nw_src", 0) == 0x0A000001 and r.key("ct_tp_dst", 0) == 80
    assert r.key("ct_tp_src", 1) == 1 and r.key("ct_nw_proto", 1) == 17
    r = ct_run(ct, [c.pkt(1, "SA")], zone=7)
    assert r.key("ct_nw_src") == 0x0A000001 and r.key("ct_nw_dst") == 0x0A000002
    assert (r.key("ct_tp_src"), r.key("ct_tp_dst"), r.key("ct_nw_proto")) == (1234, 80, 6)
    assert r.key("ct_zone") == 7


def test_mark_and_label_need_commit():
    ct = Conntrack()
    c = Tcp()
    r = ct_run(ct, [c.pkt(0, "S")], set_mark=(0x5, 0xF), set_label=(1 << 70 | 3, (1 << 128) - 1))
    assert r.key("ct_mark") == 5
    assert (r.key("ct_label_hi"), r.key("ct_label_lo")) == (1 << 6, 3)
    r = ct_run(ct, [c.pkt(1, "SA")])
    assert r.key("ct_mark") == 5
    assert "mark=5" in ct.dump()[0] and f"labels=0x{(1 << 70 | 3):x}" in ct.dump()[0]


def test_udp_new_until_reply_then_established():
    ct = Conntrack()
    assert one(ct, udp()) == "+new+trk"
    assert one(ct, udp()) == "+new+trk"
    assert one(ct, udp()) == "+new+trk"
    assert one(ct, udp(B, A, 2, 1)) == "+est+rpl+trk"
    assert one(ct, udp()) == "+est+trk"
    assert ct.dump() == ["udp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=1,dport=2),"
                         "reply=(src=10.0.0.2,dst=10.0.0.1,sport=2,dport=1)"]


def test_icmp_echo_pseudo_connection():
    ct = Conntrack()
    req = E / IP(src=A, dst=B) / ICMP(type=8, id=7, seq=1)
    rep = E / IP(src=B, dst=A) / ICMP(type=0, id=7, seq=1)
    assert one(ct, rep) == "+inv+trk"          # a reply cannot open a connection
    assert one(ct, req) == "+new+trk"
    assert one(ct, req) == "+new+trk"
    assert one(ct, rep) == "+est+rpl+trk"
    assert one(ct, req) == "+est+trk"
    other_id = E / IP(src=A, dst=B) / ICMP(type=8, id=8)
    assert one(ct, other_id) == "+new+trk"
    assert "icmp,orig=(src=10.0.0.1,dst=10.0.0.2,id=7,type=8,code=0)," \
           "reply=(src=10.0.0.2,dst=10.0.0.1,id=7,type=0,code=0)" in ct.dump()
    r = ct_run(ct, [req])
    assert (r.key("ct_tp_src"), r.key("ct_tp_dst")) == (8, 0)


def test_icmpv6_echo_and_nd_invalid():
    ct = Conntrack()
    req = E / IPv6(src="fc00::1", dst="fc00::2") / ICMPv6EchoRequest(id=9)
    rep = E / IPv6(src="fc00::2", dst="fc00::1") / ICMPv6EchoReply(id=9)
    assert one(ct, req) == "+new+trk"
    assert one(ct, rep) == "+est+rpl+trk"
    from scapy.layers.inet6 import ICMPv6ND_NS
    ns = E / IPv6(src="fc00::1", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fc00::2")
    assert one(ct, ns) == "+inv+trk"
    r = ct_run(ct, [req])
    assert r.key("ct_ipv6_src_lo") == 1 and r.key("ct_nw_src") == 0


def test_icmp_error_related_v4():
    ct = Conntrack()
    c = Tcp()
    for p in c.handshake():
        one(ct, p)
    quoted = IPerror(src=A, dst=B) / TCPerror(sport=1234, dport=80, seq=c.seq[0])
    err = E / IP(src="10.9.9.9", dst=A) / ICMP(type=3, code=1) / quoted
    assert one(ct, err) == "+rel+rpl+trk"
    back = IPerror(src=B, dst=A) / TCPerror(sport=80, dport=1234)
    err2 = E / IP(src="10.9.9.9", dst=B) / ICMP(type=11, code=0) / back
    assert one(ct, err2) == "+rel+trk"
    stranger = IPerror(src=A, dst=B) / UDPerror(sport=5, dport=6)
    assert one(ct, E / IP(src="10.9.9.9", dst=A) / ICMP(type=3) / stranger) == "+inv+trk"
    assert len(ct) == 1


def test_icmp_error_related_v6():
    from scapy.layers.inet6 import IPerror6, UDPerror as UDPerror6
    ct = Conntrack()
    p = E / IPv6(src="fc00::1", dst="fc00::2") / UDP(sport=10, dport=20) / Raw(b"q")
    one(ct, p)
    err = (E / IPv6(src="fc00::99", dst="fc00::1") / ICMPv6DestUnreach(code=4)
           / IPerror6(src="fc00::1", dst="fc00::2") / UDPerror6(sport=10, dport=20))
    assert one(ct, err) == "+rel+rpl+trk"


def test_non_ip_fragment_and_bad_checksum_invalid():
    ct = Conntrack()
    arp = E / ARP(psrc=A, pdst=B)
    frag = E / IP(src=A, dst=B, flags="MF", frag=0) / UDP(sport=1, dport=2) / Raw(b"y" * 20)
    bad = bytearray(bytes(udp()))
    bad[-1] ^= 0xFF
    r = ct_run(ct, [arp, frag, bytes(bad), udp()])
    assert r.states == ["+inv+trk", "+inv+trk", "+inv+trk", "+new+trk"]
    assert r.key("ct_nw_src", 0) == 0
    ct2 = Conntrack(checksums=False)
    assert ct_run(ct2, [bytes(bad)]).states == ["+new+trk"]


def test_zones_isolate():
    ct = Conntrack()
    c = Tcp()
    one(ct, c.pkt(0, "S"), zone=1)
    assert one(ct, c.pkt(1, "SA"), zone=2) == "+inv+trk"   # unknown in zone 2
    assert one(ct, c.pkt(1, "SA"), zone=1) == "+est+rpl+trk"
    one(ct, udp(), zone=2)
    assert len(ct.dump(zone=2)) == 1 and len(ct.dump(zone=1)) == 1
    ct.flush(zone=1)
    assert len(ct) == 1 and ct.dump(zone=1) == []
    r = ct_run(ct, [udp(), udp()], zone=np.array([2, 3]))
    assert r.states == ["+new+trk", "+new+trk"]
    assert len(ct) == 2
    # rows as a mask: only the selected packets are tracked.
    from sbnet.datapath.batch import Batch
    from sbnet.datapath.parse import parse
    b = Batch.from_packets([bytes(udp(sport=40)), bytes(udp(sport=41))], 1)
    pr = parse(b)
    ct.execute(b, pr, np.array([False, True]), 4, commit=True)
    assert pr.keys[S["ct_state"]].tolist() == [0, 0x21]


def test_global_and_zone_limits():
    ct = Conntrack(limit=3, zone_limits={9: 1})
    assert one(ct, udp(sport=1), zone=9) == "+new+trk"
    assert one(ct, udp(sport=2), zone=9) == "+new+trk"       # refused, not stored
    assert ct.stats["zone_full"] == 1 and len(ct) == 1
    for sp in (3, 4, 5):
        one(ct, udp(sport=sp), zone=1)
    assert len(ct) == 3 and ct.stats["conntrack_full"] == 1
    # Established connections keep working when full.
    assert one(ct, udp(B, A, 2, 3), zone=1) == "+est+rpl+trk"


def test_expiry_with_controlled_clock():
    to = Timeouts(udp_first=30)
    ct = Conntrack(timeouts=to)
    one(ct, udp(), now=100)
    assert ct.expire(129.9) == 0 and len(ct) == 1
    # An expired connection is not found even before the sweep.
    assert one(ct, udp(B, A, 2, 1), now=131) == "+new+trk"
    assert ct.stats["expired"] >= 1
    ct2 = Conntrack(timeouts=to)
    one(ct2, udp(), now=0)
    assert ct2.expire(30) == 1 and len(ct2) == 0


def test_force_replaces_reply_direction_connection():
    ct = Conntrack()
    one(ct, udp())
    assert one(ct, udp(B, A, 2, 1), force=True) == "+new+trk"
    assert ct.dump()[0].startswith("udp,orig=(src=10.0.0.2,dst=10.0.0.1,sport=2,dport=1)")


def test_many_connections_batch_lookup_and_dict_collisions_survive():
    ct = Conntrack()
    pk = [udp(sport=1000 + i, dport=53) for i in range(500)]
    ct_run(ct, pk)
    assert len(ct) == 500
    rep = [udp(B, A, 53, 1000 + i) for i in range(500)]
    assert set(ct_run(ct, rep).states) == {"+est+rpl+trk"}
    assert set(ct_run(ct, pk).states) == {"+est+trk"}
    assert ct.memory_per_connection() > 0


def test_tcp_update_unit_first_packet_from_responder():
    peers = T.new_peers(T.TcpPacket(T.SYN, 100, 0, 1000, 0))
    res, cls = T.update(peers, True, T.TcpPacket(T.SYN | T.ACK, 900, 101, 1000, 0), False)
    assert (res, cls) == (T.VALID, T.TM_TCP_OPENING)
    assert peers[0][4] == T.ESTABLISHED and peers[1][4] == T.SYN_SENT
    assert peers[1][0] == 901


@pytest.mark.parametrize("fl,bad", [(T.SYN | T.RST, True), (T.SYN | T.FIN, True), (0, True),
                                    (T.FIN, True), (T.PSH, True), (T.ACK, False),
                                    (T.RST, False), (T.SYN, False), (T.ACK | T.FIN, False)])
def test_invalid_flag_table(fl, bad):
    assert T.invalid_flags(fl) is bad


def test_batch_equals_one_by_one():
    """The vectorized paths (bulk commit, fast established) match the per-packet path."""
    import random
    from scapy.layers.inet import ICMP as _ICMP
    rng = random.Random(7)
    convs = [Tcp(sport=6000 + i, isn_a=rng.getrandbits(32), isn_b=rng.getrandbits(32))
             for i in range(40)]
    pk = []
    for c in convs:
        pk += [c.pkt(0, "S")]
    pk += [udp(sport=7000 + i % 30) for i in range(40)]
    pk += [E / IP(src=A, dst=B) / _ICMP(type=8, id=i % 5) for i in range(10)]
    pk += [c.pkt(1, "SA") for c in convs[:30]] + [c.pkt(0, "A") for c in convs[:25]]
    for _ in range(200):
        c = rng.choice(convs)
        pk.append(c.pkt(rng.randrange(2), rng.choice(["A", "PA", "PA", "FA"]),
                        bytes(rng.randrange(1, 50))))
    batch_ct, single_ct = Conntrack(), Conntrack()
    states = []
    for i in range(0, len(pk), 64):
        states += ct_run(batch_ct, pk[i:i + 64]).states
    singles = [ct_run(single_ct, [q]).states[0] for q in pk]
    assert states == singles
    assert batch_ct.dump() == single_ct.dump()
    assert batch_ct.stats["fast_path"] > 20
    for slot in single_ct.connections():
        t = single_ct.table.tuple(slot, 0)
        other, _ = batch_ct.find(t)
        assert (batch_ct.tcp[other] == single_ct.tcp[slot]).all()


def test_ones_sum_matches_reference():
    from sbnet.datapath.checksum import ones_sum
    from sbnet.datapath.conntrack_pkt import _ones_sum
    rng = np.random.default_rng(0)
    d = rng.integers(0, 256, (300, 400), dtype=np.uint8)
    st = rng.integers(0, 150, 300)
    for hi in (90, 240):      # the window and the reduceat methods
        ln = rng.integers(0, hi, 300)
        assert (_ones_sum(d, np.arange(300), st, ln) == ones_sum(d, st, ln)).all()


@pytest.mark.parametrize("seed", range(2))
def test_many_segments_per_connection_batch_equals_one_by_one(seed):
    """Elephant flows: hundreds of segments of few connections in one batch,
    both directions, out-of-window ones among them (the prefix-maxima path)."""
    import random
    rng = random.Random(seed)
    convs = [Tcp(sport=8000 + i, isn_a=rng.getrandbits(32), isn_b=rng.getrandbits(32),
                 win=rng.choice((600, 4000, 65535))) for i in range(3)]
    setup = []
    for c in convs:
        opts = {"options": [("WScale", rng.randrange(0, 9))]} if rng.random() < 0.5 else {}
        setup += [c.pkt(0, "S", **opts), c.pkt(1, "SA", **opts), c.pkt(0, "A"), c.pkt(1, "A")]
    pk = []
    for _ in range(600):
        c = rng.choice(convs)
        d = rng.randrange(2)
        r = rng.random()
        if r < 0.05:
            pk.append(c.pkt(d, "PA", b"o" * 20,
                            seq=c.seq[d] + rng.choice((-1, 1)) * rng.randrange(10**5, 10**8)))
        elif r < 0.3:
            pk.append(c.pkt(d, "A"))
        else:
            pk.append(c.pkt(d, "PA", bytes(rng.randrange(1, 1400))))
    a, b = Conntrack(), Conntrack()
    for q in setup:
        ct_run(a, [q])
        ct_run(b, [q])
    batched = []
    for i in range(0, len(pk), 256):
        batched += ct_run(a, pk[i:i + 256]).states
    single = [ct_run(b, [q]).states[0] for q in pk]
    assert batched == single
    assert "+inv+trk" in single and a.stats["fast_path"] > 300
    assert (a.tcp[a.connections()] == b.tcp[b.connections()]).all()


def test_hash_index_against_dict():
    import random
    from sbnet.datapath.conntrack_index import HashIndex, stored
    rng = random.Random(3)
    idx, ref = HashIndex(8), {}
    keys = [stored(rng.getrandbits(64)) for _ in range(3000)]
    for step in range(12000):
        k = rng.choice(keys)
        if k in ref and rng.random() < 0.5:
            assert idx.delete(k)
            del ref[k]
        elif k not in ref:
            idx.insert(k, step)
            ref[k] = step
        if step % 1000 == 0:
            new = [x for x in (stored(rng.getrandbits(64)) for _ in range(200)) if x not in ref]
            idx.insert_many(np.array(new, dtype=np.uint64), np.arange(len(new)) + 10**6)
            ref.update({x: i + 10**6 for i, x in enumerate(new)})
            keys += new
    probe = np.array(keys, dtype=np.uint64)
    assert idx.get_many(probe).tolist() == [ref.get(k, -1) for k in keys]
    assert len(idx) == len(ref)


def test_hash_collisions_fall_back_to_exact_tuples(monkeypatch):
    """With every tuple hashing alike, the overflow table keeps everything right."""
    import sbnet.datapath.conntrack_table as CT

    def weak(meta, *words):
        return meta * 0 + (meta & np.uint64(1) if isinstance(meta, np.ndarray) else meta & 1)
    monkeypatch.setattr(CT, "_hash_words", weak)
    ct = Conntrack()
    convs = [Tcp(sport=9000 + i) for i in range(5)]
    for c in convs:
        assert [one(ct, q) for q in c.handshake()] == ["+new+trk", "+est+rpl+trk", "+est+trk"]
    r = ct_run(ct, [c.pkt(0, "PA", b"z") for c in convs] + [udp(sport=77)])
    assert r.states == ["+est+trk"] * 5 + ["+new+trk"]
    assert len(ct) == 6 and len(ct.table.overflow) > 0
    ct.flush()
    assert len(ct) == 0 and not ct.table.overflow


def test_one_segment_per_connection_batches_equal_one_by_one():
    import random
    rng = random.Random(11)
    convs = [Tcp(sport=12000 + i, isn_a=rng.getrandbits(32), isn_b=rng.getrandbits(32),
                 win=rng.choice((700, 9000, 65535))) for i in range(50)]
    a, b = Conntrack(), Conntrack()
    for c in convs:
        for q in c.handshake() + [c.pkt(1, "A")]:
            ct_run(a, [q])
            ct_run(b, [q])
    batched, single = [], []
    for _ in range(6):
        rng.shuffle(convs)
        pk = []
        for c in convs:
            d = rng.randrange(2)
            if rng.random() < 0.1:
                pk.append(c.pkt(d, "PA", b"o" * 30, seq=c.seq[d] + rng.randrange(10**5, 10**8)))
            else:
                pk.append(c.pkt(d, rng.choice(["A", "PA"]), bytes(rng.randrange(1, 900))))
        before = a.stats["fast_path"]
        batched += ct_run(a, pk).states
        assert a.stats["fast_path"] - before == len(pk)
        single += [ct_run(b, [q]).states[0] for q in pk]
    assert batched == single and "+inv+trk" in single
    assert (a.tcp[a.connections()] == b.tcp[b.connections()]).all()


def test_sweep_many_then_reuse_slots():
    ct = Conntrack(timeouts=Timeouts(udp_first=10), capacity=16)
    ct_run(ct, [udp(sport=100 + i) for i in range(300)], now=0)
    ct_run(ct, [udp(sport=1000 + i) for i in range(100)], now=5)
    assert len(ct) == 400 and len(ct.table.index) == 800
    assert ct.expire(12) == 300
    assert len(ct) == 100 and len(ct.table.index) == 200
    assert ct_run(ct, [udp(B, A, 2, 1000)], now=12).states == ["+est+rpl+trk"]
    assert ct_run(ct, [udp(sport=100)], now=12).states == ["+new+trk"]
    assert len(ct) == 101


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("update_many", [T.update_many, update_many_compiled])
def test_update_many_matches_scalar_update(seed, update_many):
    """The vectorized TCP update (numpy and compiled) equals conntrack-tcp.c's, transcribed per packet."""
    import random
    rng = random.Random(seed)
    flag_sets = [T.SYN, T.SYN | T.ACK, T.ACK, T.ACK | T.PSH, T.FIN | T.ACK, T.RST,
                 T.RST | T.ACK, T.FIN, T.SYN | T.FIN, 0]
    for _ in range(40):
        isn = [rng.getrandbits(32), rng.getrandbits(32)]
        first = T.TcpPacket(rng.choice([T.SYN, T.ACK]), isn[0], isn[1], rng.randrange(1, 65536),
                            0, rng.choice([0, T.WSCALE_FLAG | rng.randrange(0, 15)]))
        peers = T.new_peers(first)
        tcp = np.array([peers], dtype=np.int64)
        nxt = [isn[0] + 1, isn[1]]
        for _ in range(25):
            d = rng.randrange(2)
            fl = rng.choice(flag_sets)
            plen = rng.choice([0, 0, 10, 1400])
            seq = (nxt[d] + rng.choice([0, 0, 0, 1, -1, 70000, -3_000_000])) % 2**32
            ack = (nxt[1 - d] + rng.choice([0, 0, 5, -100000])) % 2**32
            win = rng.choice([0, 1, 512, 65535])
            ws = rng.choice([0, T.WSCALE_FLAG | rng.randrange(0, 15)])
            pkt = T.TcpPacket(fl, seq, ack, win, plen, ws)
            if fl & (T.SYN | T.ACK) == T.SYN and min(peers[0][4], peers[1][4]) >= T.FIN_WAIT_2:
                continue                           # NEW: replaced, not an update
            res, cls = T.update(peers, bool(d), pkt, False)
            vres, vcls = update_many(tcp, np.array([0]), np.array([bool(d)]),
                                     np.array([fl]), np.array([seq]), np.array([ack]),
                                     np.array([win]), np.array([plen]), np.array([ws]), False)
            assert (res, -1 if cls is None else cls) == (int(vres[0]), int(vcls[0]))
            assert tcp[0].tolist() == peers
            if res == T.VALID:
                nxt[d] = (seq + plen + bool(fl & T.SYN) + bool(fl & T.FIN)) % 2**32


def test_uncommitted_batch_equals_per_packet(monkeypatch):
    """ct() without commit over a batch of unknown tuples (+new, or +inv for what may not
    start a connection) and known ones gives what the per-packet path gives."""
    from scapy.layers.inet import ICMP as _ICMP
    from sbnet.datapath import conntrack as conntrack_mod
    known = [Tcp(sport=5000 + i) for i in range(4)]
    fresh = [Tcp(sport=6000 + i) for i in range(8)]
    pk = [c.pkt(0, fl) for c, fl in zip(fresh, ["S", "SF", "SA", "A", "F", "S", "PA", "R"])]
    pk += [udp(sport=7000), E / IP(src=A, dst=B) / _ICMP(type=8, id=3),
           E / IP(src=A, dst=B) / _ICMP(type=0, id=4)]
    pk += [c.pkt(1, "SA") for c in known]
    runs = []
    for vectorized in (True, False):
        if not vectorized:
            monkeypatch.setattr(conntrack_mod, "uncommitted_new", lambda ct, b, slow: slow)
        ct = Conntrack()
        ct_run(ct, [c.pkt(0, "S") for c in known])
        runs.append((ct_run(ct, pk, commit=False).states, ct.dump(), dict(ct.stats)))
    assert runs[0] == runs[1]
    assert runs[0][0][:3] == ["+new+trk", "+inv+trk", "+inv+trk"]
