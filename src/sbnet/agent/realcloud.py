"""A cloud on real Linux stacks: the API in-process, hosts and VMs as network namespaces, one
host agent per host (used by the end-to-end tests and by `sbnet run --real`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from sbnet.agent.agent import ApiSource, HostAgent
from sbnet.agent.netns import Topology, Vm, sh
from sbnet.agent.slowpath import ServicePort
from sbnet.api.local import LocalApi
from sbnet.compiler.topology import SERVICE_OFPORT, TUNNEL_OFPORTS

PHYSNET_OFPORT = 900            # each host's port on a physical network (900, 901, ...)


class RealCloud:
    """Hosts of one backend ("ovs" or "reference"), each with the three tunnel ports and a
    port on every physical network (a Linux bridge all hosts and the outside world share);
    `vm()` makes a Neutron port and plugs a VM namespace into it, as Nova would.  Each
    host's agent answers DHCP on its slow-path port (native DHCP)."""

    def __init__(self, topo: Topology, backend: str, hosts=("h1", "h2"),
                 physnets: tuple[str, ...] = (), api: LocalApi | None = None,
                 metadata: tuple[str, str] | None = None, handover: bool = True) -> None:
        """metadata: (URL, shared secret) of a metadata service each host's agent proxies
        http://169.254.169.254 to.  handover: False to migrate without moving connection
        state (what it saves is measured against that)."""
        self.topo = topo
        self.api = api or LocalApi()
        self.source = ApiSource(self.api.client)
        self.vifs: dict[str, dict[str, int]] = {h: {} for h in hosts}
        self.agents: dict[str, HostAgent] = {}
        self.proxies: list = []
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
            svc = ServicePort(host.netns)
            if backend == "ovs":
                host.datapath.add_port(svc.create(), SERVICE_OFPORT)
            else:
                host.datapath.attach(SERVICE_OFPORT, svc.create())
            agent = HostAgent(name, host.datapath, self.source, host.underlay_ip, ports,
                              vifs=lambda n=name: dict(self.vifs[n]),
                              service_ofport=SERVICE_OFPORT, slow_path=svc.start())
            agent.migration.moves_conns &= handover
            agent.start()
            self.agents[name] = agent
            if metadata is not None:
                from sbnet.agent.metadata import MetadataProxy
                self.proxies.append(MetadataProxy(*metadata, agent.port_at, host.netns).start())

    def _wire(self, netns: str, inside: str, outside: str, bridge: str) -> None:
        """A veth from `netns` (named `inside`) to the physical network's bridge."""
        ul = self.topo._underlay()
        sh("ip", "link", "add", inside, "netns", netns, "type", "veth",
           "peer", "name", outside, "netns", ul)
        sh("ip", "-n", ul, "link", "set", outside, "master", bridge, "up")
        sh("ip", "-n", netns, "link", "set", inside, "arp", "off", "up")

    def network(self, project: str, cidr: str | Sequence[str], kind: str = "vxlan",
                **kw) -> dict:
        """A network with one subnet per CIDR (IPv4 or IPv6, from the CIDR); the first is
        net["subnet"], all of them net["subnets"]."""
        net = self.api.create("networks", project=project, **{"provider:network_type": kind},
                              **kw)
        cidrs = [cidr] if isinstance(cidr, str) else list(cidr)
        net["subnets"] = [self.api.create("subnets", project=project, network_id=net["id"],
                                          cidr=c, ip_version=ipaddress.ip_network(c).version)
                          for c in cidrs]
        net["subnet"] = net["subnets"][0]
        return net

    def vm(self, name: str, project: str, net: dict, host: str, ipv6: bool = False,
           dhcp: bool = False, **kw) -> tuple[dict, Vm]:
        """A Neutron port bound to `host` and a VM namespace plugged into it (`ipv6`, `dhcp`:
        see plug)."""
        port = self.api.create("ports", project=project, network_id=net["id"],
                               **{"binding:host_id": host}, **kw)
        return port, self.plug(name, port, net["subnet"], ipv6=ipv6, dhcp=dhcp)

    def plug(self, name: str, port: dict, subnet: dict | None = None, ipv6: bool = False,
             dhcp: bool = False) -> Vm:
        """A VM namespace for an existing port: its MAC, its first IPv4 address with the
        subnet's prefix and gateway.  `ipv6`: IPv6 on, with every IPv6 fixed IP of the port
        (its subnet's prefix) and a default route via the first one's subnet gateway.
        `dhcp`: no IPv4 address or route: the VM is to ask for them by DHCP."""
        host = port["binding:host_id"]
        subnets = {subnet["id"]: subnet} if subnet else {}

        def subnet_of(fixed: dict) -> dict:
            sid = fixed["subnet_id"]
            if sid not in subnets:
                subnets[sid] = self.api.request("GET", f"subnets/{sid}")["subnet"]
            return subnets[sid]

        def with_prefix(fixed: dict) -> str:
            return f"{fixed['ip_address']}/{subnet_of(fixed)['cidr'].split('/')[1]}"

        v4 = [f for f in port["fixed_ips"] if _version(f) == 4 and not dhcp]
        v6 = [f for f in port["fixed_ips"] if _version(f) == 6 and ipv6]
        vm = self.topo.add_vm(name, host, with_prefix(v4[0]) if v4 else None,
                              mac=port["mac_address"],
                              gateway=subnet_of(v4[0]).get("gateway_ip") if v4 else None,
                              ipv6=[with_prefix(f) for f in v6],
                              gateway6=subnet_of(v6[0]).get("gateway_ip") if v6 else None)
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
        # A frame AF_PACKET reads (the reference switch) carries no checksum left to the NIC.
        sh("ethtool", "-K", "eth0", "tx", "off", netns=ns)
        if gateway:
            sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
        return ns

    def move(self, vm: Vm, port: dict, dest: str):
        """Start moving `vm` (port `port`) to host `dest` as a hypervisor does: its tap is
        plugged there now (the agent sees the VIF); VmMove.switch_over() and
        finish_move() do the rest."""
        from sbnet.agent.vmmove import VmMove
        mv = VmMove(self.topo, vm, self.topo.hosts[dest])
        self.vifs[dest][port["id"]] = mv.plug()
        return mv

    def finish_move(self, mv, port: dict) -> None:
        """After the switch-over: the source's tap goes."""
        self.vifs[mv.source.name].pop(port["id"], None)
        mv.unplug_source()

    def abort_move(self, mv, port: dict) -> None:
        """A migration that failed before the switch-over: the destination's tap goes."""
        self.vifs[mv.dest.name].pop(port["id"], None)
        mv.abort()

    def close(self) -> None:
        """Stop what runs in this process for the hosts: metadata proxies, slow paths."""
        for p in self.proxies:
            p.close()
        for agent in self.agents.values():
            agent.stop()

    def sync(self) -> None:
        for _ in range(2):                # the second round takes in the status reports
            for agent in self.agents.values():
                agent.step()


