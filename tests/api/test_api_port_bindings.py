"""Multiple port bindings (binding-extended): the Nova sequence and every error Neutron gives."""

from __future__ import annotations

import pytest

from apihelpers import Api

NOVA = {"X-Project-Id": "service", "X-Roles": "service"}
ADMIN = {"X-Project-Id": "admin-project", "X-Roles": "admin"}


@pytest.fixture
def nova(app_client) -> Api:
    return Api(app_client, NOVA)


def _register(api: Api, *hosts: str) -> None:
    for h in hosts:
        api.req("PUT", f"sbnet/hosts/{h}", {"host": {"tunnel_ip": "192.0.2.1",
                                                     "datapath": "reference"}}, 200)


@pytest.fixture
def port(app_client) -> dict:
    admin = Api(app_client, ADMIN)
    _register(admin, "src", "dst", "other")
    net = admin.create("networks", "network", name="n")
    admin.create("subnets", "subnet", network_id=net["id"], cidr="10.9.0.0/24", ip_version=4)
    return admin.create("ports", "port", network_id=net["id"], device_owner="compute:nova",
                        **{"binding:host_id": "src"})


def test_nova_sequence(nova: Api, port: dict) -> None:
    pid = port["id"]
    [active] = nova.req("GET", f"ports/{pid}/bindings", status=200)["bindings"]
    assert (active["host"], active["status"], active["vif_type"]) == ("src", "ACTIVE", "tap")
    b = nova.req("POST", f"ports/{pid}/bindings", {"binding": {"host": "dst"}}, 201)["binding"]
    assert (b["host"], b["status"], b["vif_type"], b["vnic_type"]) == (
        "dst", "INACTIVE", "tap", "normal")
    assert set(b) == {"host", "vif_type", "vif_details", "vnic_type", "profile", "status",
                      "project_id"}
    listed = nova.req("GET", f"ports/{pid}/bindings?status=INACTIVE", status=200)["bindings"]
    assert [x["host"] for x in listed] == ["dst"]
    assert nova.req("GET", f"ports/{pid}/bindings/dst", status=200)["binding"] == b
    up = nova.req("PUT", f"ports/{pid}/bindings/dst", {"binding": {"profile": {"k": "v"}}},
                  200)["binding"]
    assert up["profile"] == {"k": "v"} and up["status"] == "INACTIVE"
    # Activation answers with the binding itself (Neutron's member action, not wrapped).
    act = nova.req("PUT", f"ports/{pid}/bindings/dst/activate", status=200)
    assert (act["host"], act["status"]) == ("dst", "ACTIVE")
    p = Api(nova.client, ADMIN).req("GET", f"ports/{pid}", status=200)["port"]
    assert (p["binding:host_id"], p["status"], p["binding:profile"]) == ("dst", "DOWN",
                                                                         {"k": "v"})
    # The binding that was active stays, inactive, until Nova deletes it.
    hosts = {x["host"]: x["status"]
             for x in nova.req("GET", f"ports/{pid}/bindings", status=200)["bindings"]}
    assert hosts == {"dst": "ACTIVE", "src": "INACTIVE"}
    nova.req("DELETE", f"ports/{pid}/bindings/src", status=204)
    assert [x["host"] for x in nova.req("GET", f"ports/{pid}/bindings",
                                        status=200)["bindings"]] == ["dst"]


