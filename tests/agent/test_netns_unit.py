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