def _version(fixed_ip: dict) -> int:
    return ipaddress.ip_address(fixed_ip["ip_address"]).version


def first_ipv4(port: dict) -> str | None:
    return next((f["ip_address"] for f in port.get("fixed_ips") or ()
                 if ipaddress.ip_address(f["ip_address"]).version == 4), None)


# A load balancer's member VM: says its name (argv[1]) on each TCP connection to 8080, then
# echoes; answers UDP on 5353 with its name (tests/agent/test_lb_real.py, bench/bench_lb.py).
LB_MEMBER = ("import socket,sys,threading\n"
             "name=sys.argv[1].encode()\n"
             "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
             "s.bind(('0.0.0.0',8080));s.listen(1024)\n"
             "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind(('0.0.0.0',5353))\n"
             "def udp():\n"
             "    while True:\n"
             "        d,a=u.recvfrom(100);u.sendto(name,a)\n"
             "def serve(c):\n"
             "    c.sendall(name+b'\\n')\n"
             "    while True:\n"
             "        d=c.recv(100)\n"
             "        if not d: break\n"
             "        c.sendall(d)\n"
             "    c.close()\n"
             "threading.Thread(target=udp,daemon=True).start()\n"
             "print('ready',flush=True)\n"
             "while True:\n"
             "    c,_=s.accept();threading.Thread(target=serve,args=(c,),daemon=True).start()\n")


def lb_create(api, path: str, project: str = "p1", **body) -> dict:
    """POST an Octavia resource (path under /v2.0/lbaas, e.g. "pools/<id>/members")."""
    kind = path.rsplit("/", 1)[-1].rstrip("s")
    return api.request("POST", f"lbaas/{path}", {kind: body}, project=project)[kind]


def lb_tcp(api, subnet_id: str, members: list[tuple[str, int]], port: int = 80,
           member_port: int = 8080, algorithm: str = "SOURCE_IP_PORT") -> tuple[dict, dict, list]:
    """A load balancer with a TCP listener on `port` and a pool of (address, weight) members
    listening on member_port: (load balancer, pool, members)."""
    lb = lb_create(api, "loadbalancers", vip_subnet_id=subnet_id)
    li = lb_create(api, "listeners", loadbalancer_id=lb["id"], protocol="TCP", protocol_port=port)
    pool = lb_create(api, "pools", listener_id=li["id"], protocol="TCP", lb_algorithm=algorithm)
    made = [lb_create(api, f"pools/{pool['id']}/members", address=a, protocol_port=member_port,
                      weight=w) for a, w in members]
    return lb, pool, made
