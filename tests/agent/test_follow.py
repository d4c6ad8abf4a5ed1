"""The embedded agent loop: hosts follow the store, plug and unplug VIFs, report ports ACTIVE."""

from __future__ import annotations

from sbnet.agent.embedded import Cluster
from sbnet.agent.follow import Follower
from sbnet.agent.traffic import Endpoint, icmp_echo
from sbnet.api.local import LocalApi


def _ep(port: dict) -> Endpoint:
    return Endpoint(port["name"], port["mac_address"], port["fixed_ips"][0]["ip_address"])


def _setup():
    api = LocalApi()
    cluster = Cluster(["h1", "h2"])
    return api, cluster, Follower(api.store, cluster)


def test_the_running_loop_follows_each_change_and_packets_flow_once_it_has():
    api, cluster, follower = _setup()
    follower.start(wait=0.05)
    try:
        net = api.create("networks", project="p1", name="n", port_security_enabled=False)
        api.create("subnets", project="p1", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4)
        a = api.create("ports", project="p1", network_id=net["id"], name="a",
                       **{"binding:host_id": "h1"})
        b = api.create("ports", project="p1", network_id=net["id"], name="b",
                       **{"binding:host_id": "h2"})
        assert follower.wait_for(api.store.current_revision(), timeout=20)
        with follower.lock:
            d = cluster.send(a["id"], [icmp_echo(_ep(a), _ep(b), 1, 1)])
        assert d.to(b["id"]) == [icmp_echo(_ep(a), _ep(b), 1, 1)]
        # The API shows what the hosts reported: both ports plugged, so ACTIVE.
        assert api.request("GET", f"ports/{a['id']}")["port"]["status"] == "ACTIVE"
        assert api.request("GET", f"ports/{b['id']}")["port"]["status"] == "ACTIVE"
        assert sum(r.diffs["h1"] for r in follower.history) > 0

        api.delete("ports", b["id"])
        assert follower.wait_for(api.store.current_revision(), timeout=20)
        assert b["id"] not in cluster.where
        with follower.lock:
            d = cluster.send(a["id"], [icmp_echo(_ep(a), _ep(b), 1, 2)])
        assert d.total == 0
        assert any(b["id"] in r.unplugged and r.diffs["h2"] > 0 for r in follower.history)
    finally:
        follower.stop()


def test_only_ports_plugged_on_our_hosts_go_active_and_our_own_writes_need_no_resync():
    api, cluster, follower = _setup()
    net = api.create("networks", project="p1", name="n")
    api.create("subnets", project="p1", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4)
    ours = api.create("ports", project="p1", network_id=net["id"], **{"binding:host_id": "h2"})
    elsewhere = api.create("ports", project="p1", network_id=net["id"],
                           **{"binding:host_id": "h9"})
    unbound = api.create("ports", project="p1", network_id=net["id"])
    first = follower.step()
    assert first.activated == [ours["id"]] and first.plugged == [ours["id"]]
    status = {p["id"]: p["status"] for p in api.request("GET", "ports")["ports"]}
    assert status == {ours["id"]: "ACTIVE", elsewhere["id"]: "DOWN", unbound["id"]: "DOWN"}
    port = api.request("GET", f"ports/{ours['id']}")["port"]
    assert port["revision_number"] == ours["revision_number"] + 1
    # The status write was ours and nothing else moved: nothing to sync again.
    assert follower.revision == api.store.current_revision()
    assert follower.step() is None
    # Binding a port to one of our hosts later brings it up on the next round.
    api.update("ports", unbound["id"], **{"binding:host_id": "h1"})
    assert follower.step().activated == [unbound["id"]]
    assert cluster.where[unbound["id"]][0] == "h1"


class _FussyCluster(Cluster):
    """A cluster that cannot apply any model holding a network named "boom"."""

    def sync(self, snapshot: dict, plug: bool = True):
        if any(n["name"] == "boom" for n in snapshot.get("network", ())):
            raise RuntimeError("cannot apply boom")
        return super().sync(snapshot, plug)


def test_a_model_the_hosts_cannot_apply_is_reported_and_the_loop_recovers_on_the_next_change():
    api = LocalApi()
    errors = []
    follower = Follower(api.store, _FussyCluster(["h1"]),
                        on_error=lambda rev, exc: errors.append(rev))
    follower.start(wait=0.05)
    try:
        boom = api.create("networks", project="p1", name="boom")
        assert not follower.wait_for(api.store.current_revision(), timeout=20)
        assert errors and "cannot apply boom" in str(follower.error[1])
        api.delete("networks", boom["id"])
        assert follower.wait_for(api.store.current_revision(), timeout=20)
    finally:
        follower.stop()
