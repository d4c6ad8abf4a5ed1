"""Stages qos_egress and qos_ingress: bandwidth limits as meters, DSCP marking."""

from __future__ import annotations

from sbnet.compiler import registers as R
from sbnet.compiler.port_security import subports
from sbnet.compiler.topology import allocate_keys, is_vif, version
from sbnet.flows import actions as A
from sbnet.flows.fields import ETH_IP, ETH_IPV6
# neutron_lib.services.qos.constants.DEFAULT_BURST_RATE: a limit without a burst gets 80% of
# its rate as burst, "to ensure that at least limits for TCP traffic will work fine".
DEFAULT_BURST_RATE = 0.8
# dpif-netdev holds 2**18 meters; ids stay below that so no datapath refuses one.
METER_BITS = 18
# Per direction: the table, the register naming the port, where the packet goes next.
DIRECTIONS = {
    "egress": ("qos_egress", R.INPORT, "egress_ct"),     # what the VM sends
    "ingress": ("qos_ingress", R.OUTPORT, "deliver"),    # what the VM receives
}
# Flooded copies reach ports without passing qos_ingress: a meter drops the packet for every
# action after it in the datapath, so metering one copy of a flood would starve the others.
#
# minimum_bandwidth rules are not built: a meter only caps, and Neutron's admin guide lists
# no datapath minimum for Open vSwitch (a guarantee comes from Placement scheduling VMs
# onto hosts with the bandwidth).  Ports with one behave as if the rule were absent.


def build(ctx) -> None:
    topo = ctx.topo
    meter_ids = meter_keys(topo)
    for port in topo.local_ports(ctx.host):
        for p in subports(topo, port, parent=True):
            pid, rules = port_rules(topo, p)
            if pid is None:
                continue
            mids = tuple(meter_ids.get(f"{p['id']}:{d}") for d in DIRECTIONS)
            ctx.unit(("port", p["id"]), (topo.port_deps(p), version(topo.qos_policies[pid]), mids),
                     build_qos_port, ctx, p, (pid, rules), meter_ids)


def build_qos_port(ctx, port: dict, policy: tuple, meter_ids: dict) -> None:
    for direction in DIRECTIONS:
        build_qos_limit(ctx, port, direction, policy, meter_ids)


def port_rules(topo, port: dict) -> tuple[str | None, list[dict]]:
    """The policy that applies to a port (its own, else its network's) and its rules."""
    pid = port.get("qos_policy_id")
    if not pid:
        net = topo.networks.get(port["network_id"]) or {}
        pid = net.get("qos_policy_id")
    if not pid or pid not in topo.qos_rules:
        return None, []
    return pid, topo.qos_rules[pid]


def _limit(rules: list[dict], direction: str) -> dict | None:
    return next((r for r in rules if r.get("type") == "bandwidth_limit"
                 and (r.get("direction") or "egress") == direction), None)


def meter_keys(topo) -> dict[str, int]:
    """Meter id per "port_id:direction" with a bandwidth limit, the same on every host and
    kept while the port keeps its limit."""
    items = []
    for p in topo.ports.values():
        if not is_vif(p):
            continue
        _, rules = port_rules(topo, p)
        for direction in DIRECTIONS:
            if _limit(rules, direction):
                items.append({"id": f"{p['id']}:{direction}", "created_at": p.get("created_at")})
    return allocate_keys(items, METER_BITS, "meter")


def build_qos_limit(ctx, port: dict, direction: str, policy: tuple, meter_ids: dict) -> None:
    """The port's meter (if limited) and, on egress, its DSCP mark on IPv4 and IPv6."""
    pid, rules = policy
    table, reg, nxt = DIRECTIONS[direction]
    key = {reg.field: reg.match(ctx.topo.port_key[port["id"]])}
    cookie = ctx.cookie("qos_policy", pid)
    first = []
    limit = _limit(rules, direction)
    if limit is not None and int(limit.get("max_kbps") or 0) > 0:
        mid = meter_ids[f"{port['id']}:{direction}"]
        rate = int(limit["max_kbps"])
        burst = int(limit.get("max_burst_kbps") or 0) or int(rate * DEFAULT_BURST_RATE)
        ctx.meter(A.MeterMod(mid, rate, "kbps", burst))
        first = [A.Meter(mid)]
        ctx.flow(table, 100, [*first, ctx.goto(nxt)], key, cookie)
    dscp = next((r for r in rules if r.get("type") == "dscp_marking"), None)
    if direction == "egress" and dscp is not None:
        for eth in (ETH_IP, ETH_IPV6):
            ctx.flow(table, 110, [*first, A.SetField("ip_dscp", int(dscp["dscp_mark"])),
                                  ctx.goto(nxt)], {**key, "eth_type": eth}, cookie)
