"""Meters in the reference switch: drop bands hold traffic to their rate on every tier, counted and refused as OVS does."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath import odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.meters import MeterError
from sbnet.datapath.switch import Switch
from sbnet.flows import actions as A
from sbnet.flows.ofctl import format_meter, parse_flow, parse_meter
from sbnet.offload import nic_tier
from sbnet.ovs.dummy import DummyOVS, require_ovs
from sbnet.ovs.trace import parse_datapath_actions


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(text: str, offload=None) -> tuple[Switch, Clock]:
    clock = Clock()
    sw = Switch(clock=clock, offload=offload)
    for p in (1, 2, 3, 4):
        sw.add_port(p)
    sw.load(text)
    return sw, clock


def udp(size: int = 100, dport: int = 53) -> bytes:
    """A UDP frame of exactly `size` bytes."""
    head = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(
        src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=dport)
    return raw(head / (b"\x00" * (size - len(raw(head)))))


def delivered(sw: Switch, port: int) -> list[bytes]:
    return sw.ports[port].take_sent()


def offer(sw: Switch, clock: Clock, seconds: float, frames: list[bytes], tick: float = 0.01,
          port: int = 1, out: int = 2) -> list[tuple[float, list[bytes]]]:
    """Send `frames` every `tick` for `seconds` of switch time: what left `out` per tick."""
    got = []
    for i in range(round(seconds / tick)):
        clock.now = i * tick
        sw.process(Batch.from_packets(frames, port))
        got.append((clock.now, delivered(sw, out)))
    return got


def after(got, t0: float) -> list[bytes]:
    return [p for t, pkts in got if t >= t0 for p in pkts]


def stats(sw: Switch, meter_id: int):
    (s,) = [s for s in sw.meter_stats() if s.meter_id == meter_id]
    return s


# -- rates -----------------------------------------------------------------------------

def test_pktps_stream_at_twice_the_rate_passes_at_the_rate():
    sw, clock = make("meter=1,pktps,band=type=drop,rate=1000\nin_port=1 actions=meter:1,output:2")
    got = offer(sw, clock, 10.0, [udp()] * 20)          # 2000 packets/s for 10 s
    steady = len(after(got, 1.0)) / 9.0                 # past the first second's burst
    assert steady == pytest.approx(1000, rel=0.05)
    s = stats(sw, 1)
    assert s.packet_in_count == 20_000
    assert s.band_packet_count == 20_000 - sum(len(p) for _, p in got)


def test_kbps_stream_of_mixed_sizes_at_twice_the_rate_passes_at_the_rate():
    sw, clock = make("meter=7,kbps,band=type=drop,rate=800\nin_port=1 actions=meter:7,output:2")
    frames = [udp(200), udp(800), udp(500), udp(500)]   # 2000 bytes per 10 ms = 1600 kbps
    got = offer(sw, clock, 10.0, frames)
    bits = sum(len(p) for p in after(got, 1.0)) * 8
    assert bits / 9.0 / 1000 == pytest.approx(800, rel=0.05)


def test_a_burst_passes_burst_size_then_the_rate_refills_the_bucket():
    sw, clock = make("meter=2,pktps,burst,band=type=drop,rate=10,burst_size=50\n"
                     "in_port=1 actions=meter:2,output:2")
    clock.now = 100.0                        # idle for long: the bucket holds no more than burst
    sw.process(Batch.from_packets([udp()] * 200, 1))
    assert len(delivered(sw, 2)) == 50
    clock.now = 101.0
    sw.process(Batch.from_packets([udp()] * 200, 1))
    assert len(delivered(sw, 2)) == 10


def test_without_a_burst_size_the_bucket_holds_one_second_of_rate():
    sw, _ = make("meter=1,pktps,band=type=drop,rate=5\nmeter=2,kbps,band=type=drop,rate=64\n"
                 "in_port=1 actions=meter:1,output:2\nin_port=3 actions=meter:2,output:4")
    sw.process(Batch.from_packets([udp(125)] * 30, 1))
    sw.process(Batch.from_packets([udp(125)] * 100, 3))
    assert len(delivered(sw, 2)) == 5
    assert len(delivered(sw, 4)) == 64          # 64 kb / 1000 bits per frame


def test_kbps_drops_a_packet_too_big_for_the_bucket_and_passes_smaller_ones_after_it():
    sw, _ = make("meter=1,kbps,burst,band=type=drop,rate=1,burst_size=16\n"
                 "in_port=1 actions=meter:1,output:2")
    sizes = [1500, 1500, 1500, 100, 100, 100, 300]     # 16000 bits: 12000, then 800 each
    sw.process(Batch.from_packets([udp(s) for s in sizes], 1))
    assert [len(p) for p in delivered(sw, 2)] == [1500, 100, 100, 100]
    s = stats(sw, 1)
    assert (s.band_packet_count, s.band_byte_count) == (3, 3300)


# -- counters, the cache and the NIC tier ------------------------------------------------

def test_meter_stats_count_packets_in_and_band_drops_as_ovs_ofctl_shows_them():
    sw, clock = make("meter=3,pktps,burst,band=type=drop,rate=10,burst_size=10\n"
                     "in_port=1 actions=meter:3,output:2\nin_port=3 actions=meter:3,output:4\n"
                     "in_port=2 actions=output:1")
    sw.process(Batch.from_packets([udp(100)] * 8, 1))
    sw.process(Batch.from_packets([udp(200)] * 8, 3))
    clock.now = 2.5
    s = stats(sw, 3)
    assert (s.flow_count, s.packet_in_count, s.byte_in_count) == (2, 16, 2400)
    assert (s.band_packet_count, s.band_byte_count) == (6, 1200)   # the last 6 of port 3's
    assert len(delivered(sw, 2)) == 8 and len(delivered(sw, 4)) == 2
    assert str(s) == ("meter:3 flow_count:2 packet_in_count:16 byte_in_count:2400 "
                      "duration:2.500s bands:\n0: packet_count:6 byte_count:1200")
    assert sw.drop_counts()["meter band drop"] == 6
    assert [format_meter(m) for m in sw.dump_meters()] == [
        "meter=3,pktps,burst,band=type=drop,rate=10,burst_size=10"]


def test_megaflow_cache_hits_are_metered_and_counted_like_ovs():
    sw, clock = make("meter=1,pktps,band=type=drop,rate=100\nin_port=1 actions=meter:1,output:2")
    got = offer(sw, clock, 3.0, [udp()] * 4)            # 400/s against 100/s
    assert sw.upcalls == 1                              # every later packet hit the cache
    (line,) = sw.dump_megaflows()
    assert "actions:meter(0),2" in line
    assert "packets:1200," in line                      # OVS counts the packets the meter drops
    assert len(after(got, 1.0)) / 2.0 == pytest.approx(100, rel=0.05)
    (rule,) = sw.dump_flows()
    assert rule.n_packets == 1200


def test_meters_drop_packets_the_nic_tier_carries():
    flows = "meter=1,kbps,band=type=drop,rate=2000\nin_port=1 actions=meter:1,output:2"
    plain, pc = make(flows)
    nic, nc = make(flows, offload=nic_tier("smartnic"))
    frames = [udp(1000)] * 5                            # 4000 kbps against 2000
    a, b = offer(plain, pc, 4.0, frames), offer(nic, nc, 4.0, frames)
    assert nic.tier_packets["nic"] > 0.9 * 2000
    assert "tier:nic" in nic.dump_megaflows()[0]
    assert [len(p) for _, p in a] == [len(p) for _, p in b]
    bits = sum(len(p) for p in after(b, 1.0)) * 8
    assert bits / 3.0 / 1000 == pytest.approx(2000, rel=0.05)
    assert stats(nic, 1).band_packet_count == stats(plain, 1).band_packet_count > 0


def test_a_meter_after_an_output_limits_only_the_later_outputs_and_sees_the_pushed_vlan():
    sw, _ = make("meter=1,pktps,burst,band=type=drop,rate=1,burst_size=3\n"
                 "table=0,in_port=1 actions=push_vlan:0x8100,set_field:4196->vlan_vid,"
                 "output:3,resubmit(,1)\n"
                 "table=1 actions=meter:1,output:2")
    assert sw.trace(1, udp()).datapath_actions() == "push_vlan(vid=100,pcp=0),3,meter(0),2"
    sw.process(Batch.from_packets([udp(100)] * 10, 1))
    assert len(delivered(sw, 3)) == 10
    out = delivered(sw, 2)
    assert len(out) == 3 and all(len(p) == 104 and p[12:14] == b"\x81\x00" for p in out)
    assert stats(sw, 1).byte_in_count == 1040


def test_two_meters_in_a_row_each_meter_what_the_other_let_through():
    sw, _ = make("meter=1,pktps,band=type=drop,rate=8\nmeter=2,pktps,band=type=drop,rate=5\n"
                 "table=0,in_port=1 actions=meter:1,resubmit(,1)\ntable=1 actions=meter:2,output:2")
    sw.process(Batch.from_packets([udp()] * 20, 1))
    assert len(delivered(sw, 2)) == 5
    assert (stats(sw, 1).packet_in_count, stats(sw, 2).packet_in_count) == (20, 8)


# -- installing, modifying and deleting --------------------------------------------------

def test_a_flow_naming_an_unknown_meter_is_refused_and_nothing_of_the_bundle_installs():
    sw, _ = make("")
    ok, bad = parse_flow("in_port=2 actions=output:1"), parse_flow("in_port=1 actions=meter:9,output:2")
    with pytest.raises(MeterError, match="meter 9") as exc:
        sw.bundle(add=[ok, bad])
    assert exc.value.code == "OFPMMFC_INVALID_METER"     # what OVS 3.1 answers
    assert sw.rules() == [] and sw.dump_meters() == []
    sw.bundle(add=[ok, bad], meters=[parse_meter("meter=9,pktps,band=type=drop,rate=1")])
    assert len(sw.rules()) == 2 and [m.meter_id for m in sw.dump_meters()] == [9]


@pytest.mark.parametrize("call,mod,code", [
    ("add_meter", A.MeterMod(1, 10, "pktps"), "OFPMMFC_METER_EXISTS"),
    ("modify_meter", A.MeterMod(2, 10, "pktps"), "OFPMMFC_UNKNOWN_METER"),
    ("add_meter", A.MeterMod(0, 10, "pktps"), "OFPMMFC_INVALID_METER"),
    ("add_meter", A.MeterMod(0xFFFF0001, 10, "pktps"), "OFPMMFC_INVALID_METER"),
    ("add_meter", A.MeterMod(3, 0, "kbps"), "OFPMMFC_BAD_RATE"),
    ("add_meter", A.MeterMod(3, 10, "bps"), "OFPMMFC_BAD_FLAGS"),
])
def test_meter_mods_ovs_refuses_are_refused_with_its_error(call, mod, code):
    sw, _ = make("meter=1,pktps,band=type=drop,rate=5")
    with pytest.raises(MeterError) as exc:
        getattr(sw, call)(mod)
    assert exc.value.code == code
    assert [format_meter(m) for m in sw.dump_meters()] == ["meter=1,pktps,band=type=drop,rate=5"]


def test_deleting_a_meter_deletes_the_flows_naming_it_and_frees_its_datapath_id():
    sw, _ = make("meter=1,pktps,band=type=drop,rate=5\nmeter=5,pktps,band=type=drop,rate=5\n"
                 "in_port=1 actions=meter:1,output:2\nin_port=3 actions=meter:5,output:4\n"
                 "in_port=2 actions=output:1")
    sw.process(Batch.from_packets([udp()] * 3, 1))
    assert len(delivered(sw, 2)) == 3
    gone = sw.delete_meter(1)
    assert gone == [parse_flow("in_port=1 actions=meter:1,output:2")]
    assert {r.flow for r in sw.rules()} == {
        parse_flow("in_port=2 actions=output:1"), parse_flow("in_port=3 actions=meter:5,output:4")}
    assert not any("meter(0)" in line for line in sw.dump_megaflows())
    sw.process(Batch.from_packets([udp()] * 3, 1))
    assert delivered(sw, 2) == []                       # the flow went with its meter
    assert sw.delete_meter(1) == []                     # deleting it again is no error
    sw.bundle(add=[parse_flow("in_port=1 actions=meter:8,output:2")],
              meters=[A.MeterMod(8, 5, "pktps")])
    assert sw.trace(1, udp()).datapath_actions() == "meter(0),2"   # id 0 reused, as ofproto-dpif
    assert sw.trace(3, udp()).datapath_actions() == "meter(1),4"


def test_modifying_a_meter_refills_its_bucket_restarts_its_counters_and_keeps_the_megaflow():
    sw, clock = make("meter=1,pktps,band=type=drop,rate=5\nin_port=1 actions=meter:1,output:2")
    sw.process(Batch.from_packets([udp()] * 10, 1))
    assert len(delivered(sw, 2)) == 5
    clock.now = 0.2
    sw.modify_meter(A.MeterMod(1, 20, "pktps"))
    assert (stats(sw, 1).packet_in_count, stats(sw, 1).duration) == (0, 0.2)
    sw.process(Batch.from_packets([udp()] * 30, 1))
    assert len(delivered(sw, 2)) == 20 and sw.upcalls == 1
    sw.load("meter=1,pktps,band=type=drop,rate=20")      # unchanged in a bundle: left as it is
    assert stats(sw, 1).packet_in_count == 30


# -- against Open vSwitch ----------------------------------------------------------------

TRACE_TABLES = """
table=0,in_port=1 actions=meter:5,output:2
table=0,in_port=2 actions=meter:1,mod_dl_src:00:00:00:00:00:09,resubmit(,1)
table=0,in_port=3 actions=output:4,resubmit(,2)
table=1 actions=meter:3,output:3
table=2 actions=meter:1,push_vlan:0x8100,set_field:4196->vlan_vid,output:1
"""
TRACE_METERS = """
meter=1,kbps,band=type=drop,rate=1000
meter=5,pktps,burst,band=type=drop,rate=100,burst_size=50
meter=3,kbps,band=type=drop,rate=2000
"""


@pytest.fixture(scope="module")
def ovs():
    require_ovs()
    with DummyOVS(4) as sw:
        yield sw


def _ovs_meter_stats(ovs: DummyOVS) -> dict[int, tuple[int, int, int, int]]:
    text = ovs.ofctl("meter-stats", options=("-O", "OpenFlow13"))
    return {int(m[0]): tuple(int(x) for x in m[1:]) for m in re.findall(
        r"meter:(\d+) flow_count:\d+ packet_in_count:(\d+) byte_in_count:(\d+) .*?\n"
        r"0: packet_count:(\d+) byte_count:(\d+)", text)}


def _same_datapath_actions(ovs: DummyOVS, sw: Switch, ports=(1, 2, 3)) -> None:
    port_map = ovs.dpif_port_map()
    for p in ports:
        theirs, ours = ovs.trace(p, udp()).datapath_actions, sw.trace(p, udp())
        assert parse_datapath_actions(theirs, port_map) == odp.canonical(ours.actions), \
            f"port {p}: OVS {theirs!r}, sbnet {ours.datapath_actions()!r}"


@pytest.mark.ovs
def test_datapath_meter_ids_in_traces_match_ovs(ovs):
    ovs.replace_flows(TRACE_TABLES, meters=TRACE_METERS)
    sw, _ = make(TRACE_METERS + TRACE_TABLES)
    assert sw.trace(2, udp()).datapath_actions() == \
        "meter(0),meter(2),set(eth(src=00:00:00:00:00:09)),3"
    _same_datapath_actions(ovs, sw)
    # Deleting meter 1 deletes its flows and frees datapath id 0 for the next meter.
    ovs.ofctl("del-meter", "meter=1", options=("-O", "OpenFlow13"))
    sw.delete_meter(1)
    theirs_left = [ln for ln in ovs.dump_flows().splitlines() if "actions=" in ln]
    assert len(sw.rules()) == len(theirs_left) == 3
    assert not any("meter:1," in ln for ln in theirs_left)
    extra_meter, extra_flow = "meter=7,pktps,band=type=drop,rate=10", "table=0,in_port=2 actions=meter:7,output:3"
    ovs.add_meters(extra_meter)
    ovs.add_flows(extra_flow)
    sw.load(extra_meter + "\n" + extra_flow)
    assert sw.trace(2, udp()).datapath_actions() == "meter(0),3"
    _same_datapath_actions(ovs, sw)


@pytest.mark.ovs
def test_meter_counts_for_a_burst_match_ovs(ovs):
    """Bursts arriving faster than one token refills: OVS's dummy datapath and ours must
    pass and drop exactly the same packets (burst sizes, default burst, greedy kbps)."""
    meters = ("meter=1,pktps,burst,band=type=drop,rate=1,burst_size=10\n"
              "meter=2,pktps,band=type=drop,rate=4\n"
              "meter=3,kbps,burst,band=type=drop,rate=1,burst_size=8\n"
              "meter=4,kbps,burst,band=type=drop,rate=1,burst_size=8\n")
    flows = ("in_port=1 actions=meter:1,output:2\nin_port=2 actions=meter:2,output:1\n"
             "in_port=3 actions=meter:3,output:4\nin_port=4 actions=meter:4,output:3\n")
    sends = {1: [udp(100)] * 30, 2: [udp(150)] * 20, 3: [udp(125)] * 20,
             4: [udp(s) for s in (600, 500, 300, 125, 100, 1000, 60)]}
    ovs.replace_flows(flows, meters=meters)
    for port, frames in sends.items():
        for f in frames:
            ovs.receive(port, f)
    sw, _ = make(meters + flows)
    for port, frames in sends.items():
        sw.process(Batch.from_packets(frames, port))
    ours = {s.meter_id: (s.packet_in_count, s.byte_in_count, s.band_packet_count,
                         s.band_byte_count) for s in sw.meter_stats()}
    assert ours == _ovs_meter_stats(ovs)
    # 8000 bits: 600 B passes, 500 B does not fit, 300 B and then 100 B still do, the rest not.
    assert ours[4][2:] == (4, 500 + 125 + 1000 + 60)


def test_datapath_meter_ids_are_the_lowest_free():
    sw, _ = make("")
    for mid in (4, 9, 2):
        sw.add_meter(A.MeterMod(mid, 10, "pktps"))
    assert [sw.meters.dp_id(m) for m in (4, 9, 2)] == [0, 1, 2]
    sw.delete_meter(9)
    sw.add_meter(A.MeterMod(11, 10, "pktps"))
    assert sw.meters.dp_id(11) == 1
    assert np.all(sw.meters.run(99, np.array([60, 60]), 0.0))     # no such datapath meter: pass
