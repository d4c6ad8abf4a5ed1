"""Bindings tell the truth: a port is told how to plug by the datapath its host's live agent
registered, binding_failed with no live agent, and the agents list shows who is alive."""

from __future__ import annotations

import time

from sbnet.agent.agent import ApiSource, HostAgent
from sbnet.agent.embedded import Cluster
from sbnet.api.hosts import Heartbeats
from sbnet.api.local import LocalApi
from tests.api.apihelpers import start_server, stop_server
from tests.api.oscrun import Osc


def network(api) -> dict:
    net = api.create("networks", project="p1", name="n")
    api.create("subnets", project="p1", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4)
    return net


def port(api, net, host) -> dict:
    return api.create("ports", project="p1", network_id=net["id"], **{"binding:host_id": host})


def test_a_binding_on_a_host_with_no_agent_fails_until_one_registers():
    api = LocalApi()
    net = network(api)
    early = port(api, net, "h1")
    assert (early["binding:vif_type"], early["binding:vif_details"]) == ("binding_failed", {})
    assert api.request("GET", "agents")["agents"] == []
    cluster = Cluster(["h1"])
    agent = HostAgent("h1", cluster.hosts["h1"].switch, ApiSource(api.client), "192.0.2.1")
    agent.start()
    [a] = api.request("GET", "agents")["agents"]
    assert (a["host"], a["alive"], a["agent_type"], a["binary"], a["admin_state_up"]) == (
        "h1", True, "sbnet reference switch agent", "sbnet-agent", True)
    assert a["configurations"]["tunnel_ip"] == "192.0.2.1"
    assert api.request("GET", f"agents/{a['id']}")["agent"]["host"] == "h1"
    # The agent's arrival binds what had failed; new ports bind at once: tap devices.
    assert api.request("GET", f"ports/{early['id']}")["port"]["binding:vif_type"] == "tap"
    assert port(api, net, "h1")["binding:vif_type"] == "tap"
    # Another host with no agent still fails; a port not bound anywhere is unbound.
    assert port(api, net, "h9")["binding:vif_type"] == "binding_failed"
    assert port(api, net, "")["binding:vif_type"] == "unbound"


def test_an_ovs_host_tells_its_bridge_and_datapath_type():
    api = LocalApi()
    net = network(api)
    api.request("PUT", "sbnet/hosts/c1", {"host": {"tunnel_ip": "192.0.2.7", "datapath": "ovs",
                                                   "bridge": "br-int",
                                                   "datapath_type": "netdev"}})
    p = port(api, net, "c1")
    assert p["binding:vif_type"] == "ovs"
    assert p["binding:vif_details"] == {"port_filter": True, "connectivity": "l2",
                                        "ovs_hybrid_plug": False, "datapath_type": "netdev",
                                        "bridge_name": "br-int"}
    bad = api.client.put("/v2.0/sbnet/hosts/c2", json={"host": {"tunnel_ip": "192.0.2.8",
                                                                "datapath": "linuxbridge"}},
                         headers={"X-Project-Id": "a", "X-Roles": "admin"})
    assert bad.status_code == 400 and "datapath" in bad.text


def test_an_agent_that_stops_beating_is_down_and_new_bindings_fail():
    api = LocalApi()
    net = network(api)
    api.request("PUT", "sbnet/hosts/c1", {"host": {"tunnel_ip": "192.0.2.7"}})
    beats = Heartbeats.of(api.store)
    beats.down_after = 0.3
    assert port(api, net, "c1")["binding:vif_type"] == "ovs"
    time.sleep(0.4)
    [a] = api.request("GET", "agents")["agents"]
    assert a["alive"] is False
    assert port(api, net, "c1")["binding:vif_type"] == "binding_failed"
    api.request("PUT", "sbnet/hosts/c1", {"host": {"tunnel_ip": "192.0.2.7"}})   # a beat
    assert api.request("GET", "agents")["agents"][0]["alive"] is True


def test_the_openstack_cli_lists_the_agents(tmp_path):
    proc, url = start_server(f"sqlite:///{tmp_path}/db.sqlite")
    try:
        import httpx
        r = httpx.put(f"{url}/v2.0/sbnet/hosts/compute1",
                      json={"host": {"tunnel_ip": "192.0.2.5", "datapath": "ovs",
                                     "datapath_type": "netdev"}},
                      headers={"X-Project-Id": "admin", "X-Roles": "admin"})
        assert r.status_code == 200, r.text
        [row] = Osc(url)("network agent list -f json")
        assert (row["Host"], row["Agent Type"], row["Alive"], row["State"], row["Binary"]) == (
            "compute1", "Open vSwitch agent", True, True, "sbnet-agent")
    finally:
        stop_server(proc)


def test_agents_are_the_operators_a_member_lists_none_and_pages_work():
    api = LocalApi()
    for n in range(3):
        api.request("PUT", f"sbnet/hosts/c{n}", {"host": {"tunnel_ip": f"192.0.2.{n + 1}"}})
    # As Neutron's policy: a member's list is empty (200), a member's show is 404.
    assert api.request("GET", "agents", project="p1", admin=False) == {"agents": []}
    some = api.request("GET", "agents")["agents"][0]["id"]
    r = api.client.get(f"/v2.0/agents/{some}", headers={"X-Project-Id": "p1", "X-Roles": "member"})
    assert r.status_code == 404 and r.json()["NeutronError"]["type"] == "AgentNotFound"
    # Filters, sorting and pages with links, as on every list.
    page = api.request("GET", "agents?sort_key=host&sort_dir=desc&limit=2")
    assert [a["host"] for a in page["agents"]] == ["c2", "c1"]
    assert [link["rel"] for link in page["agents_links"]] == ["next"]
    nxt = page["agents_links"][0]["href"].split("/v2.0/")[1]
    assert [a["host"] for a in api.request("GET", nxt)["agents"]] == ["c0"]
    assert [a["host"] for a in api.request("GET", "agents?host=c1")["agents"]] == ["c1"]