def test_errors_as_neutron_gives_them(nova: Api, port: dict, app_client) -> None:
    pid = port["id"]
    err = nova.err("POST", f"ports/{pid}/bindings", {"binding": {"host": "src"}}, 409)
    assert err["type"] == "PortBindingAlreadyExists"          # an inactive one on the active host
    assert err["message"] == f"Binding for port {pid} on host src already exists."
    nova.req("POST", f"ports/{pid}/bindings", {"binding": {"host": "dst"}}, 201)
    assert nova.err("POST", f"ports/{pid}/bindings", {"binding": {"host": "dst"}},
                    409)["type"] == "PortBindingAlreadyExists"
    err = nova.err("PUT", f"ports/{pid}/bindings/nowhere/activate", None, 404)
    assert (err["type"], err["message"]) == (
        "PortBindingNotFound", f"Binding for port {pid} for host nowhere could not be found.")
    err = nova.err("PUT", f"ports/{pid}/bindings/src/activate", None, 409)
    assert (err["type"], err["message"]) == (
        "PortBindingAlreadyActive", f"Binding for port {pid} on host src is already active.")
    assert nova.err("DELETE", f"ports/{pid}/bindings/nowhere", None, 404)["type"] == \
        "PortBindingNotFound"
    assert nova.err("GET", f"ports/{pid}/bindings/nowhere", None, 404)["type"] == \
        "PortBindingNotFound"
    assert nova.err("PUT", f"ports/{pid}/bindings/nowhere", {"binding": {"profile": {}}},
                    404)["type"] == "PortBindingNotFound"
    assert nova.err("GET", "ports/0000/bindings", None, 404)["type"] == "PortNotFound"
    # No live agent on the host: the binding cannot be made (Neutron answers 500 there).
    assert nova.err("POST", f"ports/{pid}/bindings", {"binding": {"host": "ghost"}},
                    500)["type"] == "PortBindingError"
    for bad in ({}, {"binding": {}}, {"binding": {"host": ""}}, {"binding": {"host": 7}},
                {"binding": {"host": "x", "vnic_type": "warp"}},
                {"binding": {"host": "x", "colour": 1}},
                {"binding": {"host": "x", "profile": [1]}}, [1]):
        nova.err("POST", f"ports/{pid}/bindings", bad, 400)
    # Only compute (and shared filesystem) ports may have several bindings.
    admin = Api(app_client, ADMIN)
    plain = admin.create("ports", "port", network_id=port["network_id"])
    err = nova.err("POST", f"ports/{plain['id']}/bindings", {"binding": {"host": "dst"}}, 400)
    assert "Operation only valid on compute and shared filesystem ports" in err["message"]


def test_policy_service_writes_admin_or_service_reads(nova: Api, port: dict, app_client) -> None:
    pid = port["id"]
    admin = Api(app_client, ADMIN)
    owner = Api(app_client, {"X-Project-Id": port["project_id"], "X-Roles": "member"})
    assert admin.req("GET", f"ports/{pid}/bindings", status=200)["bindings"]
    for who in (admin, owner):
        assert who.err("POST", f"ports/{pid}/bindings", {"binding": {"host": "dst"}},
                       403)["type"] == "PolicyNotAuthorized"
    owner.err("GET", f"ports/{pid}/bindings", None, 403)
    nova.req("POST", f"ports/{pid}/bindings", {"binding": {"host": "dst"}}, 201)
    for who in (admin, owner):
        who.err("PUT", f"ports/{pid}/bindings/dst/activate", None, 403)
        who.err("DELETE", f"ports/{pid}/bindings/dst", None, 403)


def test_deleting_the_port_takes_its_bindings_and_handover(nova: Api, port: dict,
                                                           app_client) -> None:
    pid = port["id"]
    admin = Api(app_client, ADMIN)
    nova.req("POST", f"ports/{pid}/bindings", {"binding": {"host": "dst"}}, 201)
    row = [0] * 32
    admin.req("PUT", f"sbnet/ports/{pid}/handover", {"handover": {
        "source": "src", "target": "dst", "part": 0, "parts": 1, "entries": [[5.0, *row]]}}, 200)
    mig = admin.req("GET", f"sbnet/ports/{pid}/migration", status=200)["migration"]
    assert mig["handover"] == {"source": "src", "target": "dst", "round": 1, "complete": True,
                               "entries": 1}
    admin.req("DELETE", f"ports/{pid}", status=204)
    snap = app_client.app.state.api.store.snapshot()
    assert "port_binding" not in snap and "ct_handover" not in snap


