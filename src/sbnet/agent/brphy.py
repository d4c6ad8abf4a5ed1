"""The OVS userspace datapath's underlay bridge (br-phy), set up by the agent when asked: the underlay NIC on a NORMAL netdev bridge that holds the tunnel address, and OVS's route to the underlay subnet through it."""

from __future__ import annotations

import ipaddress
import json
from typing import Callable


class UnderlayRefused(Exception):
    """The underlay bridge cannot be set up as asked (the message says what and why)."""


def setup_underlay_bridge(ovs, netns: str | None, bridge: str, nic: str, tunnel_ip: str,
                          prefix: str, say: Callable[[str], None] = lambda s: None) -> list[str]:
    """Make `bridge` (datapath_type netdev, fail_mode standalone, the NIC's MAC) holding
    `nic` and the address `tunnel_ip`/prefix-length, up, with `ovs/route/add prefix bridge`;
    the address moves off the NIC when it is there.  What is already right is left alone
    (an agent restart changes nothing); an existing bridge that lacks the NIC, or a NIC on
    another bridge, is refused.  Returns what it did, one line each (also said)."""
    from sbnet.agent.slowpath import _ip
    from sbnet.ovs.dummy import OVSError
    try:
        net = ipaddress.ip_network(prefix, strict=False)
        inside = ipaddress.ip_address(tunnel_ip) in net
    except ValueError as exc:
        raise UnderlayRefused(f"--tunnel-ip/--underlay-prefix: {exc}") from None
    if not inside:
        raise UnderlayRefused(f"--tunnel-ip {tunnel_ip} is not in --underlay-prefix {prefix}")
    links = {x["ifname"]: x for x in json.loads(_ip(netns, "-j", "addr", "show").stdout or "[]")}
    if nic not in links:
        raise UnderlayRefused(f"--underlay-interface {nic}: no such interface")
    done: list[str] = []

    def did(line: str) -> None:
        done.append(line)
        say(line)
    try:
        ovs.vsctl("br-exists", bridge)
        exists = True
    except OVSError:
        exists = False
    try:
        owner = ovs.vsctl("port-to-br", nic).strip()
    except OVSError:                      # no port of that name
        owner = ""
    if owner and owner != bridge:
        raise UnderlayRefused(f"--underlay-interface {nic} is a port of {owner}, not of "
                              f"--underlay-bridge {bridge}")
    if exists and owner != bridge:
        raise UnderlayRefused(f"--underlay-bridge {bridge} exists without {nic}; sbnet does "
                              f"not change a bridge in use: add the port yourself or name "
                              f"another bridge")
    if not exists:
        mac = links[nic]["address"]
        ovs.vsctl("add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=netdev",
                  "fail_mode=standalone", f"other_config:hwaddr={mac}",
                  "--", "add-port", bridge, nic)
        did(f"made {bridge} (netdev, standalone, MAC {mac}) holding {nic}")
    cidr = f"{tunnel_ip}/{net.prefixlen}"
    if any(a["local"] == tunnel_ip for a in links[nic].get("addr_info", ())):
        _ip(netns, "addr", "del", cidr, "dev", nic)
        did(f"moved {tunnel_ip} off {nic}")
    links = {x["ifname"]: x for x in json.loads(_ip(netns, "-j", "addr", "show").stdout or "[]")}
    if not any(a["local"] == tunnel_ip for a in links.get(bridge, {}).get("addr_info", ())):
        _ip(netns, "addr", "add", cidr, "dev", bridge)
        did(f"put {cidr} on {bridge}")
    if "UP" not in links.get(bridge, {}).get("flags", ()):
        _ip(netns, "link", "set", bridge, "up")
    if "UP" not in links[nic].get("flags", ()):
        _ip(netns, "link", "set", nic, "up")
    routes = ovs.appctl("ovs/route/show")
    if not any(str(net) in line and bridge in line for line in routes.splitlines()):
        try:
            ovs.appctl("ovs/route/add", str(net), bridge)
            did(f"ovs/route/add {net} {bridge}")
        except OVSError:                  # learnt from the kernel meanwhile
            pass
    return done
