"""Topology helpers that need no root: skip-or-fail policy, unique names, the hand-written flows."""

import os

import pytest

from sbnet.agent import netns
from sbnet.agent.netns import Host, Topology, Vm, overlay_flows
from sbnet.flows.ofctl import parse_file


def test_missing_privileges_skip_locally_and_fail_in_ci(monkeypatch):
    monkeypatch.setattr(netns, "netns_available", lambda: "needs root")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        netns.require_netns()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run them"):
        netns.require_netns()


def test_missing_ovs_skips_only_tests_that_need_it(monkeypatch):
    import sbnet.ovs.dummy
    monkeypatch.setattr(netns, "netns_available", lambda: None)
    monkeypatch.setattr(sbnet.ovs.dummy, "ovs_available", lambda: False)
    monkeypatch.delenv("CI", raising=False)
    netns.require_netns()                       # the reference switch needs no OVS
    with pytest.raises(pytest.skip.Exception, match="needs Open vSwitch"):
        netns.require_netns(ovs=True)


def test_topologies_get_distinct_names(monkeypatch):
    monkeypatch.setattr(netns, "netns_available", lambda: None)
    a, b = Topology(), Topology()
    try:
        assert a.id != b.id and a.ns_name("h1") != b.ns_name("h1")
        assert a.ns_name("h1").startswith(f"sbnet-{os.getpid()}-")
    finally:
        a.close()
        b.close()


def test_overlay_flows_are_valid_and_symmetric():
    h1 = Host("h1", "ns1", "ovs", 1, "10.250.0.1", "02:fe:00:00:00:01")
    h2 = Host("h2", "ns2", "ovs", 2, "10.250.0.2", "02:fe:00:00:00:02")
    vm1 = Vm("vm1", "n", h1, "tap1", 1, "02:00:00:01:00:01", "10.0.0.1/24")
    vm2 = Vm("vm2", "n", h2, "tap1", 1, "02:00:00:02:00:01", "10.0.0.2/24")
    flows = parse_file(overlay_flows(vm1, vm2, 7, 100)).flows
    assert len(flows) == 7
    out = [f for f in flows if ("in_port", 1, None) in f.match.items]
    assert all("10.250.0.2->tun_dst" in str(f) and "output:100" in str(f) for f in out)


def test_ipv6_vm_fields_and_dad_states():
    from sbnet.agent.netns import Ipv6Address
    h1 = Host("h1", "ns1", "ovs", 1, "10.250.0.1", "02:fe:00:00:00:01")
    v6only = Vm("vm1", "n", h1, "tap1", 1, "02:00:00:01:00:01", None,
                ip6=("2001:db8::5/64",), gateway6="2001:db8::1")
    assert (v6only.address, v6only.address6) == (None, "2001:db8::5")
    v4only = Vm("vm2", "n", h1, "tap2", 2, "02:00:00:01:00:02", "10.0.0.2/24")
    assert (v4only.address, v4only.address6) == ("10.0.0.2", None)
    # A failed address stays tentative in the kernel's flags: DAD is over all the same.
    assert Ipv6Address("2001:db8::5/64", "global", True, True).settled
    assert not Ipv6Address("2001:db8::5/64", "global", True, False).settled
    assert Ipv6Address("2001:db8::5/64", "global", False, False).settled


def _sg_host(host, vm, remote):
    """A reference Switch with `vm` on port 1, the underlay on port 1000 and the VXLAN
    port 100, loaded with overlay_flows(stateful=True)."""
    from sbnet.datapath.switch import Switch
    from sbnet.datapath.tunnel import TunnelPort
    sw = Switch(clock=lambda: 0.0)
    sw.add_port(vm.ofport)
    sw.add_port(1000)
    sw.underlay.add_port(1000, host.underlay_mac, mtu=1500)
    sw.underlay.add_local(host.underlay_ip)
    sw.underlay.add_route(remote.host.underlay_ip + "/32", 1000)
    sw.underlay.add_neighbour(remote.host.underlay_ip, remote.host.underlay_mac)
    sw.add_tunnel_port(TunnelPort(100, "vxlan", local_ip=host.underlay_ip, key="flow"))
    sw.load(overlay_flows(vm, remote, 7, 100, stateful=True))
    return sw


def test_stateful_overlay_flows_pass_replies_and_allowed_connections_only():
    """Two reference switches wired underlay to underlay: a TCP handshake to port 5201 and
    a ping pass both ways; a SYN to a port the group does not open is dropped at the
    receiving host, whichever side sends it; a stray ACK (invalid) is dropped too."""
    from sbnet.agent.traffic import Endpoint, icmp_echo, tcp
    from sbnet.datapath.batch import Batch
    h1 = Host("h1", "ns1", "reference", 1, "10.250.0.1", "02:fe:00:00:00:01")
    h2 = Host("h2", "ns2", "reference", 2, "10.250.0.2", "02:fe:00:00:00:02")
    vm1 = Vm("vm1", "n", h1, "tap1", 1, "02:00:00:01:00:01", "10.0.0.1/24")
    vm2 = Vm("vm2", "n", h2, "tap1", 1, "02:00:00:02:00:01", "10.0.0.2/24")
    sws = {"vm1": _sg_host(h1, vm1, vm2), "vm2": _sg_host(h2, vm2, vm1)}
    a, b = (Endpoint(v.name, v.mac, v.address) for v in (vm1, vm2))

    def send(frame: bytes, src=vm1, dst=vm2) -> bool:
        """`src` sends `frame`; True when it comes out of `dst`'s port, unchanged."""
        wire = [pb.packets()[0] for p, pb in sws[src.name].process(Batch.from_packets([frame], 1))
                if p == 1000]
        if not wire:
            return False
        got = sws[dst.name].process(Batch.from_packets(wire, 1000))
        return [p for p, _ in got] == [1] and got[0][1].packets()[0] == frame

    back = {"src": vm2, "dst": vm1}
    assert send(tcp(a, b, 40000, 5201, "S", seq=100))
    assert send(tcp(b, a, 5201, 40000, "SA", seq=500, ack=101), **back)
    assert send(tcp(a, b, 40000, 5201, "A", seq=101, ack=501))
    assert send(tcp(b, a, 5201, 40000, "PA", seq=501, ack=101, payload=b"hi"), **back)
    assert send(icmp_echo(a, b, 9, 1)) and send(icmp_echo(b, a, 9, 1, reply=True), **back)
    assert send(icmp_echo(b, a, 10, 1), **back) and send(icmp_echo(a, b, 10, 1, reply=True))
    assert not send(tcp(b, a, 40001, 7000, "S", seq=1), **back)      # unsolicited
    assert not send(tcp(a, b, 40002, 7000, "S", seq=1))              # not let in
    assert not send(tcp(b, a, 5202, 40003, "A", seq=7, ack=9), **back)   # invalid
