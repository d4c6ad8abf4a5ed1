"""A migrating port's traffic goes to every host it may be on, until activation points all hosts at the new one."""

from __future__ import annotations

from tests.compiler.scenario import Cloud, icmp

NOVA = {"X-Project-Id": "service", "X-Roles": "admin,service"}


def _seen(c: Cloud, host: str) -> int:
    """Packets the host's datapath has looked up (cache hits and upcalls)."""
    s = c.cluster.hosts[host].switch.dpif.stats()
    return s.hits + s.upcalls + sum(s.tier_packets.values())


def _sent_to(c: Cloud, a: dict, b: dict) -> tuple[int, bool, bool]:
    """Copies of one frame from a that reach b's VIF; whether h2 and h3 got one."""
    r2, r3 = _seen(c, "h2"), _seen(c, "h3")
    d = c.send(a, [icmp(a, b)])
    return len(d.to(b["id"])), _seen(c, "h2") > r2, _seen(c, "h3") > r3


def test_cloned_to_both_hosts_while_migrating_then_only_to_the_new_one():
    c = Cloud(hosts=("h1", "h2", "h3"))
    net = c.network("p1", port_security_enabled=False)
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h2", device_owner="compute:nova")
    c.sync()
    assert _sent_to(c, a, b) == (1, True, False)
    # h3's agent is alive (a binding there needs one).
    c.api.client.put("/v2.0/sbnet/hosts/h3", json={"host": {
        "tunnel_ip": c.cluster.hosts["h3"].tunnel_ip, "datapath": "reference"}}, headers=NOVA)
    r = c.api.client.post(f"/v2.0/ports/{b['id']}/bindings", json={"binding": {"host": "h3"}},
                          headers=NOVA)
    assert r.status_code == 201
    c.sync()
    assert _sent_to(c, a, b) == (1, True, True)          # h3 gets a copy: the VM may be there
    assert c.api.client.put(f"/v2.0/ports/{b['id']}/bindings/h3/activate",
                            headers=NOVA).status_code == 200
    c.cluster.unplug(b["id"])
    c.sync()
    # The binding activation left on h2 is not a destination: h3 alone.
    assert _sent_to(c, a, b) == (1, False, True)
    assert c.api.client.delete(f"/v2.0/ports/{b['id']}/bindings/h2",
                               headers=NOVA).status_code == 204
    c.sync()
    assert _sent_to(c, a, b) == (1, False, True)


def test_migrating_to_in_the_profile_is_a_destination_too():
    c = Cloud(hosts=("h1", "h2", "h3"))
    net = c.network("p1", port_security_enabled=False)
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h2", device_owner="compute:nova")
    c.sync()
    c.api.update("ports", b["id"], **{"binding:profile": {"migrating_to": "h3"}})
    c.sync()
    assert _sent_to(c, a, b) == (1, True, True)
    c.api.update("ports", b["id"], **{"binding:profile": {}})
    c.sync()
    assert _sent_to(c, a, b) == (1, True, False)
