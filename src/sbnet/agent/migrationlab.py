"""A cloud set up to watch live migrations on namespaces: a VM that moves between hosts, a peer streaming to it through stateful security groups."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from sbnet.agent.netns import Topology
from sbnet.agent.realcloud import RealCloud
from sbnet.cli.migrate import NOVA, Timeline, drive

PEER_PORTS = (5001, 5209)       # TCP the peer's group admits (the probes and iperf3's 5201)
OUTSIDE_IP = "203.0.113.50"     # the external namespace, on the flat external network

# The VM's announcements of itself on arrival, sent from its namespace by one process that
# loads scapy once (seconds on a busy machine): each stdin line "kind address MAC" sends a
# RARP as QEMU sends it, a gratuitous ARP, or an unsolicited neighbour advertisement
# (override set) to all nodes, on whatever eth0 is then (scapy's interface list read anew: the
# VM's eth0 is another interface after a move), and answers "sent".
ANNOUNCER = ("import sys\n"
             "from scapy.config import conf\n"
             "from scapy.layers.inet6 import IPv6, ICMPv6ND_NA, ICMPv6NDOptDstLLAddr\n"
             "from scapy.layers.l2 import ARP, Ether\n"
             "from scapy.sendrecv import sendp\n"
             "print('ready', flush=True)\n"
             "for line in sys.stdin:\n"
             "    kind, ip, mac = line.split()\n"
             "    if kind == 'rarp':\n"
             "        f = Ether(src=mac, dst='ff:ff:ff:ff:ff:ff', type=0x8035) / ARP(\n"
             "            op=3, hwsrc=mac, hwdst=mac, psrc='0.0.0.0', pdst='0.0.0.0')\n"
             "    elif kind == 'garp':\n"
             "        f = Ether(src=mac, dst='ff:ff:ff:ff:ff:ff') / ARP(op=1, hwsrc=mac, psrc=ip,\n"
             "                                                      pdst=ip)\n"
             "    else:\n"
             "        f = (Ether(src=mac, dst='33:33:00:00:00:01') / IPv6(src=ip, dst='ff02::1',\n"
             "             hlim=255) / ICMPv6ND_NA(tgt=ip, R=0, S=0, O=1)\n"
             "             / ICMPv6NDOptDstLLAddr(lladdr=mac))\n"
             "    conf.ifaces.reload()\n"
             "    sendp(f, iface='eth0', verbose=False)\n"
             "    print('sent', flush=True)\n")


@dataclass
class MigrationLab:
    """Three hosts; `peer` on h1 admits TCP PEER_PORTS and ICMP; `mover` starts on h2 in a
    group with no ingress rule, so what reaches it is only replies to what it opened (the
    case a stateful group must recognise after the move).  Their network has an IPv6
    subnet too (the VMs run IPv4 only): the mover's IPv6 address is what its unsolicited
    neighbour advertisement announces.  A router joins their network to
    a flat external network on physnet1, where the namespace `outside` (OUTSIDE_IP) is;
    the mover has a floating IP (`fip`): its connections to the outside leave through it."""

    cloud: RealCloud
    port: dict
    peer: object
    mover: object
    fip: str = ""
    switched: tuple[float, float] = (0.0, 0.0)     # monotonic: the last switch-over began, ended
    announcer: subprocess.Popen | None = None       # ANNOUNCER in the mover's namespace
    announcer_ready: bool = False

    @classmethod
    def build(cls, topo: Topology, backend: str) -> "MigrationLab":
        cloud = RealCloud(topo, backend, hosts=("h1", "h2", "h3"), physnets=("physnet1",))
        api = cloud.api
        ext = cloud.network("admin", "203.0.113.0/24", kind="flat",
                            **{"provider:physical_network": "physnet1", "router:external": True})
        upstream = api.create("ports", project="admin", network_id=ext["id"],
                              fixed_ips=[{"ip_address": OUTSIDE_IP}])
        cloud.outside("outside", "physnet1", f"{OUTSIDE_IP}/24", upstream["mac_address"])
        net = cloud.network("p1", ["10.30.0.0/24", "fd30::/64"])
        router = api.create("routers", project="p1", name="r",
                            external_gateway_info={"network_id": ext["id"]})
        api.action(f"routers/{router['id']}/add_router_interface",
                   {"subnet_id": net["subnet"]["id"]})
        web = api.create("security-groups", project="p1", name="web")
        for proto, ports in (("tcp", PEER_PORTS), ("icmp", None)):
            api.create("security-group-rules", project="p1", security_group_id=web["id"],
                       direction="ingress", ethertype="IPv4", protocol=proto,
                       **({"port_range_min": ports[0], "port_range_max": ports[1]}
                          if ports else {}))
        client = api.create("security-groups", project="p1", name="client-only")
        for r in api.request("GET", "security-group-rules?security_group_id="
                             + client["id"])["security_group_rules"]:
            if r["direction"] == "ingress":
                api.delete("security-group-rules", r["id"])
        _, peer = cloud.vm("peer", "p1", net, "h1", security_groups=[web["id"]],
                           device_owner="compute:nova")
        port, mover = cloud.vm("mover", "p1", net, "h2", security_groups=[client["id"]],
                               device_owner="compute:nova")
        fip = api.create("floatingips", project="p1", floating_network_id=ext["id"],
                         port_id=port["id"])["floating_ip_address"]
        for agent in cloud.agents.values():
            agent.start_thread(wait=0.5)
        deadline = time.monotonic() + 30
        for dst in (peer.address, OUTSIDE_IP):
            while topo.ping(mover, dst, count=1, wait=1).returncode != 0:
                if time.monotonic() > deadline:
                    cloud.close()
                    raise RuntimeError(f"mover never reached {dst}")
        return cls(cloud, port, peer, mover, fip)

    @property
    def topo(self) -> Topology:
        return self.cloud.topo

    @property
    def host(self) -> str:
        return self.mover.host.name

    def handover(self, on: bool) -> None:
        """Move connection state with the port (True), or not (what it saves)."""
        for agent in self.cloud.agents.values():
            agent.migration.moves_conns = on and hasattr(agent.datapath, "export_conns")

    def move(self, dest: str, fail: bool = False, profile: dict | None = None,
             switched: Callable[[], None] | None = None) -> tuple[Timeline, float]:
        """Nova's sequence with the hypervisor's part done on the namespaces: (timeline,
        monotonic time of the switch-over).  fail: the hypervisor gives up once the
        destination is ready (the binding is deleted; MigrationFailed raised).  profile:
        the destination binding's; switched: called once the VM runs at the destination,
        before Nova activates the binding."""
        from sbnet.cli.migrate import MigrationFailed
        box: dict = {}

        def plug() -> None:
            box["mv"] = self.cloud.move(self.mover, self.port, dest)

        def switch() -> None:
            box["t"] = time.monotonic()
            if fail:
                self.cloud.abort_move(box["mv"], self.port)
                raise MigrationFailed("the hypervisor gave up")
            box["mv"].switch_over()
            self.switched = (box["t"], time.monotonic())
            self.cloud.finish_move(box["mv"], self.port)
            if switched is not None:
                switched()
        try:
            tl = drive(self.cloud.api.client, self.port["id"], dest, NOVA, plug, switch,
                       timeout=30, poll=0.05, profile=profile)
        except MigrationFailed as exc:
            if fail and "gave up" in str(exc):
                raise
            errors = {h: a.errors[-2:] for h, a in self.cloud.agents.items() if a.errors}
            raise MigrationFailed(f"{exc}; agents' last errors: {errors}") from None
        return tl, box["t"]

    def start_announcer(self) -> None:
        """Start loading the mover's announcer (announce() waits for it), killed by the
        topology's close()."""
        if self.announcer is None:
            self.announcer = self.topo.popen(self.mover, "python3", "-c", ANNOUNCER,
                                             stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def announce(self, kind: str) -> None:
        """The mover announces itself where it runs now (kind: rarp, garp or na), from its
        namespace, as a guest does on arrival; returns once the frame is sent."""
        self.start_announcer()
        proc = self.announcer
        if not self.announcer_ready:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the announcer did not start (exit {proc.wait()})")
            self.announcer_ready = True
        ips = [f["ip_address"] for f in self.port["fixed_ips"]]
        ip = next(a for a in ips if (":" in a) == (kind == "na"))
        proc.stdin.write(f"{kind} {ip} {self.mover.mac}\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "sent":
            raise RuntimeError(f"the announcer failed (exit {proc.wait()})")

    def conns(self, host: str) -> list[str]:
        """The connections of `host`'s datapath that involve the mover."""
        return [c for c in self.topo.hosts[host].datapath.dump_conntrack()
                if f"={self.mover.address}," in c]

    def close(self) -> None:
        self.cloud.close()
