"""Probe traffic for an embedded cluster: frames with their sender, receiver and expected fate."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import dpkt

OUTSIDE = "outside"                      # the external world on a physical network
OUTSIDE_MAC = "02:ee:00:00:00:07"
OUTSIDE_IP = "198.51.100.7"
TCP_FLAGS = {"S": dpkt.tcp.TH_SYN, "A": dpkt.tcp.TH_ACK, "P": dpkt.tcp.TH_PUSH,
             "F": dpkt.tcp.TH_FIN, "R": dpkt.tcp.TH_RST}


@dataclass(frozen=True)
class Endpoint:
    """Who sends or receives: a port by name (or OUTSIDE), its MAC and IPv4 address."""

    name: str
    mac: str
    ip: str


@dataclass
class Probe:
    """One frame: sent by `sender` (a port name, or OUTSIDE onto `physnet`), meant for
    `receiver` (a port name, or OUTSIDE), and whether a correct cloud forwards it.  It has
    arrived when a frame reaches the receiver with IPv4 source `seen_src` and destination
    `seen_dst` (None: any), which is how NAT on the way is checked."""

    category: str
    sender: str
    frame: bytes
    receiver: str
    expect: bool
    seen_src: str | None = None
    seen_dst: str | None = None
    first: bool = True                   # the first frame of its flow (connection)
    physnet: str = "physnet1"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ipv4(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, proto: int, l4) -> bytes:
    ip = dpkt.ip.IP(src=_aton(src_ip), dst=_aton(dst_ip), p=proto, ttl=64, data=l4)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=mac(src_mac), dst=mac(dst_mac),
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def _aton(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


def tcp(src: Endpoint, dst: Endpoint, sport: int, dport: int, flags: str, seq: int = 0,
        ack: int = 0, payload: bytes = b"", **over) -> bytes:
    bits = 0
    for f in flags:
        bits |= TCP_FLAGS[f]
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=bits, seq=seq, ack=ack, win=65535,
                       data=payload)
    return ipv4(over.get("eth_src", src.mac), over.get("eth_dst", dst.mac),
                over.get("ip_src", src.ip), over.get("ip_dst", dst.ip), dpkt.ip.IP_PROTO_TCP, seg)


def udp(src: Endpoint, dst: Endpoint, sport: int, dport: int, payload: bytes = b"ping",
        **over) -> bytes:
    dg = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    dg.ulen = len(dg)
    return ipv4(over.get("eth_src", src.mac), over.get("eth_dst", dst.mac),
                over.get("ip_src", src.ip), over.get("ip_dst", dst.ip), dpkt.ip.IP_PROTO_UDP, dg)


def icmp_echo(src: Endpoint, dst: Endpoint, ident: int, seq: int, reply: bool = False,
              **over) -> bytes:
    msg = dpkt.icmp.ICMP(type=0 if reply else 8, code=0,
                         data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=b"sbnet"))
    return ipv4(over.get("eth_src", src.mac), over.get("eth_dst", dst.mac),
                over.get("ip_src", src.ip), over.get("ip_dst", dst.ip), dpkt.ip.IP_PROTO_ICMP, msg)


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    arp = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REQUEST, sha=mac(src_mac), spa=_aton(src_ip),
                       tha=b"\x00" * 6, tpa=_aton(target_ip))
    return bytes(dpkt.ethernet.Ethernet(src=mac(src_mac), dst=b"\xff" * 6,
                                        type=dpkt.ethernet.ETH_TYPE_ARP, data=arp))


def arp_reply_mac(frames: list[bytes], target_ip: str) -> str | None:
    """The MAC an ARP reply in `frames` gives for target_ip, if any."""
    for f in frames:
        eth = dpkt.ethernet.Ethernet(f)
        if isinstance(eth.data, dpkt.arp.ARP) and eth.data.op == dpkt.arp.ARP_OP_REPLY \
                and eth.data.spa == _aton(target_ip):
            return ":".join(f"{b:02x}" for b in eth.data.sha)
    return None


def ipv4_addresses(frame: bytes) -> tuple[str, str] | None:
    """(source, destination) of an IPv4 frame (VLAN-tagged or not)."""
    ip = dpkt.ethernet.Ethernet(frame).data
    if isinstance(ip, dpkt.ip.IP):
        return ".".join(map(str, ip.src)), ".".join(map(str, ip.dst))
    return None


class Traffic:
    """Builds probes: each connection's packets in order, replies from the receiver."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.probes: list[Probe] = []

    def port(self) -> int:
        return self.rng.randint(32768, 60999)

    def add(self, category: str, sender: Endpoint, receiver: Endpoint, frame: bytes,
            expect: bool, first: bool = True, seen: dict | None = None) -> None:
        """seen: {"src": ..., "dst": ...} the receiver should see; the outside world is
        told apart from other traffic on its network by its address."""
        seen = {"dst": receiver.ip if receiver.name == OUTSIDE else None, **(seen or {})}
        self.probes.append(Probe(category, sender.name, frame, receiver.name, expect,
                                 seen.get("src"), seen.get("dst"), first))

    def tcp_connection(self, category: str, client: Endpoint, server: Endpoint, dport: int,
                       via_out: dict | None = None, via_back: dict | None = None,
                       seen_out: dict | None = None, seen_back: dict | None = None) -> None:
        """Handshake, one request and its acknowledgement.  via_out/via_back override the
        frames' headers when a router or NAT sits between the two (first-hop MACs, the
        address each side believes the other has); seen_out/seen_back are the addresses
        each side should see after NAT."""
        out, back = via_out or {}, via_back or {}
        so, sb = {"seen": seen_out}, {"seen": seen_back}
        sport, c, s = self.port(), self.rng.randrange(1 << 31), self.rng.randrange(1 << 31)
        self.add(category, client, server, tcp(client, server, sport, dport, "S", c, **out), True,
                 **so)
        self.add(category, server, client, tcp(server, client, dport, sport, "SA", s, c + 1,
                                               **back), True, first=False, **sb)
        self.add(category, client, server, tcp(client, server, sport, dport, "A", c + 1, s + 1,
                                             **out), True, first=False, **so)
        self.add(category, client, server, tcp(client, server, sport, dport, "PA", c + 1, s + 1,
                                             b"GET / HTTP/1.0\r\n\r\n", **out), True, first=False,
                 **so)
        self.add(category, server, client, tcp(server, client, dport, sport, "A", s + 1, c + 19,
                                               **back), True, first=False, **sb)

    def udp_exchange(self, category: str, a: Endpoint, b: Endpoint, dport: int) -> None:
        sport = self.port()
        self.add(category, a, b, udp(a, b, sport, dport), True)
        self.add(category, b, a, udp(b, a, dport, sport, b"pong"), True, first=False)

    def ping(self, category: str, a: Endpoint, b: Endpoint, expect: bool = True) -> None:
        ident = self.rng.randrange(1 << 16)
        self.add(category, a, b, icmp_echo(a, b, ident, 1), expect)
        if expect:
            self.add(category, b, a, icmp_echo(b, a, ident, 1, reply=True), True, first=False)


