"""The host agent against the real API: follows the feed, plugs, reports, restarts without a flush."""

from __future__ import annotations

import time

import httpx
import pytest

from sbnet.agent.agent import ApiSource, HostAgent
from sbnet.agent.embedded import Cluster
from sbnet.api.local import LocalApi
from tests.compiler.scenario import icmp, tcp

HOSTS = ("h1", "h2")


@pytest.fixture
def cloud():
    api = LocalApi()
    cluster = Cluster(list(HOSTS))
    source = ApiSource(api.client)
    agents = {h: HostAgent(h, cluster.hosts[h].switch, source, cluster.hosts[h].tunnel_ip)
              for h in HOSTS}
    for a in agents.values():
        a.start()
    return api, cluster, agents


def sync(agents):
    return {h: a.step() for h, a in agents.items()}


def network(api) -> dict:
    net = api.create("networks", project="p1", name="n")
    api.create("subnets", project="p1", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4)
    return net


def vm(api, cluster, net, host, **kw):
    p = api.create("ports", project="p1", network_id=net["id"], **{"binding:host_id": host}, **kw)
    cluster.plug(p["id"], host)           # Nova plugs the tap; the agent finds it by name
    return p


def test_hosts_register_and_ports_go_active_when_plugged(cloud):
    api, cluster, agents = cloud
    hosts = api.request("GET", "sbnet/hosts")["hosts"]
    assert {(h["name"], h["tunnel_ip"]) for h in hosts} == {
        (h, cluster.hosts[h].tunnel_ip) for h in HOSTS}
    net = network(api)
    a = vm(api, cluster, net, "h1")
    unplugged = api.create("ports", project="p1", network_id=net["id"],
                           **{"binding:host_id": "h2"})
    reports = sync(agents)
    assert reports["h1"].up == [a["id"]] and not reports["h2"].up
    assert api.request("GET", f"ports/{a['id']}")["port"]["status"] == "ACTIVE"
    assert api.request("GET", f"ports/{unplugged['id']}")["port"]["status"] == "DOWN"
    # Nothing changed since: the next step does nothing at all.
    sync(agents)
    assert all(a.step() is None for a in agents.values())
    # Unplugging the VIF (the VM is gone) takes the port down.
    cluster.unplug(a["id"])
    assert agents["h1"].step().down == [a["id"]]
    assert api.request("GET", f"ports/{a['id']}")["port"]["status"] == "DOWN"


def test_a_sync_that_changes_no_flow_sends_the_datapath_nothing(cloud, monkeypatch):
    api, cluster, agents = cloud
    net = network(api)
    a = vm(api, cluster, net, "h1")
    sync(agents)
    switch, bundles = cluster.hosts["h1"].switch, []
    real = switch.bundle
    monkeypatch.setattr(switch, "bundle", lambda *args, **kw: (bundles.append(kw), real(*args, **kw)))
    api.update("ports", a["id"], name="renamed")          # no flow depends on a name
    report = agents["h1"].step()
    assert report is not None and report.changed == 0 and bundles == []
    b = vm(api, cluster, net, "h1")
    assert agents["h1"].step().added and len(bundles) == 1
    assert cluster.send(a["id"], [icmp(a, b)]).to(b["id"])


def test_traffic_flows_once_both_agents_synced_and_stops_when_the_port_goes(cloud):
    api, cluster, agents = cloud
    net = network(api)
    a, b = vm(api, cluster, net, "h1"), vm(api, cluster, net, "h2")
    sync(agents)
    sync(agents)                          # the status reports come back through the feed
    assert cluster.send(a["id"], [icmp(a, b)] * 3).to(b["id"])
    # Per-port counters go to the API: a's VIF gave the switch 3 frames, b's got 3.
    for agent in agents.values():
        agent.report_counters()
    sa = api.request("GET", f"sbnet/ports/{a['id']}/stats")["stats"]
    sb = api.request("GET", f"sbnet/ports/{b['id']}/stats")["stats"]
    assert (sa["host"], sa["rx_packets"], sb["host"], sb["tx_packets"]) == ("h1", 3, "h2", 3)
    assert sb["tx_bytes"] == 3 * len(icmp(a, b))
    api.delete("ports", b["id"])
    sync(agents)
    assert not cluster.send(a["id"], [icmp(a, b)]).total


