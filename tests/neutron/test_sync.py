"""Neutron's database is the truth: drift in sbnet's copy, either way, is repaired by the
maintenance task inside neutron-server and by `sbnet neutron-sync --repair`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from sbnet.cli.neutron_sync import neutron_get
from sbnet.southbound.client import Southbound
from sbnet.southbound.sync import compare, read_neutron_rest
from tests.neutron.conftest import MAINTENANCE


def differences(stack) -> list[str]:
    copy = Southbound(stack.sbnet.url).inventory()
    return compare(read_neutron_rest(neutron_get(stack.neutron.url, None)), copy).lines()


def wait_converged(stack, timeout: float) -> float:
    start = time.monotonic()
    while differences(stack):
        assert time.monotonic() - start < timeout, f"still differs: {differences(stack)}"
        time.sleep(0.5)
    return time.monotonic() - start


def behind_neutrons_back(stack, typ: str, ident: str) -> None:
    with stack.store.write() as tx:
        tx.delete(typ, tx.get(typ, ident))


def neutron_sync(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sbnet", "neutron-sync", "--neutron",
                           stack.neutron.url, "--sbnet", stack.sbnet.url, *args],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


def make_drift(stack, name: str) -> tuple[dict, dict, dict]:
    """A network and port deleted from sbnet's copy behind Neutron's back, a network renamed in
    Neutron while sbnet was down, and a network in the copy that Neutron never had."""
    n = stack.neutron
    gone = n.create("networks", name=f"{name}-gone")
    port = n.create("ports", network_id=n.create("networks", name=f"{name}-p")["id"])
    changed = n.create("networks", name=f"{name}-changed")
    wait_converged(stack, 30)
    behind_neutrons_back(stack, "network", gone["id"])
    behind_neutrons_back(stack, "port", port["id"])
    Southbound(stack.sbnet.url).put("network", {
        "id": "00000000-0000-4000-8000-0000000000ee", "name": "stray", "project_id": "x",
        "revision_number": 1, "provider:network_type": "vxlan",
        "provider:segmentation_id": 4242})
    stack.sbnet.stop()
    try:
        stack.neutron.request("PUT", f"networks/{changed['id']}",
                              {"network": {"name": f"{name}-renamed"}})
    finally:
        stack.sbnet.start()
    return gone, port, changed


def test_neutron_sync_repairs_drift_both_ways(stack):
    stack.server.stop_workers()           # no maintenance task: the command alone repairs
    try:
        cli_repairs(stack)
    finally:
        stack.server.start_workers()
        stack.server.wait_workers(120)


def cli_repairs(stack):
    gone, port, changed = make_drift(stack, "cli")
    found = neutron_sync(stack)
    assert found.returncode == 1, found.stderr
    assert f"missing in sbnet: network {gone['id']}" in found.stdout
    assert f"missing in sbnet: port {port['id']}" in found.stdout
    assert f"stale in sbnet: network {changed['id']}" in found.stdout
    assert "not in Neutron: network 00000000-0000-4000-8000-0000000000ee" in found.stdout
    fixed = neutron_sync(stack, "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "0 difference(s) left" in fixed.stdout
    assert differences(stack) == []
    with stack.store.read() as tx:
        assert tx.get("network", changed["id"])["name"] == "cli-renamed"
        assert tx.get("network", "00000000-0000-4000-8000-0000000000ee") is None
    assert neutron_sync(stack).returncode == 0


def test_maintenance_task_repairs_drift_both_ways(stack):
    gone, port, changed = make_drift(stack, "mt")
    assert len(differences(stack)) >= 4
    took = wait_converged(stack, MAINTENANCE * 3 + 30)
    print(f"maintenance converged in {took:.1f}s")
    with stack.store.read() as tx:
        assert tx.get("network", gone["id"]) is not None
        assert tx.get("port", port["id"]) is not None
        assert tx.get("network", changed["id"])["name"] == "mt-renamed"


def test_an_old_revision_never_overwrites_a_newer_copy(stack):
    sb = Southbound(stack.sbnet.url)
    net = stack.neutron.create("networks", name="rev")
    stack.neutron.request("PUT", f"networks/{net['id']}", {"network": {"name": "rev2"}})
    wait_converged(stack, 30)
    assert sb.put("network", net) == "stale"           # revision 1 after revision 2
    with stack.store.read() as tx:
        assert tx.get("network", net["id"])["name"] == "rev2"


def test_binding_needs_a_live_sbnet_agent_and_says_why(stack):
    n = stack.neutron
    net = n.create("networks", name="bind")
    n.request("POST", "subnets", {"subnet": {"network_id": net["id"], "cidr": "10.77.0.0/24",
                                             "ip_version": 4}})
    port = n.create("ports", network_id=net["id"], **{"binding:host_id": "nohost"})
    assert port["binding:vif_type"] == "binding_failed"
    sb = Southbound(stack.sbnet.url)
    sb.request("PUT", "sbnet/hosts/ref1", {"host": {"tunnel_ip": "192.0.2.11",
                                                    "agent_type": "sbnet-reference"}})
    sb.request("PUT", "sbnet/hosts/ovs1", {"host": {"tunnel_ip": "192.0.2.12"}})
    tap = n.create("ports", network_id=net["id"], **{"binding:host_id": "ref1"})
    assert tap["binding:vif_type"] == "tap"
    ovs = n.create("ports", network_id=net["id"], **{"binding:host_id": "ovs1"})
    assert ovs["binding:vif_type"] == "ovs"
    assert ovs["binding:vif_details"]["datapath_type"] == "netdev"
    # A VLAN network on a physical network the host has no port on: refused.
    vlan = n.create("networks", name="v", **{"provider:network_type": "vlan",
                                             "provider:physical_network": "physnet1"})
    refused = n.create("ports", network_id=vlan["id"], **{"binding:host_id": "ovs1"})
    assert refused["binding:vif_type"] == "binding_failed"
    log = stack.server.log.read_text()
    assert "no sbnet agent has registered host 'nohost'" in log
    assert "host ovs1 has no port on physical network 'physnet1'" in log
    # The port that could not bind moves to a host that can: it binds there.
    moved = n.request("PUT", f"ports/{refused['id']}",
                      {"port": {"binding:host_id": "ref1"}})["port"]
    assert moved["binding:vif_type"] == "binding_failed"   # ref1 has no physnet1 either
    sb.request("PUT", "sbnet/hosts/ref1", {"host": {"tunnel_ip": "192.0.2.11",
                                                    "agent_type": "sbnet-reference",
                                                    "physnets": {"physnet1": 900}}})
    moved = n.request("PUT", f"ports/{refused['id']}",
                      {"port": {"binding:host_id": "ref1"}})["port"]
    assert moved["binding:vif_type"] == "tap"

