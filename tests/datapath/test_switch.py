"""The reference switch on packets: where they leave, with what headers, and what the counters say."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch, UnsupportedFlow
from sbnet.flows.ofctl import parse_flow
from sbnet.offload import nic_tier


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(flows: str, ports=(1, 2, 3, 4), clock=None) -> Switch:
    sw = Switch(clock=clock or Clock())
    for p in ports:
        sw.add_port(p)
    sw.load(flows)
    return sw


def tcp(dport=80, src="10.0.0.1", dst="10.0.0.2", ttl=64, sport=1234) -> bytes:
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
               / IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=dport))


def sent(sw: Switch, port: int) -> list[bytes]:
    return sw.ports[port].take_sent()


def test_packet_leaves_port_3_with_vlan_100():
    sw = make("in_port=1,tcp,tp_dst=80 actions=push_vlan:0x8100,mod_vlan_vid:100,output:3\n"
              "in_port=1 actions=output:2")
    sw.process(Batch.from_packets([tcp(80), tcp(22)], 1))
    out3 = [Ether(p) for p in sent(sw, 3)]
    assert len(out3) == 1 and out3[0][Dot1Q].vlan == 100 and out3[0][TCP].dport == 80
    out2 = [Ether(p) for p in sent(sw, 2)]
    assert len(out2) == 1 and Dot1Q not in out2[0] and out2[0][TCP].dport == 22


def test_rewrites_fix_checksums_and_ttl():
    sw = make("ip actions=set_field:10.9.9.9->ip_dst,dec_ttl,output:2")
    sw.process(Batch.from_packets([tcp(ttl=7)], 1))
    (p,) = [Ether(x) for x in sent(sw, 2)]
    assert p[IP].dst == "10.9.9.9" and p[IP].ttl == 6
    again = Ether(raw(p.__class__(raw(p))))
    del again[IP].chksum, again[TCP].chksum
    assert raw(Ether(raw(again))) == raw(p)   # scapy recomputes the same checksums


def test_ttl_expiry_is_not_forwarded_and_goes_to_the_controller():
    sw = make("ip actions=dec_ttl,output:2")
    sw.process(Batch.from_packets([tcp(ttl=1)], 1))
    assert sent(sw, 2) == [] and sw.packets_in == 1
    assert "TTL expired (dec_ttl)" in sw.drop_counts()


def test_drop_reasons_name_the_rule_or_the_miss():
    sw = make("table=0,priority=10,tcp,tp_dst=22 actions=drop\n"
              "table=0,priority=5,tcp actions=goto_table:1")
    sw.process(Batch.from_packets([tcp(22), tcp(22), tcp(80)], 1))
    drops = sw.drop_counts()
    assert drops["drop rule: table=0,priority=10,eth_type=0x800,ip_proto=6,tcp_dst=22"] == 2
    assert drops["no matching flow in table 1"] == 1


def test_malformed_packets_are_counted_per_reason_and_dropped():
    sw = make("actions=output:2")
    good = tcp()
    sw.process(Batch.from_packets([good, good[:20], good[:40], b"\x01\x02"], 1))
    assert len(sent(sw, 2)) == 1
    drops = sw.drop_counts()
    assert sum(v for k, v in drops.items() if k.startswith("malformed")) == 3


@pytest.mark.parametrize("action,why", [
    ("set_field:0x1->ct_mark", "only by ct"),
    ("encap(mpls)", "encap"),
    ("NORMAL", "NORMAL"),
])
def test_actions_the_switch_cannot_execute_are_refused_at_install(action, why):
    sw = make("")
    with pytest.raises(UnsupportedFlow, match=why):
        sw.add_flows([parse_flow(f"ip actions={action},output:2")])
    assert sw.rules() == []   # nothing half-installed


def test_rule_counters_are_exact_across_the_cache():
    sw = make("priority=10,tcp,tp_dst=80 actions=output:2\npriority=1 actions=output:3")
    for _ in range(5):
        sw.process(Batch.from_packets([tcp(80, sport=s) for s in range(50)] + [tcp(22)] * 7, 1))
    stats = {s.flow.priority: (s.n_packets, s.n_bytes) for s in sw.dump_flows()}
    assert stats[10] == (250, 250 * 54) and stats[1] == (35, 35 * 54)
    assert sw.upcalls <= 3          # later packets of a flow never reach the slow path


def test_deleting_a_rule_takes_effect_on_the_next_batch():
    sw = make("priority=10,tcp,tp_dst=80 actions=output:2\npriority=1 actions=output:3")
    sw.process(Batch.from_packets([tcp(80)], 1))
    assert len(sent(sw, 2)) == 1
    sw.delete_flows([parse_flow("priority=10,tcp,tp_dst=80 actions=drop")])
    sw.process(Batch.from_packets([tcp(80)], 1))
    assert sent(sw, 2) == [] and len(sent(sw, 3)) == 1
    # the deleted rule's counter stays with it; the survivor counts only its own packets
    assert [s.n_packets for s in sw.dump_flows()] == [1]


def test_replacing_actions_and_adding_a_higher_priority_rule_revalidate():
    sw = make("priority=1,ip actions=output:2")
    sw.process(Batch.from_packets([tcp(80)], 1))
    sw.add_flows([parse_flow("priority=1,ip actions=output:4")])
    sw.process(Batch.from_packets([tcp(80)], 1))
    assert len(sent(sw, 4)) == 1
    sw.add_flows([parse_flow("priority=5,ip,nw_dst=10.0.0.2 actions=output:3")])
    sw.process(Batch.from_packets([tcp(80), tcp(80, dst="10.0.0.3")], 1))
    assert len(sent(sw, 3)) == 1 and len(sent(sw, 4)) == 1


def test_a_busy_megaflow_a_rule_change_moves_is_put_back_translated_anew():
    """keep_hot (the kernel tier's setting): the next packet of a busy flow finds its new
    megaflow, with no upcall; an idle one is only deleted."""
    clock = Clock()
    sw = make("priority=1,ip,nw_dst=10.0.0.2 actions=output:2\n"
              "priority=1,ip,nw_dst=10.0.0.3 actions=output:2", clock=clock)
    sw.revalidator.keep_hot = 1.0
    sw.process(Batch.from_packets([tcp(80, dst="10.0.0.3")], 1))
    clock.now = 5.0
    sw.process(Batch.from_packets([tcp(80)], 1))
    sent(sw, 2)
    clock.now = 5.5
    sw.add_flows([parse_flow("priority=1,ip,nw_dst=10.0.0.2 actions=output:2,output:3"),
                  parse_flow("priority=1,ip,nw_dst=10.0.0.3 actions=output:4")])
    assert [mf.actions for mf in sw.cache.flows.values()] == \
        [sw.cache.flows[max(sw.cache.flows)].actions]          # the busy one alone, anew
    upcalls = sw.upcalls
    sw.process(Batch.from_packets([tcp(80)], 1))
    assert sw.upcalls == upcalls
    assert len(sent(sw, 2)) == 1 and len(sent(sw, 3)) == 1
    sw.process(Batch.from_packets([tcp(80, dst="10.0.0.3")], 1))
    assert sw.upcalls == upcalls + 1 and len(sent(sw, 4)) == 1


def test_idle_and_hard_timeouts_follow_the_clock():
    clock = Clock()
    sw = make("idle_timeout=10,priority=5,ip actions=output:2\n"
              "hard_timeout=30,priority=4,ip actions=output:3\n", clock=clock)
    sw.process(Batch.from_packets([tcp()], 1))
    clock.now = 8
    sw.process(Batch.from_packets([tcp()], 1))
    clock.now = 15
    sw.maintain()
    assert {s.flow.priority for s in sw.dump_flows()} == {5, 4}   # used at t=8
    clock.now = 19
    sw.maintain()
    assert {s.flow.priority for s in sw.dump_flows()} == {4}
    sw.process(Batch.from_packets([tcp()], 1))
    assert len(sent(sw, 3)) == 1
    clock.now = 31
    sw.maintain()
    assert sw.dump_flows() == []


def test_resubmit_loops_are_cut_and_dropped():
    sw = make("table=0 actions=output:2,resubmit(,0)")
    sw.process(Batch.from_packets([tcp()], 1))
    assert sent(sw, 2) == []
    assert any("Recursion too deep" in k for k in sw.drop_counts())


def test_output_to_in_port_needs_in_port_action():
    sw = make("in_port=1 actions=output:1,output:2\nin_port=3 actions=IN_PORT")
    sw.process(Batch.from_packets([tcp()], 1))
    sw.process(Batch.from_packets([tcp()], 3))
    assert sent(sw, 1) == [] and len(sent(sw, 2)) == 1 and len(sent(sw, 3)) == 1


def test_flood_reaches_every_port_but_the_input_including_local():
    sw = make("actions=flood")
    sw.process(Batch.from_packets([tcp()], 2))
    assert [len(sent(sw, p)) for p in (1, 2, 3, 4)] == [1, 0, 1, 1]
    assert sw.ports[0xFFFFFFFE].tx_packets == 1


def test_conjunction_acts_on_the_product():
    sw = make("priority=10,ip,nw_src=10.0.0.1 actions=conjunction(1,1/2)\n"
              "priority=10,ip,nw_src=10.0.0.5 actions=conjunction(1,1/2)\n"
              "priority=10,tcp,tp_dst=80 actions=conjunction(1,2/2)\n"
              "priority=10,tcp,tp_dst=443 actions=conjunction(1,2/2)\n"
              "priority=10,conj_id=1,ip actions=output:2\n"
              "priority=1 actions=output:3")
    pk = [tcp(80, src="10.0.0.1"), tcp(443, src="10.0.0.5"), tcp(22, src="10.0.0.1"),
          tcp(80, src="10.0.0.9")]
    sw.process(Batch.from_packets(pk, 1))
    assert len(sent(sw, 2)) == 2 and len(sent(sw, 3)) == 2


def test_udp_and_vlan_pop():
    sw = make("dl_vlan=7 actions=pop_vlan,output:2")
    pkt = raw(Ether() / Dot1Q(vlan=7) / IP() / UDP(dport=53))
    sw.process(Batch.from_packets([pkt], 1))
    (p,) = [Ether(x) for x in sent(sw, 2)]
    assert Dot1Q not in p and p[UDP].dport == 53


def test_megaflows_are_dumped_with_counters_tier_and_actions():
    clock = Clock()
    sw = make("priority=10,tcp,tp_dst=80 actions=output:2", clock=clock)
    sw.process(Batch.from_packets([tcp(80)] * 3, 1))
    clock.now = 2.5
    (line,) = sw.dump_megaflows()
    assert "in_port=1" in line and "tcp_dst=80" in line
    assert "packets:3, bytes:162, used:2.500s, tier:software, actions:2" in line


FIREWALL = """
table=0,priority=100,ip,ct_state=-trk actions=ct(table=1,zone=9)
table=0,priority=10,arp actions=flood
table=1,priority=100,ct_state=+trk+est,ip actions=resubmit(,2)
table=1,priority=100,ct_state=+trk+rel,ip actions=resubmit(,2)
table=1,priority=90,ct_state=+trk+new,in_port=1,tcp,tp_dst=80 actions=ct(commit,zone=9,exec(set_field:0x7->ct_mark)),resubmit(,2)
table=1,priority=1 actions=drop
table=2,in_port=1 actions=output:2
table=2,in_port=2 actions=output:1
"""


def tcp_flags(flags, src="10.0.0.1", dst="10.0.0.2", sport=4000, dport=80, seq=1000, ack=0):
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
               / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack))


def test_stateful_firewall_allows_replies_and_refuses_unsolicited():
    sw = make(FIREWALL)
    sw.process(Batch.from_packets([tcp_flags("S", seq=100)], 1))
    assert len(sent(sw, 2)) == 1                      # new connection to port 80 allowed
    synack = tcp_flags("SA", src="10.0.0.2", dst="10.0.0.1", sport=80, dport=4000, seq=500, ack=101)
    sw.process(Batch.from_packets([synack], 2))
    assert len(sent(sw, 1)) == 1                      # the reply passes
    sw.process(Batch.from_packets([tcp_flags("A", seq=101, ack=501)], 1))
    assert len(sent(sw, 2)) == 1
    # unsolicited inbound and a new connection to another port are dropped
    sw.process(Batch.from_packets([tcp_flags("S", src="10.0.0.2", dst="10.0.0.1", sport=5555,
                                             dport=22)], 2))
    sw.process(Batch.from_packets([tcp_flags("S", dport=22, sport=4001)], 1))
    assert sent(sw, 1) == [] and sent(sw, 2) == []
    (line,) = sw.conntrack.dump()
    assert "zone=9" in line and "mark=7" in line and "ESTABLISHED" in line


def test_established_traffic_stays_on_the_fast_path():
    sw = make(FIREWALL)
    sw.process(Batch.from_packets([tcp_flags("S", seq=100)], 1))
    sw.process(Batch.from_packets([tcp_flags("SA", src="10.0.0.2", dst="10.0.0.1", sport=80,
                                             dport=4000, seq=500, ack=101)], 2))
    sw.process(Batch.from_packets([tcp_flags("A", seq=101, ack=501)], 1))
    upcalls = sw.upcalls
    data = [tcp_flags("A", seq=101 + 10 * i, ack=501) for i in range(50)]
    sw.process(Batch.from_packets(data, 1))
    assert len(sent(sw, 2)) == 52 and sw.upcalls == upcalls   # SYN, ACK, 50 data
    recirc = [l for l in sw.dump_megaflows() if "recirc_id=0x1" in l]
    assert recirc and any("ct_state" in l for l in recirc)


def test_offload_tier_carries_steady_traffic_with_exact_counters():
    flows = "priority=10,tcp,tp_dst=80 actions=output:2\npriority=5,udp actions=controller\n" \
            "priority=1 actions=output:3"
    clock = Clock()
    plain, nic = make(flows, clock=clock), Switch(clock=clock, offload=nic_tier("smartnic"))
    for p in (1, 2, 3, 4):
        nic.add_port(p)
    nic.load(flows)
    udp = raw(Ether() / IP() / UDP(dport=53))
    for i in range(20):
        clock.now = i * 0.1
        for sw in (plain, nic):
            sw.process(Batch.from_packets([tcp(80)] * 10 + [tcp(22)] * 5 + [udp], 1))
    assert ({s.flow.priority: s.n_packets for s in nic.dump_flows()}
            == {s.flow.priority: s.n_packets for s in plain.dump_flows()} == {10: 200, 5: 20, 1: 100})
    assert nic.tier_packets["nic"] > 0.8 * 320
    lines = nic.dump_megaflows()
    assert any("tier:nic" in l and "actions:2" in l for l in lines)
    (ctl,) = [l for l in lines if "userspace" in l or "4294967293" in l or "controller" in l]
    assert "tier:software (" in ctl and "userspace" in ctl


def test_a_batch_of_only_malformed_packets_is_counted_not_fatal():
    sw = make("priority=0 actions=drop")
    sw.process(Batch.from_packets([b"\x01" * 10, b"\x02" * 5], 1))
    assert sum(sw.drop_counts().values()) == 2


def test_evicted_megaflows_report_final_counts_and_tcp_flags_accumulate():
    sw = make("priority=10,tcp actions=output:2")
    seen = []
    sw.on_evict.append(lambda mf, pk, by: seen.append((mf.mf_id, pk, by)))
    syn = raw(Ether() / IP() / TCP(flags="S"))
    ack = raw(Ether() / IP() / TCP(flags="A"))
    sw.process(Batch.from_packets([syn, ack, ack], 1))
    (mf,) = sw.cache.flows.values()
    assert int(sw.cache.tcp_flags[mf.mf_id]) == 0x12
    sw.flush_megaflows()
    assert seen == [(mf.mf_id, 3, 3 * 54)]


def test_conntrack_first_pass_is_not_a_drop():
    sw = make(FIREWALL)
    sw.process(Batch.from_packets([tcp_flags("S", seq=100)], 1))
    assert sw.drop_counts() == {}
