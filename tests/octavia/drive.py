"""Run in the octavia-lib venv: drive sbnet's provider driver as Octavia's API does, through octavia-lib's interfaces.

Reads a JSON plan on stdin's first line, does phase 1 (create the load balancer's objects,
refused options), prints a JSON line; on the next line of stdin, phase 2 (delete a member,
then the load balancer with cascade), prints a JSON line and exits."""

import json
import os
import sys

from octavia_lib.api.drivers import data_models as dm
from octavia_lib.api.drivers import driver_lib
from octavia_lib.api.drivers import exceptions as exc

from sbnet.octavia.driver import SbnetProviderDriver


def refused(call, *args) -> dict:
    """What Octavia's API would answer: the exception's class and its user fault string."""
    try:
        call(*args)
    except (exc.DriverError, exc.UnsupportedOptionError, exc.NotImplementedError) as e:
        return {"error": type(e).__name__, "message": e.user_fault_string}
    return {"error": None}


def main() -> None:
    plan = json.loads(sys.stdin.readline())
    library = driver_lib.DriverLibrary(**plan["sockets"])
    driver = SbnetProviderDriver(url=os.environ["SBNET_URL"], library=library,
                                 status_interval=0.3, commit_wait=1.0)
    project, ids = plan["project"], plan["ids"]
    vip, extra = driver.create_vip_port(ids["lb"], project, {
        "vip_subnet_id": plan["subnet"], "vip_address": plan["vip_address"]}, [])
    lb = dm.LoadBalancer(loadbalancer_id=ids["lb"], project_id=project, name="web",
                         admin_state_up=True, description=None, **vip)
    driver.loadbalancer_create(lb)
    driver.listener_create(dm.Listener(
        listener_id=ids["listener"], loadbalancer_id=ids["lb"], project_id=project,
        protocol="TCP", protocol_port=80, admin_state_up=True, connection_limit=-1,
        name="tcp80", default_pool_id=None))
    driver.pool_create(dm.Pool(
        pool_id=ids["pool"], loadbalancer_id=ids["lb"], listener_id=ids["listener"],
        project_id=project, protocol="TCP", lb_algorithm="ROUND_ROBIN", admin_state_up=True,
        session_persistence=None, tls_enabled=False, name="backends"))
    for ident, (address, weight) in zip(ids["members"], plan["members"]):
        driver.member_create(dm.Member(
            member_id=ident, pool_id=ids["pool"], project_id=project, address=address,
            protocol_port=8080, weight=weight, admin_state_up=True, backup=False,
            subnet_id=plan["subnet"], monitor_address=None, monitor_port=None))
    driver.health_monitor_create(dm.HealthMonitor(
        healthmonitor_id=ids["hm"], pool_id=ids["pool"], project_id=project, type="TCP",
        delay=1, timeout=1, max_retries=1, max_retries_down=1, admin_state_up=True,
        http_method=None, url_path=None, expected_codes=None))
    # a member written to sbnet whose create Octavia then rolls back (once the reports so far
    # are done: Octavia would let no other change of this load balancer run meanwhile)
    assert driver.relay.idle()
    driver.member_create(dm.Member(
        member_id=ids["rolled_back"], pool_id=ids["pool"], project_id=project,
        address="10.0.0.25", protocol_port=8080))
    written = driver.sbnet.request(
        "GET", f"lbaas/pools/{ids['pool']}/members/{ids['rolled_back']}")["member"]["id"]
    errors = {
        "least_connections": refused(driver.pool_create, dm.Pool(
            pool_id=ids["spare"][0], loadbalancer_id=ids["lb"], project_id=project,
            protocol="TCP", lb_algorithm="LEAST_CONNECTIONS")),
        "http_listener": refused(driver.listener_create, dm.Listener(
            listener_id=ids["spare"][1], loadbalancer_id=ids["lb"], project_id=project,
            protocol="HTTP", protocol_port=8000)),
        "ipv6_member": refused(driver.member_create, dm.Member(
            member_id=ids["spare"][2], pool_id=ids["pool"], project_id=project,
            address="fd00::5", protocol_port=80)),
        "failover": refused(driver.loadbalancer_failover, ids["lb"]),
        "flavor": refused(driver.validate_flavor, {"compute_flavor": "x"}),
    }
    # Octavia's single-call create: the whole graph in one load balancer
    g = plan["graph"]
    gvip, _ = driver.create_vip_port(g["lb"], project, {"vip_subnet_id": plan["subnet"]}, [])
    members = [dm.Member(member_id=ident, pool_id=g["pool"], project_id=project,
                         address=address, protocol_port=53, weight=1)
               for ident, address in zip(g["members"], g["addresses"])]
    pool = dm.Pool(pool_id=g["pool"], loadbalancer_id=g["lb"], listener_id=g["listener"],
                   project_id=project, protocol="UDP", lb_algorithm="SOURCE_IP",
                   members=members, healthmonitor=dm.HealthMonitor(
                       healthmonitor_id=g["hm"], pool_id=g["pool"], project_id=project,
                       type="UDP-CONNECT", delay=3, timeout=1, max_retries=2))
    driver.loadbalancer_create(dm.LoadBalancer(
        loadbalancer_id=g["lb"], project_id=project, name="dns", pools=[pool],
        listeners=[dm.Listener(listener_id=g["listener"], loadbalancer_id=g["lb"],
                               project_id=project, protocol="UDP", protocol_port=53,
                               default_pool=pool, default_pool_id=g["pool"])], **gvip))
    # and a batch update of its members: the first reweighted, the second gone, one new
    driver.member_batch_update(g["pool"], [
        dm.Member(member_id=g["members"][0], pool_id=g["pool"], weight=4),
        dm.Member(member_id=g["new_member"], pool_id=g["pool"], project_id=project,
                  address=g["new_address"], protocol_port=53, weight=2)])
    assert driver.relay.idle()
    print(json.dumps({"vip": vip, "additional": extra, "errors": errors,
                      "rolled_back_written": written}), flush=True)

    sys.stdin.readline()
    driver.member_update(dm.Member(member_id=ids["members"][0], pool_id=ids["pool"]),
                         dm.Member(member_id=ids["members"][0], pool_id=ids["pool"], weight=5))
    driver.member_delete(dm.Member(member_id=ids["members"][2], pool_id=ids["pool"]))
    assert driver.relay.idle()
    print(json.dumps({"phase": 2}), flush=True)
    sys.stdin.readline()
    driver.loadbalancer_delete(lb, cascade=True)
    assert driver.relay.idle()
    driver.relay.stop()
    print(json.dumps({"phase": 3}), flush=True)


if __name__ == "__main__":
    main()
