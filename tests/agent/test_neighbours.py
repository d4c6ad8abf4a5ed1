"""The reference agent's underlay ARP cache: answers for our address, learns peers, refreshes,
expires, and says once when a peer stays silent (times given, nothing waits)."""

from __future__ import annotations

from scapy.layers.l2 import ARP, Ether

from sbnet.agent.neighbours import REPLY, REQUEST, ArpCache, arp_frame

OURS = bytes.fromhex("020000000001")
PEER = bytes.fromhex("020000000002")


def cache() -> ArpCache:
    c = ArpCache(OURS, "10.0.0.1", refresh=30, expire=90, retry=1)
    c.want({"10.0.0.2", "10.0.0.3"})
    return c


def test_requests_for_our_address_are_answered_with_our_mac():
    c = cache()
    ask = arp_frame(REQUEST, PEER, "10.0.0.2", b"", "10.0.0.1")
    reply, learnt = c.receive(ask, now=0)
    arp = Ether(reply)[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        2, "02:00:00:00:00:01", "10.0.0.1", "02:00:00:00:00:02", "10.0.0.2")
    assert Ether(reply).dst == "02:00:00:00:00:02"
    assert learnt == ("10.0.0.2", PEER)         # a wanted peer's request teaches us its MAC
    other = arp_frame(REQUEST, PEER, "10.0.0.2", b"", "10.0.0.9")
    assert c.receive(other, now=0) == (None, None)   # not ours, already known: nothing


def test_peers_are_asked_until_they_answer_then_refreshed_then_expired():
    c = cache()
    asks, expired, silent = c.tick(0)
    assert sorted(Ether(f)[ARP].pdst for f in asks) == ["10.0.0.2", "10.0.0.3"]
    assert all(Ether(f).dst == "ff:ff:ff:ff:ff:ff" for f in asks)
    assert c.tick(0.5)[0] == []                 # not before the retry interval
    _, learnt = c.receive(arp_frame(REPLY, PEER, "10.0.0.2", OURS, "10.0.0.1"), now=0.6)
    assert learnt == ("10.0.0.2", PEER)
    silent_seen = []
    for t in range(1, 30):
        asks, expired, silent = c.tick(t)
        assert [Ether(f)[ARP].pdst for f in asks] == ["10.0.0.3"] and not expired
        silent_seen += silent
    assert silent_seen == ["10.0.0.3"]          # said once, after three unanswered requests
    asks, _, _ = c.tick(30.6)                   # refresh the known one
    assert "10.0.0.2" in [Ether(f)[ARP].pdst for f in asks]
    _, expired, _ = c.tick(91)                  # no answer since 0.6 s: gone
    assert expired == ["10.0.0.2"]
    assert c.want({"10.0.0.3"}) == ["10.0.0.2"]
