"""The `sbnet-cni` executable: ADD, DEL and CHECK against the Neutron API (direct) or the SmartNIC's agent (NIC mode)."""

from __future__ import annotations

import os
import sys
import time

from sbnet.cni import link
from sbnet.cni.client import JsonClient, NotFound, neutron
from sbnet.cni.ports import (delete_port, find_port, interface_plan, network, port_body,
                             security_groups, subnets_of, vif_name)
from sbnet.cni.spec import (INTERFACE_DRIFT, INVALID_CONFIG, TRY_AGAIN_LATER, UNSUPPORTED_FIELD,
                            CniError, Invocation, run)

DIRECT_FIELDS = {"api", "network", "host", "project_id", "roles", "token", "token_file", "auth",
                 "security_groups", "qos_policy", "ovsdb", "wait_active", "timeout",
                 "tx_checksum"}
NIC_FIELDS = {"nic", "network", "timeout", "tx_checksum"}
# What the specification lets a runtime add to any configuration.
RUNTIME_FIELDS = {"cniVersion", "name", "type", "args", "ipMasq", "ipam", "dns", "prevResult",
                  "runtimeConfig", "capabilities", "disableCheck"}


def result(inv: Invocation, plan: dict, host_end: dict | None = None) -> dict:
    """The CNI 1.0 result: interfaces (the host end first when there is one), IPs on the
    container's interface, routes, DNS."""
    ifaces = ([host_end] if host_end else []) + [
        {"name": inv.ifname, "mac": plan["mac"], "sandbox": inv.netns}]
    index = len(ifaces) - 1
    return {"cniVersion": inv.version, "interfaces": ifaces,
            "ips": [dict(ip, interface=index) for ip in plan["ips"]],
            "routes": plan["routes"], "dns": plan["dns"]}


def _check_fields(config: dict, allowed: set[str]) -> None:
    extra = sorted(set(config) - allowed - RUNTIME_FIELDS)
    if extra:
        raise CniError(UNSUPPORTED_FIELD, f"unsupported field(s) in the network configuration: "
                                          f"{', '.join(extra)}")


def _drift_against_prev(inv: Invocation, plan: dict) -> list[str]:
    """What the runtime's prevResult says that the port no longer does."""
    prev = inv.config.get("prevResult") or {}
    out = []
    mine = [i for i in prev.get("interfaces") or () if i.get("name") == inv.ifname]
    if mine and (mine[0].get("mac") or "").lower() != plan["mac"].lower():
        out.append(f"prevResult's MAC {mine[0].get('mac')} is not the port's {plan['mac']}")
    prev_ips = sorted(i.get("address") for i in prev.get("ips") or ())
    if prev.get("ips") is not None and prev_ips != sorted(i["address"] for i in plan["ips"]):
        out.append(f"prevResult's addresses {', '.join(prev_ips)} are not the port's")
    return out


class Direct:
    """The plugin holds credentials for the API: it makes the port, plugs a veth into the
    host's sbnet datapath as the port's binding says (a tap the agent finds by name, or an
    OVS port carrying iface-id) and configures the container's end."""

    def __init__(self, inv: Invocation) -> None:
        _check_fields(inv.config, DIRECT_FIELDS)
        self.inv = inv
        self.conf = inv.config
        self.api = neutron(self.conf)
        self.host = self.conf.get("host") or os.uname().nodename

    def _ovs(self, *args: str) -> None:
        db = self.conf.get("ovsdb", "unix:/var/run/openvswitch/db.sock")
        link.run(None, "ovs-vsctl", f"--db={db}", "--timeout=10", *args)

    def _plan(self, port: dict, net: dict) -> dict:
        return interface_plan(port, net, subnets_of(self.api, net))

    def add(self) -> dict:
        inv, conf = self.inv, self.conf
        link.require_netns(inv.netns)
        net = network(self.api, conf.get("network"))
        port = find_port(self.api, inv.container_id, inv.ifname, self.host)
        if port is None:
            project = conf.get("project_id")
            body = port_body(net, inv.container_id, inv.ifname, self.host, project,
                             security_groups(self.api, conf.get("security_groups"), project),
                             conf.get("qos_policy"))
            port = self.api.post("/v2.0/ports", {"port": body})["port"]
        vif_type = port.get("binding:vif_type")
        if vif_type not in ("tap", "ovs"):
            raise CniError(TRY_AGAIN_LATER, f"port {port['id']} did not bind on host "
                           f"{port.get('binding:host_id')} (binding:vif_type {vif_type})",
                           "is the host's sbnet agent running?")
        plan = self._plan(port, net)
        host_end = vif_name(port["id"])
        if not (link.exists(None, host_end) and link.exists(inv.netns, inv.ifname)):
            link.delete(None, host_end)
            link.delete(inv.netns, inv.ifname)
            link.make_veth(host_end, inv.netns, inv.ifname, plan["mtu"])
        if vif_type == "ovs":
            details = port.get("binding:vif_details") or {}
            self._ovs("--may-exist", "add-port", details.get("bridge_name", "br-int"), host_end,
                      "--", "set", "Interface", host_end,
                      f"external_ids:iface-id={port['id']}",
                      f"external_ids:attached-mac={port['mac_address']}",
                      "external_ids:iface-status=active",
                      f"external_ids:vm-uuid={inv.container_id}")
        link.configure(inv.netns, inv.ifname, plan, bool(conf.get("tx_checksum")))
        self._wait_active(port["id"], float(conf.get("wait_active", 10)))
        mac = open(f"/sys/class/net/{host_end}/address").read().strip()
        return result(inv, plan, {"name": host_end, "mac": mac})

    def _wait_active(self, port_id: str, seconds: float) -> None:
        """Until the host's agent has the port wired (it reports it ACTIVE)."""
        deadline = time.monotonic() + seconds
        while seconds > 0:
            status = self.api.get(f"/v2.0/ports/{port_id}")["port"]["status"]
            if status == "ACTIVE":
                return
            if time.monotonic() > deadline:
                raise CniError(TRY_AGAIN_LATER, f"port {port_id} is {status} after {seconds:g} s",
                               "the host's sbnet agent has not wired it")
            time.sleep(0.05)

    def delete(self) -> None:
        inv = self.inv
        port = find_port(self.api, inv.container_id, inv.ifname, self.host)
        if inv.netns:
            link.delete(inv.netns, inv.ifname)
        if port is None:
            return
        host_end = vif_name(port["id"])
        if port.get("binding:vif_type") == "ovs":
            bridge = (port.get("binding:vif_details") or {}).get("bridge_name", "br-int")
            self._ovs("--if-exists", "del-port", bridge, host_end)
        link.delete(None, host_end)
        delete_port(self.api, port["id"])

    def check(self) -> None:
        inv = self.inv
        link.require_netns(inv.netns)
        port = find_port(self.api, inv.container_id, inv.ifname, self.host)
        if port is None:
            raise CniError(INTERFACE_DRIFT, f"no port for {inv.container_id}/{inv.ifname}")
        net = network(self.api, port["network_id"])
        plan = self._plan(port, net)
        problems = link.drift(plan, link.inspect(inv.netns, inv.ifname))
        problems += _drift_against_prev(inv, plan)
        if port.get("status") != "ACTIVE":
            problems.append(f"port {port['id']} is {port.get('status')}")
        if problems:
            raise CniError(INTERFACE_DRIFT, f"{inv.ifname} has drifted from port {port['id']}",
                           "; ".join(problems))


