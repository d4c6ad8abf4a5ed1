"""Build a packet from a flow description ("in_port=1,tcp,nw_dst=10.0.0.2,tp_dst=80"), as ofproto/trace does."""

from __future__ import annotations

import struct

import dpkt

from sbnet.datapath.checksum import internet_checksum
from sbnet.flows import fields as F
from sbnet.flows.ofctl import parse_flow


def _mac(v: int) -> bytes:
    return v.to_bytes(6, "big")


def packet_from_flow(text: str) -> tuple[int, bytes]:
    """(in_port, frame) for a flow in ovs-ofctl match syntax; unset fields take plain defaults."""
    match = parse_flow(f"{text} actions=drop").match
    v = {name: value for name, value, mask in match.items}
    in_port = v.get("in_port", 1)
    et = v.get("eth_type", F.ETH_IP)
    src = _mac(v.get("eth_src", 0x020000000001))
    dst = _mac(v.get("eth_dst", 0x020000000002))
    payload = _l3(et, v)
    eth = dpkt.ethernet.Ethernet(src=src, dst=dst, type=et, data=payload)
    frame = bytes(eth)
    tci = v.get("vlan_tci")
    if tci is None and ("dl_vlan" in v or "vlan_vid" in v or "vlan_pcp" in v):
        tci = F.VLAN_CFI | (v.get("dl_vlan", v.get("vlan_vid", 0)) & 0xFFF) | (v.get("vlan_pcp", 0) << 13)
    if tci and tci & F.VLAN_CFI:
        tag = struct.pack("!HH", F.ETH_VLAN, tci & ~F.VLAN_CFI & 0xFFFF)
        frame = frame[:12] + tag + frame[12:]
    return in_port, frame


def _l3(et: int, v: dict) -> bytes:
    if et == F.ETH_IP:
        proto = v.get("ip_proto", 0)
        tos = v.get("nw_tos", (v.get("ip_dscp", 0) << 2) | v.get("ip_ecn", 0))
        ip = dpkt.ip.IP(src=v.get("ip_src", 0x0A000001).to_bytes(4, "big"),
                        dst=v.get("ip_dst", 0x0A000002).to_bytes(4, "big"),
                        p=proto, ttl=v.get("ip_ttl", 64), tos=tos, data=_l4(proto, v, False))
        ip.len = len(ip)
        return bytes(ip)
    if et == F.ETH_IPV6:
        proto = v.get("ip_proto", 59)
        body = _l4(proto, v, True)
        ip6 = dpkt.ip6.IP6(src=v.get("ipv6_src", 1).to_bytes(16, "big"),
                           dst=v.get("ipv6_dst", 2).to_bytes(16, "big"),
                           nxt=proto, hlim=v.get("ip_ttl", 64), plen=len(body), data=b"")
        ip6.fc = v.get("ipv6_label", 0) | (v.get("nw_tos", 0) << 20)
        raw6 = bytes(ip6)[:40] + body
        return _fix_l4_csum6(raw6, proto) if proto in (F.IP_TCP, F.IP_UDP, F.IP_ICMPV6) else raw6
    if et in (F.ETH_ARP, F.ETH_RARP):
        return bytes(dpkt.arp.ARP(op=v.get("arp_op", 1), sha=_mac(v.get("arp_sha", 0x020000000001)),
                                  spa=v.get("arp_spa", 0x0A000001).to_bytes(4, "big"),
                                  tha=_mac(v.get("arp_tha", 0)),
                                  tpa=v.get("arp_tpa", 0x0A000002).to_bytes(4, "big")))
    if et in (F.ETH_MPLS, F.ETH_MPLS_MC):
        lse = (v.get("mpls_label", 0) << 12) | (v.get("mpls_tc", 0) << 9) | 0x100 | v.get("mpls_ttl", 64)
        return struct.pack("!I", lse) + bytes(20)
    return bytes(46)


def _l4(proto: int, v: dict, six: bool) -> bytes:
    if proto == F.IP_TCP:
        return bytes(dpkt.tcp.TCP(sport=v.get("tcp_src", 1234), dport=v.get("tcp_dst", 80),
                                  flags=v.get("tcp_flags", dpkt.tcp.TH_SYN) & 0xFF))
    if proto == F.IP_UDP:
        u = dpkt.udp.UDP(sport=v.get("udp_src", 1234), dport=v.get("udp_dst", 53), data=b"")
        u.ulen = 8
        return bytes(u)
    if proto == F.IP_SCTP:
        return struct.pack("!HHII", v.get("sctp_src", 1234), v.get("sctp_dst", 80), 0, 0)
    if proto == F.IP_ICMP:
        return bytes(dpkt.icmp.ICMP(type=v.get("icmp_type", 8), code=v.get("icmp_code", 0),
                                    data=dpkt.icmp.ICMP.Echo(id=1, seq=1)))
    if proto == F.IP_ICMPV6:
        t = v.get("icmpv6_type", 128)
        body = struct.pack("!BBHI", t, v.get("icmpv6_code", 0), 0, 0)
        if t in (135, 136):
            body += v.get("nd_target", 0).to_bytes(16, "big")
            if t == 135 and "nd_sll" in v:
                body += b"\x01\x01" + _mac(v["nd_sll"])
            if t == 136 and "nd_tll" in v:
                body += b"\x02\x01" + _mac(v["nd_tll"])
        return body
    return b""


def _fix_l4_csum6(raw6: bytes, proto: int) -> bytes:
    """Fill the TCP/UDP/ICMPv6 checksum over the IPv6 pseudo-header."""
    body = bytearray(raw6[40:])
    off = {F.IP_TCP: 16, F.IP_UDP: 6, F.IP_ICMPV6: 2}[proto]
    if len(body) < off + 2:
        return raw6
    if proto == F.IP_UDP:
        body[4:6] = struct.pack("!H", len(body))
    body[off:off + 2] = b"\0\0"
    pseudo = raw6[8:40] + struct.pack("!IxxxB", len(body), proto)
    body[off:off + 2] = struct.pack("!H", internet_checksum(pseudo + bytes(body)) or 0xFFFF)
    return raw6[:40] + bytes(body)
