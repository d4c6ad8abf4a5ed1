"""A cloud on real Linux stacks: the API in-process, hosts and VMs as network namespaces, one
host agent per host (used by the end-to-end tests and by `sbnet run --real`)."""

from __future__ import annotations

import ipaddress

from sbnet.agent.agent import ApiSource, HostAgent
from sbnet.agent.netns import Topology, Vm, sh
from sbnet.api.local import LocalApi
from sbnet.compiler.topology import TUNNEL_OFPORTS

PHYSNET_OFPORT = 900            # each host's port on a physical network (900, 901, ...)


class RealCloud:
    """Hosts of one backend ("ovs" or "reference"), each with the three tunnel ports and a
    port on every physical network (a Linux bridge all hosts and the outside world share);
    `vm()` makes a Neutron port and plugs a VM namespace into it, as Nova would."""

    def __init__(self, topo: Topology, backend: str, hosts=("h1", "h2"),
                 physnets: tuple[str, ...] = (), api: LocalApi | None = None) -> None:
        self.topo = topo
        self.api = api or LocalApi()
        self.source = ApiSource(self.api.client)
        self.vifs: dict[str, dict[str, int]] = {h: {} for h in hosts}
        self.agents: dict[str, HostAgent] = {}
        self.bridges: dict[str, str] = {}
        for i, name in enumerate(physnets):
            self.bridges[name] = f"pn{i}"
            sh("ip", "-n", topo._underlay(), "link", "add", f"pn{i}", "type", "bridge")
            sh("ip", "-n", topo._underlay(), "link", "set", f"pn{i}", "up")
        for name in hosts:
            host = topo.add_host(name, backend)
            for kind, ofport in TUNNEL_OFPORTS.items():
                topo.add_tunnel(host, kind, ofport, name=f"{kind}0")
            ports = {}
            for i, pn in enumerate(physnets):
                ofport = PHYSNET_OFPORT + i
                self._wire(host.netns, f"{pn[:10]}", f"{name[:6]}-pn{i}", self.bridges[pn])
                if backend == "ovs":
                    host.datapath.add_port(f"{pn[:10]}", ofport)
                else:
                    host.datapath.attach(ofport, f"{pn[:10]}")
                ports[pn] = ofport
            agent = HostAgent(name, host.datapath, self.source, host.underlay_ip, ports,
                              vifs=lambda n=name: dict(self.vifs[n]))
            agent.start()
            self.agents[name] = agent

    def _wire(self, netns: str, inside: str, outside: str, bridge: str) -> None:
        """A veth from `netns` (named `inside`) to the physical network's bridge."""
        ul = self.topo._underlay()
        sh("ip", "link", "add", inside, "netns", netns, "type", "veth",
           "peer", "name", outside, "netns", ul)
        sh("ip", "-n", ul, "link", "set", outside, "master", bridge, "up")
        sh("ip", "-n", netns, "link", "set", inside, "arp", "off", "up")

    def network(self, project: str, cidr: str, kind: str = "vxlan", **kw) -> dict:
        net = self.api.create("networks", project=project, **{"provider:network_type": kind},
                              **kw)
        net["subnet"] = self.api.create("subnets", project=project, network_id=net["id"],
                                        cidr=cidr, ip_version=4)
        return net

    def vm(self, name: str, project: str, net: dict, host: str, **kw) -> tuple[dict, Vm]:
        """A Neutron port bound to `host` and a VM namespace plugged into it."""
        port = self.api.create("ports", project=project, network_id=net["id"],
                               **{"binding:host_id": host}, **kw)
        return port, self.plug(name, port, net["subnet"])

    def plug(self, name: str, port: dict, subnet: dict) -> Vm:
        """A VM namespace for an existing port (its MAC, first IP, subnet's gateway)."""
        plen = subnet["cidr"].split("/")[1]
        host = port["binding:host_id"]
        vm = self.topo.add_vm(name, host, f"{port['fixed_ips'][0]['ip_address']}/{plen}",
                              mac=port["mac_address"], gateway=subnet.get("gateway_ip"))
        self.vifs[host][port["id"]] = vm.ofport
        return vm

    def outside(self, name: str, physnet: str, ip: str, mac: str, gateway: str | None = None):
        """A namespace of the outside world on a physical network (not behind any host)."""
        ns = self.topo.add_namespace(name)
        ul = self.topo._underlay()
        peer = f"{name[:8]}-x"
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer,
           "netns", ul)
        sh("ip", "-n", ul, "link", "set", peer, "master", self.bridges[physnet], "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
        sh("ip", "-n", ns, "addr", "add", ip, "dev", "eth0")
        if gateway:
            sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
        return ns

    def sync(self) -> None:
        for _ in range(2):                # the second round takes in the status reports
            for agent in self.agents.values():
                agent.step()


def first_ipv4(port: dict) -> str | None:
    return next((f["ip_address"] for f in port.get("fixed_ips") or ()
                 if ipaddress.ip_address(f["ip_address"]).version == 4), None)
