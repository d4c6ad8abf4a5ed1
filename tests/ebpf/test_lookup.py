"""The kernel's megaflow lookup with its mask cache: a packet's search starts at the mask that last found its megaflow, and never finds one the slow path took out."""

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.switch import Switch

from .util import attach_ports, compare, run_reference

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
WEB = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80, flags="A"))
DNS = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53))
SIX = raw(ETH / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1000, dport=53))
# Three masks: TCP's ports, IPv4's protocol, the Ethernet type alone.
TABLE = ("priority=3,tcp,tp_dst=80 actions=output:2\n"
         "priority=2,ip actions=output:3\n"
         "priority=1 actions=output:4")


def test_warm_cache_same_outputs_and_counters(tier):
    """Each packet twice: the second time its search starts where the first one found
    its megaflow; same ports, bytes and counters as the reference switch."""
    sw = Switch()
    for p in (1, 2, 3, 4):
        sw.add_port(p)
    sw.load(TABLE)
    packets = [(1, f) for f in (WEB, DNS, SIX)] * 3
    ref = run_reference(sw, packets)
    tier.flush()
    attach_ports(tier, sw)
    assert len({(mf.slots, mf.mask) for mf in sw.cache.flows.values()}) == 3
    assert compare(tier, sw, packets, ref) == {"kernel": 9, "upcall": 0}


def test_a_removed_megaflow_is_not_found_through_the_cache(tier):
    """The mask the cache points a packet at goes (its megaflow removed, the last mask
    moved into its place): the packet goes up, the others still find theirs; put back,
    it is forwarded again."""
    sw = Switch()
    for p in (1, 2, 3, 4):
        sw.add_port(p)
    sw.load(TABLE)
    run_reference(sw, [(1, WEB), (1, DNS), (1, SIX)])
    tier.flush()
    attach_ports(tier, sw)
    for mf in sw.cache.flows.values():
        tier.put(mf)
    for frame, port in ((WEB, 2), (DNS, 3), (SIX, 4)):
        for _ in range(2):
            got = tier.run(frame, 1)
            assert got.verdict == "forward" and [o.ofport for o in got.outputs] == [port]
    web = next(mf for mf in sw.cache.flows.values()
               if tier.run(WEB, 1).mf_id == mf.mf_id)
    tier.remove(web.mf_id)
    for _ in range(2):
        assert tier.run(WEB, 1).verdict == "upcall"
    for frame, port in ((DNS, 3), (SIX, 4)):
        got = tier.run(frame, 1)
        assert got.verdict == "forward" and [o.ofport for o in got.outputs] == [port]
    tier.put(web)
    got = tier.run(WEB, 1)
    assert got.verdict == "forward" and [o.ofport for o in got.outputs] == [2]
    assert got.mf_id == web.mf_id


def test_ports_sharing_a_slot_each_keep_their_number(tier):
    """Two ports whose ifindexes share a port_slots slot (the program's direct-mapped
    copy of the port map): each packet is switched as from its own port (the second port's
    from the hash map behind the slot), and when the slot's port goes, the other takes
    the slot and still gets its own megaflow."""
    from sbnet.datapath.ebpf import layout as L
    sw = Switch()
    for p in (1, 2, 3):
        sw.add_port(p)
    sw.load("priority=2,in_port=1 actions=output:2\npriority=2,in_port=3 actions=drop")
    run_reference(sw, [(1, DNS), (3, DNS)])
    tier.flush()
    tier.add_port(1, 5)
    tier.add_port(3, 5 + L.PORT_SLOTS)
    tier.add_port(2, 7)
    try:
        for mf in sw.cache.flows.values():
            assert tier.put(mf).tier == "ebpf"
        got = tier.run(DNS, 1)
        assert got.verdict == "forward" and [o.ofport for o in got.outputs] == [2]
        assert tier.run(DNS, 3).verdict == "drop"
        tier.remove_port(1)
        assert tier.run(DNS, 3).verdict == "drop"
        slot = L.PORT_SLOT.unpack(tier.m_port_slots.lookup(L.U32.pack(5)))
        assert slot == (5 + L.PORT_SLOTS, 3, 0)
        tier.add_port(1, 5)                  # back, behind the slot port 3 now holds
        got = tier.run(DNS, 1)
        assert got.verdict == "forward" and [o.ofport for o in got.outputs] == [2]
    finally:
        for p in (1, 2, 3):
            tier.remove_port(p)