def demo_traffic(ports: dict[str, dict], snapshot: dict, resolve: Callable[[str], str | None],
                 scale: int = 1, seed: int = 7) -> list[Probe]:
    """The traffic of `sbnet run --demo` over examples/demo-topology.yaml: allowed TCP, UDP and
    ICMP across hosts, denied connections, spoofed sources, cross-project attempts, routed
    traffic, SNAT to the outside and the floating IP from the outside.  `resolve(ip)` asks
    the physical network for a MAC (an ARP from outside), for the floating IP's first hop."""
    ep = {name: Endpoint(name, p["mac_address"], p["fixed_ips"][0]["ip_address"])
          for name, p in ports.items()}
    gw = _router_macs(snapshot)
    outside = Endpoint(OUTSIDE, OUTSIDE_MAC, OUTSIDE_IP)
    fip = next(f["floating_ip_address"] for f in snapshot.get("floatingip", ()))
    snat = next(r["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
                for r in snapshot.get("router", ()) if r.get("external_gateway_info"))
    gw_port = next((p for p in snapshot.get("port", ())
                    if p["device_owner"] == "network:router_gateway"), None)
    fip_mac = resolve(fip) or (gw_port["mac_address"] if gw_port else OUTSIDE_MAC)
    t = Traffic(seed)
    web, clients = [ep["web1"], ep["web2"]], [ep["client1"], ep["client2"]]

    for i in range(16 * scale):
        t.tcp_connection("allowed: TCP to web :80", clients[i % 2], web[(i // 2) % 2], 80)
    for i in range(10 * scale):
        t.udp_exchange("allowed: UDP, default group", ep["db1"], ep["db2"], 5432)
        t.udp_exchange("allowed: UDP, default group", ep["cache2"], ep["cache1"], 6379)
    for i in range(10 * scale):
        t.ping("allowed: ICMP", clients[i % 2], web[i % 2])
        t.ping("allowed: ICMP", ep["db2"], ep["db1"])
    for i in range(30 * scale):
        c, w = clients[i % 2], web[(i // 2) % 2]
        t.add("denied: no rule admits it", c, w, tcp(c, w, t.port(), 22, "S"), False)
        t.add("denied: no rule admits it", w, c, tcp(w, c, t.port(), 8080, "S"), False)
    for i in range(12 * scale):
        w = web[i % 2]
        t.add("denied: spoofed source", w, clients[0],
              tcp(w, clients[0], t.port(), 80, "S", ip_src=f"10.0.0.{100 + i % 150}"), False)
        t.add("denied: spoofed source", ep["cache1"], ep["cache2"],
              udp(ep["cache1"], ep["cache2"], t.port(), 6379,
                  ip_src=f"10.2.0.{101 + i % 150}"), False)
        t.add("denied: spoofed source", clients[1], w,
              tcp(clients[1], w, t.port(), 80, "S", eth_src=f"02:66:00:00:00:{i % 256:02x}"), False)
    for i in range(16 * scale):
        # Same addresses in both projects: only the network tells them apart.
        t.add("denied: cross-project", ep["client1"], ep["db1"],
              icmp_echo(ep["client1"], ep["db1"], i, 1), False)
        t.add("denied: cross-project", ep["db2"], ep["web2"],
              tcp(ep["db2"], ep["web2"], t.port(), 80, "S"), False)
    for i in range(6 * scale):
        c = clients[i % 2]
        t.tcp_connection("routed: alpha-front to alpha-back", c, ep["app1"], 8000,
                         via_out={"eth_dst": gw["alpha-front"]},
                         via_back={"eth_dst": gw["alpha-back"]})
    for i in range(12 * scale):
        c = clients[i % 2]
        t.add("routed: SNAT to the outside", c, outside,
              tcp(c, outside, t.port(), 443, "S", eth_dst=gw["alpha-front"]), True,
              seen={"src": snat})
    for i in range(6 * scale):
        t.tcp_connection("floating IP from the outside", outside, ep["web1"], 80,
                         via_out={"eth_dst": fip_mac, "ip_dst": fip},
                         via_back={"eth_dst": gw["alpha-front"]},
                         seen_out={"dst": ep["web1"].ip}, seen_back={"src": fip})
    return t.probes


def _router_macs(snapshot: dict) -> dict[str, str]:
    """Network name -> the MAC of the router interface on it (the VMs' first hop)."""
    names = {n["id"]: n["name"] for n in snapshot.get("network", ())}
    return {names.get(p["network_id"], p["network_id"]): p["mac_address"]
            for p in snapshot.get("port", ()) if p["device_owner"] == "network:router_interface"}
