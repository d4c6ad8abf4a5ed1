"""Finding a host's VIFs: a tap named for the port (as Nova names it) or, for a SmartNIC-bound port, the representor its binding profile names."""

from __future__ import annotations

import socket
from typing import Callable

from sbnet.cni.ports import vif_name

SMARTNIC_VNICS = ("smart-nic", "baremetal")
FIRST_VIF_OFPORT = 1          # VIF ofports are taken from here up, skipping the datapath's own


def representor(port: dict, host: str) -> str | None:
    """The representor a SmartNIC-backed port is plugged at on `host` (Neutron's convention:
    binding:vnic_type smart-nic or baremetal, binding:profile local_link_information
    [{"port_id": REPRESENTOR, "hostname": NIC}]); None for any other port."""
    if port.get("binding:vnic_type") not in SMARTNIC_VNICS:
        return None
    for lli in (port.get("binding:profile") or {}).get("local_link_information") or ():
        named = lli.get("hostname") if isinstance(lli, dict) else None
        if isinstance(lli, dict) and isinstance(lli.get("port_id"), str) and (
                named == host or (named is None and port.get("binding:host_id") == host)):
            return lli["port_id"]
    return None


def interface_of(port: dict, host: str) -> str:
    """The interface carrying a port's packets on `host`."""
    return representor(port, host) or vif_name(port["id"])


def links(netns: str | None) -> set[str]:
    """Interface names in a network namespace (by name or /proc path; None: ours)."""
    from sbnet.agent.slowpath import in_netns
    with in_netns(netns):                 # if_nameindex asks the thread's namespace
        return {name for _, name in socket.if_nameindex()}


def tap_attacher(dp, agent_ref: list, netns: str | None = None,
                 adopt: dict[str, int] | None = None, after=None,
                 present: Callable[[], set[str]] | None = None,
                 representors_only: bool = False):
    """vifs() for the agent: the interface of each port bound here (a tap named for it, or
    its representor) attached to `dp` as it appears and detached when it goes; `adopt`:
    interfaces the datapath already has (name -> ofport, after a restart), taken as they
    are; `after(agent)` runs on each call.  OVS datapaths are plugged (add-port) instead.
    `representors_only`: leave taps alone (on OVS, os-vif plugs them with an iface-id)."""
    attached: dict[str, tuple[str, int]] = {}         # port id -> (interface, ofport)
    adopt = dict(adopt or {})
    present = present or (lambda: links(netns))
    plug = getattr(dp, "attach", None)

    def attach(ofport: int, name: str) -> None:
        (plug(ofport, name) if plug is not None else dp.plug(name, ofport))

    def detach(name: str, ofport: int) -> None:
        (dp.detach(ofport) if plug is not None else dp.unplug(name))

    def vifs() -> dict[str, int]:
        agent = agent_ref[0]
        have = present()
        mine = {pid: interface_of(p, agent.host)
                for pid, p in agent.mirror.by_type.get("port", {}).items()
                if (p.get("binding:host_id") == agent.host and not representors_only)
                or representor(p, agent.host)}
        for pid, (name, ofport) in list(attached.items()):
            if name not in have or mine.get(pid) != name:
                detach(name, ofport)
                del attached[pid]
        taken = set(dp.port_names().values())
        for pid, name in mine.items():
            if pid in attached:
                continue
            if name in adopt:
                attached[pid] = (name, adopt.pop(name))
            elif name in have:
                ofport = FIRST_VIF_OFPORT
                while ofport in taken:
                    ofport += 1
                attach(ofport, name)
                taken.add(ofport)
                attached[pid] = (name, ofport)
        if after is not None:
            after(agent)
        return {pid: ofport for pid, (_, ofport) in attached.items()}
    return vifs
