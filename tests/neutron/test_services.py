"""QoS, trunks and networking-sfc through neutron-server's service plugins reach sbnet's copy
through sbnet's service drivers, and the copy then equals Neutron."""

from __future__ import annotations

import uuid

from sbnet.southbound.client import Southbound
from tests.neutron.test_sync import differences, wait_converged


def test_qos_trunk_and_port_chain_reach_the_copy(stack):
    n = stack.neutron
    net = n.create("networks", name="svc")
    n.request("POST", "subnets", {"subnet": {"network_id": net["id"], "cidr": "10.78.0.0/24",
                                             "ip_version": 4}})
    # A service function's two ports belong to one instance (networking-sfc checks).
    sf = str(uuid.uuid4())
    ports = [n.create("ports", network_id=net["id"], name=f"svc{i}",
                      **({"device_id": sf, "device_owner": "compute:nova"} if i in (2, 3) else {}))
             for i in range(5)]

    policy = n.request("POST", "qos/policies", {"policy": {"name": "slow"}})["policy"]
    n.request("POST", f"qos/policies/{policy['id']}/bandwidth_limit_rules",
              {"bandwidth_limit_rule": {"max_kbps": 2000, "max_burst_kbps": 200}})
    trunk = n.request("POST", "trunks", {"trunk": {"port_id": ports[0]["id"], "sub_ports": [
        {"port_id": ports[1]["id"], "segmentation_type": "vlan",
         "segmentation_id": 100}]}})["trunk"]
    pair = n.request("POST", "sfc/port_pairs", {"port_pair": {
        "ingress": ports[2]["id"], "egress": ports[3]["id"]}})["port_pair"]
    group = n.request("POST", "sfc/port_pair_groups", {"port_pair_group": {
        "port_pairs": [pair["id"]]}})["port_pair_group"]
    classifier = n.request("POST", "sfc/flow_classifiers", {"flow_classifier": {
        "logical_source_port": ports[4]["id"], "protocol": "tcp",
        "destination_port_range_min": 80, "destination_port_range_max": 80}})["flow_classifier"]
    chain = n.request("POST", "sfc/port_chains", {"port_chain": {
        "port_pair_groups": [group["id"]], "flow_classifiers": [classifier["id"]]}})["port_chain"]

    with stack.store.read() as tx:
        copy = tx.get("policy", policy["id"])
        assert [(r["type"], r["max_kbps"]) for r in copy["rules"]] == [("bandwidth_limit", 2000)]
        t = tx.get("trunk", trunk["id"])
        assert [(s["port_id"], s["segmentation_id"]) for s in t["sub_ports"]] == \
            [(ports[1]["id"], 100)]
        assert tx.get("port_pair", pair["id"])["egress"] == ports[3]["id"]
        assert tx.get("port_pair_group", group["id"])["port_pairs"] == [pair["id"]]
        assert tx.get("flow_classifier", classifier["id"])["protocol"] == "tcp"
        assert tx.get("port_chain", chain["id"])["port_pair_groups"] == [group["id"]]
    # sbnet carries a trunk once its copy is written: no agent to wait for.
    assert n.request("GET", f"trunks/{trunk['id']}")["trunk"]["status"] == "ACTIVE"
    wait_converged(stack, 30)
    assert differences(stack) == []

    n.request("DELETE", f"sfc/port_chains/{chain['id']}")
    n.request("DELETE", f"trunks/{trunk['id']}")
    n.request("DELETE", f"qos/policies/{policy['id']}")
    inventory = Southbound(stack.sbnet.url).inventory()
    assert chain["id"] not in inventory["port_chain"]
    assert trunk["id"] not in inventory["trunk"]
    assert policy["id"] not in inventory["policy"]
