"""NSH through the switch: classify into a chain, hop through a service function, terminate; frames intact."""

from __future__ import annotations

from scapy.contrib.nsh import NSH
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch


def switch(flows: str) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2, 3):
        sw.add_port(p)
    sw.load(flows)
    return sw


INNER = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=80))


def test_classify_hop_and_terminate_a_chain():
    classifier = switch("in_port=1,tcp,tp_dst=80 actions=encap(nsh(md_type=1)),"
                        "set_field:0x2a->nsh_spi,set_field:255->nsh_si,set_field:0x7->nsh_c1,"
                        "encap(ethernet),set_field:02:00:00:00:00:aa->eth_dst,output:2")
    classifier.process(Batch.from_packets([INNER], 1))
    (wire,) = classifier.ports[2].take_sent()
    pkt = Ether(wire)
    assert pkt.type == 0x894F and pkt.dst == "02:00:00:00:00:aa"
    hdr = pkt[NSH]
    assert (hdr.spi, hdr.si, hdr.mdtype, hdr.nextproto, hdr.ttl) == (0x2A, 255, 1, 3, 63)
    assert raw(hdr.payload) == INNER

    hop = switch("in_port=1,eth_type=0x894f,nsh_spi=0x2a,nsh_si=255 "
                 "actions=set_field:254->nsh_si,dec_nsh_ttl,output:2")
    hop.process(Batch.from_packets([wire], 1))
    (after,) = hop.ports[2].take_sent()
    h = Ether(after)[NSH]
    assert (h.spi, h.si, h.ttl) == (0x2A, 254, 62) and raw(h.payload) == INNER

    end = switch("table=0,in_port=1,eth_type=0x894f,nsh_spi=0x2a,nsh_si=254 "
                 "actions=decap(),decap(),resubmit(,1)\n"
                 "table=1,tcp,tp_dst=80 actions=output:3")
    end.process(Batch.from_packets([after], 1))
    assert end.ports[3].take_sent() == [INNER]      # back to the original frame
    assert any("recirc_id=0x1" in line for line in end.dump_megaflows())


def test_expired_nsh_ttl_goes_to_the_controller():
    sw = switch("eth_type=0x894f actions=dec_nsh_ttl,output:2")
    pkt = raw(Ether(type=0x894F) / NSH(mdtype=1, nextproto=3, spi=1, si=9, ttl=1) / Ether(INNER))
    sw.process(Batch.from_packets([pkt], 1))
    assert sw.ports[2].take_sent() == [] and sw.packets_in == 1