def test_restart_reconciles_without_flushing_and_connections_survive(cloud):
    api, cluster, agents = cloud
    net = network(api)
    a, b = vm(api, cluster, net, "h1"), vm(api, cluster, net, "h2")
    sync(agents)
    sync(agents)
    syn = cluster.send(a["id"], [tcp(a, b, 40000, 22, "S", seq=1)]).to(b["id"])
    synack = cluster.send(b["id"], [tcp(b, a, 22, 40000, "SA", seq=9, ack=2)]).to(a["id"])
    assert syn and synack
    sw = cluster.hosts["h2"].switch
    counted = sum(s.n_packets for s in sw.dump_flows())
    conns = sw.conntrack.dump()
    assert any(line.startswith("tcp,") for line in conns)
    # The agent on h2 dies and a new one starts on the same switch.
    agents["h2"].stop()
    fresh = HostAgent("h2", sw, ApiSource(api.client), cluster.hosts["h2"].tunnel_ip)
    fresh.start()
    report = fresh.step()
    assert report.changed == 0 and not report.up and not report.down
    assert sum(s.n_packets for s in sw.dump_flows()) == counted      # counters kept
    assert sw.conntrack.dump() == conns                              # conntrack kept
    ack = cluster.send(a["id"], [tcp(a, b, 40000, 22, "A", seq=2, ack=10)]).to(b["id"])
    assert ack
    # And it keeps following: a new port on h2 works.
    agents["h2"] = fresh
    c = vm(api, cluster, net, "h2")
    sync(agents)
    assert cluster.send(a["id"], [icmp(a, c)]).to(c["id"])


def test_agent_over_http_against_sbnet_serve(tmp_path):
    from tests.api.apihelpers import start_server, stop_server
    proc, url = start_server(f"sqlite:///{tmp_path}/db.sqlite")
    try:
        client = httpx.Client(base_url=url, timeout=30)
        api = ApiSource(client)
        cluster = Cluster(list(HOSTS))
        agents = {h: HostAgent(h, cluster.hosts[h].switch, api, cluster.hosts[h].tunnel_ip)
                  for h in HOSTS}
        for ag in agents.values():
            ag.start()
        h = {"X-Project-Id": "p1", "X-Roles": "admin"}
        net = client.post("/v2.0/networks", json={"network": {"name": "n"}}, headers=h).json()["network"]
        client.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.1.0.0/24",
                                                      "ip_version": 4}}, headers=h)
        ports = []
        for host in HOSTS:
            p = client.post("/v2.0/ports", json={"port": {"network_id": net["id"],
                                                           "binding:host_id": host}},
                            headers=h).json()["port"]
            cluster.plug(p["id"], host)
            ports.append(p)
        for ag in agents.values():
            ag.step(wait=1.0)
        a, b = ports
        assert cluster.send(a["id"], [icmp(a, b)]).to(b["id"])
        got = client.get(f"/v2.0/ports/{a['id']}", headers=h).json()["port"]
        assert got["status"] == "ACTIVE"
    finally:
        stop_server(proc)


def test_trunk_subports_go_active_with_their_parent(cloud):
    api, cluster, agents = cloud
    net, other = network(api), network(api)
    parent = vm(api, cluster, net, "h1")
    sub = api.create("ports", project="p1", network_id=other["id"])
    api.create("trunks", project="p1", port_id=parent["id"], sub_ports=[
        {"port_id": sub["id"], "segmentation_type": "vlan", "segmentation_id": 101}])
    sync(agents)
    status = api.request("GET", f"ports/{sub['id']}")["port"]["status"]
    assert status == "ACTIVE"


def test_a_port_that_cannot_be_compiled_goes_error_and_the_others_keep_working(cloud):
    """A port whose address clashes with an older port's (as if a bad write had reached the
    store) is left out on every host and reported ERROR; the others go ACTIVE and talk."""
    api, cluster, agents = cloud
    net = network(api)
    a, b = vm(api, cluster, net, "h1"), vm(api, cluster, net, "h2")
    time.sleep(1.1)    # creation times have Neutron's one-second resolution: bad is newer
    bad = vm(api, cluster, net, "h2")
    with api.store.write() as tx:
        body = tx.get("port", bad["id"])
        body["fixed_ips"] = [dict(a["fixed_ips"][0])]
        tx.update("port", body)
    reports = sync(agents)
    assert all(("port", bad["id"]) in r.faults for r in reports.values()), reports
    assert api.request("GET", f"ports/{bad['id']}")["port"]["status"] == "ERROR"
    for p in (a, b):
        assert api.request("GET", f"ports/{p['id']}")["port"]["status"] == "ACTIVE"
    assert cluster.send(a["id"], [icmp(a, b)]).to(b["id"])
