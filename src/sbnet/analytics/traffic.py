"""Synthetic flow traffic (many 5-tuples, several packets each, timed) for replays, tests and benchmarks."""

from __future__ import annotations

import random

import dpkt

from sbnet.flows.fields import ETH_ARP, ETH_IP, ETH_IPV6, IP_ICMP, IP_ICMPV6, IP_TCP, IP_UDP

MACS = [bytes.fromhex(f"0200000000{i:02x}") for i in range(1, 9)]


def flow_traffic(n_flows: int, duration: float = 120.0, seed: int = 1, t0: float = 1.7e9,
                 ports: tuple[int, ...] = (1,), max_packets: int = 12,
                 malformed: int = 3) -> list[tuple[float, bytes, int]]:
    """(time, frame, in_port) sorted by time: TCP/UDP over IPv4 and IPv6, ICMP, ARP, a few runts."""
    r = random.Random(seed)
    out: list[tuple[float, bytes, int]] = []
    for f in range(n_flows):
        src, dst = r.sample(range(8), 2)
        in_port = r.choice(ports)
        kind = r.random()
        v6 = 0.70 <= kind < 0.85
        proto = (6 if r.random() < 0.6 else 17) if kind < 0.85 else (1 if kind < 0.95 else 0)
        sport = r.randint(1024, 65535)
        dport = r.choice([22, 53, 80, 443, 8080]) if proto == 6 else r.choice([53, 123, 4789])
        n = min(max_packets, 1 + int(r.expovariate(0.3)))
        start = t0 + r.uniform(0, duration)
        gap = r.choice([0.01, 0.5, 2.0, 20.0])
        for k in range(n):
            size = r.choice([0, 0, 100, 500, 1400])
            out.append((start + k * gap, _frame(src, dst, v6, proto, sport, dport, size, k, f),
                        in_port))
    for k in range(malformed):
        out.append((t0 + r.uniform(0, duration), MACS[1] + MACS[0] + b"\x08\x00\x45", ports[0]))
    out.sort(key=lambda x: x[0])
    return out


def _frame(src: int, dst: int, v6: bool, proto: int, sport: int, dport: int, size: int,
           k: int, f: int) -> bytes:
    payload = bytes(size)
    if proto == 0:
        arp = dpkt.arp.ARP(op=1, sha=MACS[src], spa=bytes([10, 0, 0, src + 1]),
                           tha=b"\0" * 6, tpa=bytes([10, 0, 0, dst + 1]))
        return bytes(dpkt.ethernet.Ethernet(src=MACS[src], dst=b"\xff" * 6, type=ETH_ARP, data=arp))
    if proto == IP_TCP:
        flags = dpkt.tcp.TH_SYN if k == 0 else dpkt.tcp.TH_ACK | (dpkt.tcp.TH_PUSH if size else 0)
        l4 = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=k, data=payload)
    elif proto == IP_UDP:
        l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        l4.ulen = len(l4)
    else:
        l4 = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=f & 0xFFFF, seq=k, data=payload))
    if v6:
        if proto == IP_ICMP:
            proto = IP_ICMPV6
            l4 = dpkt.icmp6.ICMP6(type=128, data=dpkt.icmp6.ICMP6.Echo(id=f & 0xFFFF, seq=k))
        ip = dpkt.ip6.IP6(src=bytes.fromhex(f"fd00000000000000000000000000{src + 1:04x}"),
                          dst=bytes.fromhex(f"fd00000000000000000000000000{dst + 1:04x}"),
                          nxt=proto, hlim=64, data=l4)
        ip.plen = len(l4)
        etype = ETH_IPV6
    else:
        ip = dpkt.ip.IP(src=bytes([10, 0, 0, src + 1]), dst=bytes([10, 0, 0, dst + 1]),
                        p=proto, ttl=64, data=l4)
        ip.len = len(ip)
        etype = ETH_IP
    return bytes(dpkt.ethernet.Ethernet(src=MACS[src], dst=MACS[dst], type=etype, data=ip))


def five_tuple_truth(packets: list[tuple[float, bytes, int]]) -> dict[tuple, list[int]]:
    """Packets and bytes per (in_port, src, dst, proto, sport, dport), from dpkt's own parse."""
    import ipaddress

    out: dict[tuple, list[int]] = {}
    for _, frame, port in packets:
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP):
            src, dst, proto = str(ipaddress.IPv4Address(ip.src)), str(ipaddress.IPv4Address(ip.dst)), ip.p
        elif isinstance(ip, dpkt.ip6.IP6):
            src, dst, proto = str(ipaddress.IPv6Address(ip.src)), str(ipaddress.IPv6Address(ip.dst)), ip.nxt
        else:
            continue
        l4 = ip.data
        sp, dp = (l4.sport, l4.dport) if proto in (6, 17) else (0, 0)
        acc = out.setdefault((port, src, dst, proto, sp, dp), [0, 0])
        acc[0] += 1
        acc[1] += len(frame)
    return out


def write_flow_pcap(path, n_flows: int, duration: float = 120.0, seed: int = 1) -> int:
    """Write `flow_traffic` (arrival port dropped) to a pcap; returns the packet count."""
    pk = flow_traffic(n_flows, duration=duration, seed=seed)
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for t, frame, _ in pk:
            w.writepkt(frame, ts=t)
    return len(pk)
