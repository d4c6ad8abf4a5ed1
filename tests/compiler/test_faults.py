"""Fault isolation: resources that cannot be compiled are reported and left out, every other
resource still compiles, and the incremental compiler never stays broken."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sbnet.compiler.compile import Compiler, compile_host
from sbnet.compiler.topology import Topology
from tests.compiler.scenario import Cloud, icmp, ip_of

HOSTS = ("h1", "h2")


def same(a, b) -> bool:
    return (a.flows.keys() == b.flows.keys()
            and all(a.flows[k].actions == b.flows[k].actions for k in a.flows)
            and a.groups == b.groups and a.meters == b.meters)


def bad_port(kind: str, victim: dict, n: int) -> dict:
    """A port the API would refuse, as if it had reached the store anyway: newer than
    everything the API made (so in a clash it is the one at fault)."""
    port = {**victim, "id": str(uuid.uuid4()), "created_at": f"2999-01-01T00:00:{n:02d}Z",
            "mac_address": f"fa:16:3e:ee:00:{n:02x}", "name": f"bad-{kind}"}
    sub = victim["fixed_ips"][0]["subnet_id"]
    if kind == "duplicate_ip":        # another port's address: its ARP answers would clash
        port["fixed_ips"] = [dict(victim["fixed_ips"][0])]
    elif kind == "scoped_ip":         # another port's address with a scope (%zone)
        port["fixed_ips"] = [{**f, "ip_address": f["ip_address"] + "%x"}
                             for f in victim["fixed_ips"]]
    elif kind == "bad_mac":
        port["mac_address"] = "fa:16:3e:zz:00:01"
    elif kind == "bad_ip":
        port["fixed_ips"] = [{"subnet_id": sub, "ip_address": "10.0.0.300"}]
    return port


OPS = st.lists(st.tuples(st.sampled_from(["add", "add", "delete", "inject", "uninject"]),
                         st.sampled_from(["duplicate_ip", "scoped_ip", "bad_mac", "bad_ip"]),
                         st.integers(0, 1000)), min_size=4, max_size=10)
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@settings(max_examples=8, deadline=None, derandomize=True, phases=NO_SHRINK,
          suppress_health_check=list(HealthCheck))
@given(OPS)
def test_incremental_equals_scratch_of_the_valid_ones(ops):
    c = Cloud(hosts=HOSTS)
    net = c.network("p1")
    ports = [c.port("p1", net, h) for h in HOSTS]
    for p in ports:
        c.cluster.plug(p["id"], p["binding:host_id"])
    bad: list[dict] = []
    compilers = {h: Compiler(h) for h in HOSTS}
    chassis = lambda: [h.chassis() for h in c.cluster.hosts.values()]  # noqa: E731
    for step, (op, kind, pick) in enumerate(ops):
        if op == "add":
            p = c.port("p1", net, HOSTS[pick % 2])
            c.cluster.plug(p["id"], p["binding:host_id"])
            ports.append(p)
        elif op == "delete" and len(ports) > 1:
            p = ports.pop(pick % len(ports))
            c.api.delete("ports", p["id"])
            c.cluster.unplug(p["id"])
        elif op == "inject":
            bad.append(bad_port(kind, ports[pick % len(ports)], step))
        elif op == "uninject" and bad:
            bad.pop(pick % len(bad))
        valid = c.api.snapshot()
        model = {**valid, "port": [*valid.get("port", ()), *bad]}
        topo, clean = Topology(model, chassis()), Topology(valid, chassis())
        for h in HOSTS:
            inc = compilers[h].compile(topo)
            left_out = {ident for typ, ident in compilers[h].faults}
            # Only the bad ports are reported, each at most once, with a reason.
            assert left_out <= {b["id"] for b in bad}, (step, compilers[h].faults)
            assert all(compilers[h].faults.values())
            # What was compiled is exactly the valid model's pipeline, from scratch.
            assert same(inc, compile_host(clean, h)), f"step {step} ({op} {kind}) on {h}"


def test_bad_port_is_reported_and_traffic_of_the_others_flows():
    """The issue's case: a scoped IPv6 address and a duplicate of another port's address
    reach the model; every host still compiles, pings between good ports arrive, and the
    incremental compiler is whole again once the bad ports are gone."""
    c = Cloud(hosts=HOSTS)
    net = c.network("p1")
    c.api.create("subnets", project="p1", network_id=net["id"], cidr="fd00::/64", ip_version=6)
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2")
    c.sync()
    assert c.send(a, [icmp(a, b)]).to(b["id"])
    dup = bad_port("duplicate_ip", b, 1)
    scoped = bad_port("scoped_ip", a, 2)            # b's IPv6 address, with a scope
    scoped["fixed_ips"] = [{**f, "ip_address": f"{f['ip_address']}%x"} for f in b["fixed_ips"]
                           if ":" in f["ip_address"]]
    snap = c.api.snapshot()
    snap["port"] = [*snap["port"], dup, scoped]
    diffs = c.cluster.sync(snap, plug=False)
    assert set(diffs) == set(HOSTS)
    for h in c.cluster.hosts.values():
        assert set(h.compiler.faults) == {("port", dup["id"]), ("port", scoped["id"])}
    # The ARP answer for b's address is still b's MAC, and the ping still arrives.
    got = c.send(a, [icmp(a, b)])
    assert got.to(b["id"]) and ip_of(b)
    # The bad ports go: every host is back to a compile from scratch, with no faults.
    c.cluster.sync(c.api.snapshot(), plug=False)
    for name, h in c.cluster.hosts.items():
        assert not h.compiler.faults
        assert same(h.installed, compile_host(c.cluster.topology(c.api.snapshot()), name))