class ThroughNic:
    """NIC mode: no credentials here.  The SmartNIC's agent, over its local channel, makes
    the port and hands out one of its VFs; the plugin moves that VF into the container and
    configures it as the agent says."""

    def __init__(self, inv: Invocation) -> None:
        _check_fields(inv.config, NIC_FIELDS)
        self.inv = inv
        self.nic = JsonClient(inv.config["nic"], timeout=float(inv.config.get("timeout", 30)),
                              what="the NIC's agent")

    def _path(self) -> str:
        return f"/v1/interfaces/{self.inv.container_id}/{self.inv.ifname}"

    def add(self) -> dict:
        inv = self.inv
        link.require_netns(inv.netns)
        network_ref = inv.config.get("network")
        if not isinstance(network_ref, str) or not network_ref:
            raise CniError(INVALID_CONFIG, "network configuration needs network")
        got = self.nic.put(self._path(), {"network": network_ref})
        dev, plan = got["device"], got["plan"]
        if not link.exists(inv.netns, inv.ifname):
            if not link.exists(None, dev):
                raise CniError(INTERFACE_DRIFT, f"the NIC gave {dev}, which is not here")
            link.move_in(dev, inv.netns, inv.ifname)
        link.configure(inv.netns, inv.ifname, plan, bool(inv.config.get("tx_checksum")))
        return result(inv, plan)

    def delete(self) -> None:
        inv = self.inv
        try:
            dev = self.nic.get(self._path())["device"]
        except NotFound:
            dev = None
        if dev and inv.netns and not link.exists(None, dev):
            link.move_out(inv.netns, inv.ifname, dev)
        try:
            self.nic.delete(self._path())
        except NotFound:
            pass

    def check(self) -> None:
        inv = self.inv
        link.require_netns(inv.netns)
        try:
            got = self.nic.get(self._path())
        except NotFound:
            raise CniError(INTERFACE_DRIFT, f"the NIC has no interface for "
                                            f"{inv.container_id}/{inv.ifname}") from None
        problems = link.drift(got["plan"], link.inspect(inv.netns, inv.ifname))
        problems += _drift_against_prev(inv, got["plan"])
        if got.get("status") != "ACTIVE":
            problems.append(f"its port is {got.get('status')}")
        if problems:
            raise CniError(INTERFACE_DRIFT, f"{inv.ifname} has drifted from what the NIC gave",
                           "; ".join(problems))


def mode(inv: Invocation):
    if "nic" in inv.config:
        return ThroughNic(inv)
    if "api" in inv.config:
        return Direct(inv)
    raise CniError(INVALID_CONFIG, "network configuration needs api (the Neutron API's URL) "
                                   "or nic (the SmartNIC agent's local channel)")


HANDLERS = {"ADD": lambda inv: mode(inv).add(), "DEL": lambda inv: mode(inv).delete(),
            "CHECK": lambda inv: mode(inv).check()}


def main() -> None:
    sys.exit(run(HANDLERS, os.environ, sys.stdin.read(), sys.stdout))


if __name__ == "__main__":
    main()
