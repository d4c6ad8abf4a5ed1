"""Connection-state handover: a port's connections exported from one conntrack keep their verdicts in another."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP

from sbnet.datapath import ctmove
from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.conntrack_nat import NatSpec
from sbnet.flows.actions import Nat
from tests.datapath.test_conntrack_util import A, B, Tcp, ct_run, one, udp

ZONE = 7


def _established(ct: Conntrack, c: Tcp, data: int = 40) -> None:
    for p in c.handshake():
        one(ct, p, zone=ZONE)
    for _ in range(data):       # the stream moves well past the first window
        one(ct, c.pkt(0, "PA", b"x" * 1000), zone=ZONE)
        one(ct, c.pkt(1, "A"), zone=ZONE)


def test_established_tcp_moves_and_stays_established_midstream():
    src, dst, fresh = Conntrack(), Conntrack(), Conntrack()
    c = Tcp(win=4000)
    _established(src, c)
    entries = ctmove.export(src, {ZONE}, ctmove.addresses([A]), now=10.0)
    assert len(entries) == 1 and len(entries[0]) == ctmove.ENTRY_LEN
    # The VM went on talking at the source after the export: the destination's copy is stale.
    for _ in range(20):
        one(src, c.pkt(0, "PA", b"y" * 1000), zone=ZONE)
        one(src, c.pkt(1, "A"), zone=ZONE)
    moved = ctmove.import_(dst, entries, now=500.0)
    assert len(moved) == 1 and len(dst) == 1
    nxt_a, nxt_b = c.pkt(0, "PA", b"z" * 100), c.pkt(1, "A")
    # Without the handover the peer's segment is a new connection, not a reply: a stateful
    # group with no ingress rule for it drops it (and the VM, having nothing to ack, waits).
    assert one(fresh, nxt_b, zone=ZONE, commit=False) == "+new+trk"
    assert one(dst, nxt_a, zone=ZONE) == "+est+trk"
    assert one(dst, nxt_b, zone=ZONE) == "+est+rpl+trk"
    for _ in range(3):
        assert one(dst, c.pkt(0, "PA", b"w" * 1000), zone=ZONE) == "+est+trk"
        assert one(dst, c.pkt(1, "A"), zone=ZONE) == "+est+rpl+trk"
    slot = dst.connections()[0]
    assert dst.tcp_state(slot) == ("ESTABLISHED", "ESTABLISHED")
    # Far out of window once re-learnt: invalid again, as any tracked connection.
    assert one(dst, c.pkt(0, "PA", b"q", seq=c.seq[0] + 2**30), zone=ZONE) == "+inv+trk"
    # The expiry moved with it: the time left at the source, on the destination's clock.
    assert abs(float(dst.exp[slot]) - (500.0 + float(src.exp[src.connections()[0]]) - 10.0)) \
        < 1e6


def test_only_the_ports_zone_and_addresses_and_removal_keeps_shared_entries():
    ct = Conntrack()
    for p in Tcp(a=A, b=B).handshake():
        one(ct, p, zone=ZONE)
    for p in Tcp(a="10.0.0.3", b=B, sport=999).handshake():
        one(ct, p, zone=ZONE)
    for p in Tcp(a=A, b=B, sport=555).handshake():
        one(ct, p, zone=ZONE + 1)
    one(ct, udp(B, "10.0.0.4"), zone=ZONE)
    assert len(ctmove.export(ct, {ZONE}, ctmove.addresses([A]), 0.0)) == 1
    assert len(ctmove.export(ct, {ZONE, ZONE + 1}, ctmove.addresses([A]), 0.0)) == 2
    assert len(ctmove.export(ct, {ZONE}, ctmove.addresses([B]), 0.0)) == 3
    # B leaves; 10.0.0.3 stays on this host: the entry it shares with B stays too.
    out = ctmove.export(ct, {ZONE}, ctmove.addresses([B]), 0.0, remove=True,
                        keep=ctmove.addresses(["10.0.0.3"]))
    assert len(out) == 3 and len(ct) == 2
    assert ctmove.forget(ct, [ctmove._tuples(__import__("numpy").array(out[0][1:],
                                                                      dtype="uint64"))[0]]) <= 1


def test_floating_ip_dnat_entry_keeps_translating_after_the_move():
    fip, fixed, outside = "172.24.4.10", "10.0.0.5", "172.24.4.99"
    src, dst = Conntrack(), Conntrack()
    nat = NatSpec.from_action(Nat("dst", fixed, None, None, None))
    syn = Tcp(a=outside, b=fip, sport=40000, dport=22, reply_to=outside)
    r = ct_run(src, [syn.pkt(0, "S")], zone=ZONE, nat=nat)
    assert r.states == ["+new+trk+dnat"] and r.packet()[IP].dst == fixed
    entries = ctmove.export(src, {ZONE}, ctmove.addresses([fixed, fip]), 0.0)
    assert len(entries) == 1
    ctmove.import_(dst, entries, 0.0)
    # The reply from the VM, at the destination, is translated back to the floating IP.
    reply = Tcp(a=fixed, b=outside, sport=22, dport=40000, isn_a=5000, isn_b=1001)
    r2 = ct_run(dst, [reply.pkt(0, "SA", ack=1001)], zone=ZONE, nat=NatSpec())
    assert "+est" in r2.states[0] and "+snat" in r2.states[0]
    assert r2.packet()[IP].src == fip and r2.packet()[TCP].sport == 22


def test_forget_removes_what_an_aborted_import_installed():
    src, dst = Conntrack(), Conntrack()
    c = Tcp()
    _established(src, c, data=1)
    moved = ctmove.import_(dst, ctmove.export(src, {ZONE}, ctmove.addresses([A]), 0.0), 0.0)
    assert len(dst) == 1
    assert ctmove.forget(dst, moved) == 1 and len(dst) == 0