def test_handover_and_ready_reports_are_checked(nova: Api, port: dict, app_client) -> None:
    pid = port["id"]
    admin = Api(app_client, ADMIN)
    path = f"sbnet/ports/{pid}/handover"
    row = [1] * 32

    def part(i: int, n: int, entries=([3, *row],), **kw) -> dict:
        return {"handover": {"source": "src", "target": "dst", "part": i, "parts": n,
                             "entries": list(entries), **kw}}
    ready = f"sbnet/ports/{pid}/bindings/dst/ready"
    admin.err("PUT", ready, {"ready": {"conntrack": 2, "round": 2}}, 404)   # no binding yet
    assert admin.err("PUT", path, part(0, 1), 409)["type"] == "NoSuchMigration"
    nova.req("POST", f"ports/{pid}/bindings", {"binding": {"host": "dst"}}, 201)
    for bad in ({}, part(1, 1), part(0, 1, entries=[[1, 2]]), part(0, 1, entries=[[1] + [-1] * 32]),
                part(0, 1, extra=1), part(0, 1, entries=[["x", *row]])):
        admin.err("PUT", path, bad, 400)
    assert admin.req("PUT", path, part(0, 2), status=200)["handover"]["complete"] is False
    assert admin.err("PUT", path, part(0, 3) | {"handover": dict(part(0, 3)["handover"],
                                                                  part=2)}, 409)
    out = admin.req("PUT", path, part(1, 2), status=200)["handover"]
    assert (out["complete"], out["entries"], out["round"]) == (True, 2, 1)
    assert admin.req("PUT", path, part(0, 1), status=200)["handover"]["round"] == 2
    Api(app_client, {"X-Project-Id": "p", "X-Roles": "member"}).err("PUT", path, part(0, 1), 403)
    admin.err("PUT", ready, {"ready": {"conntrack": -1, "round": 0}}, 400)
    admin.req("PUT", ready, {"ready": {"conntrack": 2, "round": 2}}, 200)
    mig = admin.req("GET", f"sbnet/ports/{pid}/migration", status=200)["migration"]
    assert mig["bindings"][0]["host"] == "dst"
    assert mig["bindings"][0]["ready"]["conntrack"] == 2
    # After activation the source may send its final copy while it keeps its binding; once
    # Nova deleted it, a late copy is refused and the handover is gone.
    nova.req("PUT", f"ports/{pid}/bindings/dst/activate", status=200)
    assert admin.req("PUT", path, part(0, 1), status=200)["handover"]["round"] == 3
    assert admin.err("PUT", path, {"handover": dict(part(0, 1)["handover"], source="dst",
                                                     target="src")}, 409)
    nova.req("DELETE", f"ports/{pid}/bindings/src", status=204)
    assert admin.err("PUT", path, part(0, 1), 409)["type"] == "NoSuchMigration"
    assert admin.req("GET", f"sbnet/ports/{pid}/migration",
                     status=200)["migration"]["handover"] is None


def test_announcement_reports_follow_the_activation_strategy(nova: Api, port: dict,
                                                             app_client) -> None:
    """A destination's agent reports the VM announced itself there; the binding's
    activation-strategy says which announcement counts; the hosts then run the port there
    (take_announcements) while Neutron's binding stays as it was until Nova activates."""
    from sbnet.compiler.topology import Topology, take_announcements
    pid = port["id"]
    admin = Api(app_client, ADMIN)
    path = f"sbnet/ports/{pid}/bindings/dst/announced"
    admin.err("PUT", path, {"announced": "garp"}, 404)                    # no binding yet
    nova.req("POST", f"ports/{pid}/bindings", {"binding": {"host": "dst"}}, 201)
    assert admin.err("PUT", path, {"announced": "garp"}, 409)["type"] == \
        "PortBindingActivationStrategy"                                    # none named
    nova.req("PUT", f"ports/{pid}/bindings/dst",
             {"binding": {"profile": {"activation-strategy": "rarp"}}}, 200)
    admin.err("PUT", path, {"announced": "garp"}, 409)                    # RARP only
    for bad in ({}, {"announced": "arp"}, {"announced": None}, [], {"announced": ["rarp"]}):
        admin.err("PUT", path, bad, 400)
    Api(app_client, {"X-Project-Id": "p", "X-Roles": "member"}).err(
        "PUT", path, {"announced": "rarp"}, 403)
    snap = app_client.app.state.api.store.snapshot()
    assert Topology(take_announcements(snap), []).moving_to[pid] == ("dst",)
    first = admin.req("PUT", path, {"announced": "rarp"}, 200)["announced"]
    assert first["kind"] == "rarp"
    assert admin.req("PUT", path, {"announced": "rarp"}, 200)["announced"] == first
    mig = admin.req("GET", f"sbnet/ports/{pid}/migration", status=200)["migration"]
    assert (mig["host"], mig["bindings"][0]["announced"]["kind"]) == ("src", "rarp")
    topo = Topology(take_announcements(app_client.app.state.api.store.snapshot()), [])
    assert topo.active_host(topo.ports[pid]) == "dst" and not topo.moving_to.get(pid)
    nova.req("PUT", f"ports/{pid}/bindings/dst/activate", status=200)
    admin.err("PUT", path, {"announced": "rarp"}, 404)                    # active now
