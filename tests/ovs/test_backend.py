"""OvsDatapath on OVS's dummy datapath: ports by ofport_request, atomic bundles, counters read back."""

import time

import pytest

from sbnet.flows.ofctl import parse_flow, parse_group, parse_meter
from sbnet.ovs.backend import DatapathFlow, OvsDatapath
from sbnet.ovs.dummy import OVSError

pytestmark = pytest.mark.ovs

PKT = bytes.fromhex("ffffffffffff0200000000010806000108000604000102000000000"
                    "10a0000010000000000000a000002")      # ARP who-has 10.0.0.2 tell 10.0.0.1


@pytest.fixture(scope="module")
def dp(ovs_required):
    with OvsDatapath.start("br0", "dummy") as d:
        for i in (1, 2):
            d.add_port(f"p{i}", i, type="dummy")
        d.add_tunnel_port("vx", "vxlan", 100)
        yield d


@pytest.fixture
def empty(dp):
    dp.clear()
    return dp


def test_ports_get_the_ofports_asked_for(dp):
    assert dp.ports() == {"p1": 1, "p2": 2, "vx": 100}
    assert sorted(dp.datapath_ports().values()) == [1, 2, 100, 65534]
    with pytest.raises(OVSError, match="ofport"):
        dp.add_port("p3", 2, type="dummy")           # taken: OVS picks another, we refuse
    assert "p3" not in dp.ports()


def test_internal_and_tunnel_ports_come_and_go(dp):
    assert dp.add_internal_port("int0", 7) == 7
    assert dp.add_tunnel_port("gnv", "geneve", 8, remote_ip="192.0.2.9", key=99) == 8
    assert dp.ovs.vsctl("get", "Interface", "gnv", "options").strip() == \
        '{key="99", remote_ip="192.0.2.9"}'
    for name in ("int0", "gnv"):
        dp.delete_port(name)
    assert set(dp.ports()) == {"p1", "p2", "vx"}
    with pytest.raises(ValueError, match="tunnel kind"):
        dp.add_tunnel_port("x", "ipsec")


def test_bundle_applies_groups_meters_and_flows_together(empty):
    g = parse_group("group_id=7,type=all,bucket=output:1,bucket=output:2")
    m = parse_meter("meter=3,kbps,band=type=drop,rate=1000")
    f = parse_flow("table=0,priority=10,in_port=100,tun_id=5 actions=meter:3,group:7")
    empty.bundle(add=[f], groups=[g], meters=[m])
    (s,) = empty.dump_flows()
    assert s.flow == f
    assert "group_id=7" in empty.dump_groups() and empty.dump_meters() == [m]
    m2 = parse_meter("meter=3,pktps,burst,band=type=drop,rate=50,burst_size=20")
    empty.bundle(meters=[m2])           # changed: modified in place
    assert empty.dump_meters() == [m2]
    assert empty.delete_meter(3) == [f]
    assert empty.dump_flows() == [] and empty.dump_meters() == []


def test_bundle_with_one_bad_flow_changes_nothing(empty):
    keep = parse_flow("table=0,priority=5,in_port=1 actions=output:2")
    empty.bundle(add=[keep])
    m = parse_meter("meter=4,kbps,band=type=drop,rate=1000")
    with pytest.raises(OVSError, match="BAD_OUT_GROUP"):
        empty.bundle(add=[parse_flow("table=0,priority=6,in_port=2 actions=output:1"),
                          parse_flow("table=0,priority=7,in_port=2 actions=group:99")],
                     delete=[keep], meters=[m])
    assert [s.flow for s in empty.dump_flows()] == [keep]
    assert empty.dump_meters() == []       # the meter added for it is gone too


def test_counters_trace_and_megaflows(empty):
    f = parse_flow("table=0,priority=10,arp,in_port=1 actions=output:2")
    empty.bundle(add=[f])
    for _ in range(3):
        empty.ovs.appctl("netdev-dummy/receive", "p1", PKT.hex())
    # The dummy netdev queues what it receives: on a loaded machine the last frames may not
    # have been switched by the first revalidation, so read until they have (or time out).
    deadline = time.monotonic() + 10
    while True:
        (s,) = [s for s in empty.dump_flows() if s.flow == f]
        if s.n_packets >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (s.n_packets, s.n_bytes) == (3, 3 * len(PKT))
    assert empty.trace(1, PKT).datapath_actions == "2"
    flows = empty.megaflows()
    assert [(x.packets, x.tier, x.actions) for x in flows] == [(2, "software", "2")]
    empty.bundle(delete=[f])
    assert empty.dump_flows() == []


def test_datapath_flow_tiers():
    line = ("ufid:1b2c, recirc_id(0),in_port(2),eth_type(0x0800),ipv4(frag=no), packets:7, "
            "bytes:700, used:0.5s, offloaded:yes, dp:tc, actions:3")
    f = DatapathFlow.parse(line)
    assert (f.match, f.packets, f.bytes, f.tier, f.actions) == (
        "recirc_id(0),in_port(2),eth_type(0x0800),ipv4(frag=no)", 7, 700, "nic", "3")
    sw = DatapathFlow.parse("recirc_id(0),in_port(1), packets:0, bytes:0, used:never, dp:ovs, "
                            "actions:drop")
    assert (sw.tier, sw.used, sw.actions) == ("software", "never", "drop")


def test_meter_stats(empty):
    pytest.importorskip("sbnet.datapath.meters")
    empty.bundle(add=[parse_flow("table=0,priority=10,in_port=1 actions=meter:3,output:2")],
                 meters=[parse_meter("meter=3,pktps,band=type=drop,rate=1000")])
    empty.ovs.appctl("netdev-dummy/receive", "p1", PKT.hex())
    (st,) = empty.meter_stats()
    assert (st.meter_id, st.flow_count, st.packet_in_count, st.band_packet_count) == (3, 1, 1, 0)


def test_hw_offload_flag_is_in_force_when_vswitchd_starts(ovs_required):
    with OvsDatapath.start("br0", "dummy", hw_offload=True) as d:
        d.add_port("p1", 1, type="dummy")
        assert d.ovs.vsctl("get", "Open_vSwitch", ".", "other_config:hw-offload").strip() == '"true"'
        with open(f"{d.ovs.dir}/ovs-vswitchd.log") as f:
            assert "p1: Assigned flow API" in f.read()      # only with hw-offload on at start
