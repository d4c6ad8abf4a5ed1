"""Random OpenFlow table sets and matching packets for differential tests against OVS."""

from __future__ import annotations

import random
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import raw

PORTS = (1, 2, 3, 4)
MACS = ("00:00:00:00:00:01", "00:00:00:00:00:02", "02:00:00:00:00:03", "ff:ff:ff:ff:ff:ff")
IPS = ("10.0.0.1", "10.0.0.2", "10.0.1.5", "192.168.1.1")
IP6S = ("2001:db8::1", "2001:db8::2", "fe80::1")
TPORTS = (22, 80, 443, 8080)
VLANS = (10, 20)


@dataclass
class TableSet:
    flows: list[str]
    groups: list[str]
    has_select: bool

    def text(self) -> str:
        return "\n".join(self.groups + self.flows)


def _match(r: random.Random, table: int) -> str:
    parts = []
    if r.random() < 0.5:
        parts.append(f"in_port={r.choice(PORTS)}")
    proto = r.choice(["", "ip", "tcp", "udp", "icmp", "arp", "ipv6", "tcp6", "vlan"])
    if proto == "vlan":
        parts.append(r.choice([f"dl_vlan={r.choice(VLANS)}", "vlan_tci=0x1000/0x1000"]))
    elif proto:
        parts.append(proto)
    if r.random() < 0.3:
        mac = r.choice(MACS)
        parts.append(r.choice([f"dl_dst={mac}", f"dl_src={mac}", "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00"]))
    if proto in ("ip", "tcp", "udp", "icmp"):
        if r.random() < 0.6:
            ip = r.choice(IPS)
            parts.append(f"{r.choice(['nw_src', 'nw_dst'])}={ip}/{r.choice([8, 16, 24, 32])}")
        if r.random() < 0.2:
            parts.append(f"ip_dscp={r.choice([0, 10, 46])}")
    if proto in ("tcp", "udp", "tcp6"):
        if r.random() < 0.7:
            p = r.choice(TPORTS)
            parts.append(r.choice([f"tp_dst={p}", f"tp_src={p}", f"tp_dst=0x{p & 0xff00:x}/0xff00"]))
    if proto == "icmp" and r.random() < 0.5:
        parts.append(f"icmp_type={r.choice([0, 8])}")
    if proto == "arp" and r.random() < 0.6:
        parts.append(r.choice([f"arp_op={r.choice([1, 2])}", f"arp_tpa={r.choice(IPS)}"]))
    if proto in ("ipv6", "tcp6") and r.random() < 0.5:
        parts.append(f"ipv6_dst={r.choice(IP6S)}/{r.choice([64, 128])}")
    if table > 0 and r.random() < 0.4:
        parts.append(f"reg0={r.choice([0, 1, 2])}")
    return proto, ",".join(parts)


def _actions(r: random.Random, table: int, n_tables: int, proto: str, vlan: bool,
             groups: list[int]) -> str:
    acts = []
    for _ in range(r.randint(0, 3)):
        kind = r.random()
        if kind < 0.15:
            acts.append(f"set_field:{r.choice(MACS[:3])}->{r.choice(['eth_src', 'eth_dst'])}")
        elif kind < 0.25 and proto in ("ip", "tcp", "udp", "icmp"):
            acts.append(r.choice([f"set_field:{r.choice(IPS)}->ip_dst", "dec_ttl",
                                  f"mod_nw_src:{r.choice(IPS)}", "set_field:10->ip_dscp"]))
        elif kind < 0.32 and proto in ("tcp", "udp"):
            acts.append(f"set_field:{r.choice(TPORTS)}->{proto}_dst")
        elif kind < 0.42:
            acts.append(f"load:{r.choice([1, 2])}->NXM_NX_REG0[]")
        elif kind < 0.52 and not vlan:
            acts.append(f"push_vlan:0x8100,mod_vlan_vid:{r.choice(VLANS)}")
            vlan = True
        elif kind < 0.6 and vlan:
            acts.append(r.choice(["pop_vlan", f"mod_vlan_vid:{r.choice(VLANS)}", "mod_vlan_pcp:3"]))
            if acts[-1] == "pop_vlan":
                vlan = False
        elif kind < 0.75:
            acts.append(f"output:{r.choice(PORTS)}")
        elif kind < 0.8:
            acts.append(r.choice(["in_port", "all", "flood", "LOCAL"]))
        elif kind < 0.9 and table + 1 < n_tables:
            acts.append(f"resubmit(,{r.randint(table + 1, n_tables - 1)})")
        elif groups:
            acts.append(f"group:{r.choice(groups)}")
    if table + 1 < n_tables and r.random() < 0.3:
        acts.append(f"goto_table:{r.randint(table + 1, n_tables - 1)}")
    return ",".join(acts) or "drop"


def _groups(r: random.Random) -> tuple[list[str], list[int], bool]:
    lines, ids, has_select = [], [], False
    for gid in range(1, r.randint(0, 3) + 1):
        gtype = r.choice(["all", "select", "indirect", "ff"])
        nb = 1 if gtype == "indirect" else r.randint(1, 3)
        buckets = []
        for _ in range(nb):
            acts = []
            if r.random() < 0.4:
                acts.append(f"set_field:{r.choice(MACS[:3])}->eth_dst")
            acts.append(f"output:{r.choice(PORTS)}")
            prefix = f"watch_port:{r.choice(PORTS)}," if gtype == "ff" else ""
            buckets.append(f"bucket={prefix}actions={','.join(acts)}")
        head = f"group_id={gid},type={gtype}"
        if gtype == "select":
            head += ",selection_method=hash,fields(eth_src,eth_dst)"
            has_select = True
        lines.append(",".join([head] + buckets))
        ids.append(gid)
    return lines, ids, has_select


def table_set(seed: int) -> TableSet:
    """A random table set: several tables, overlapping masked rules, conjunctions, groups."""
    r = random.Random(seed)
    n_tables = r.randint(1, 4)
    groups, gids, has_select = _groups(r)
    flows = []
    for t in range(n_tables):
        for _ in range(r.randint(3, 12)):
            proto, m = _match(r, t)
            vlan = "vlan" in m
            pri = r.choice([1, 10, 100, 1000, r.randint(1, 65535)])
            acts = _actions(r, t, n_tables, proto, vlan, gids)
            flows.append(f"table={t},priority={pri}" + (f",{m}" if m else "") + f" actions={acts}")
        if r.random() < 0.4:
            cid = r.randint(1, 100)
            pri = r.choice([50, 500])
            for ip in r.sample(IPS, 2):
                flows.append(f"table={t},priority={pri},ip,nw_src={ip} actions=conjunction({cid},1/2)")
            for p in r.sample(TPORTS, 2):
                flows.append(f"table={t},priority={pri},tcp,tp_dst={p} actions=conjunction({cid},2/2)")
            flows.append(f"table={t},priority={pri},conj_id={cid},ip actions=output:{r.choice(PORTS)}")
    return TableSet(flows, groups, has_select)


def packet(r: random.Random) -> tuple[int, bytes]:
    """A packet built from the same value pools as the tables, so rules really hit."""
    eth = Ether(src=r.choice(MACS[:3]), dst=r.choice(MACS))
    kind = r.choice(["tcp", "udp", "icmp", "arp", "tcp6", "udp6", "ip"])
    if kind == "arp":
        l3 = ARP(op=r.choice([1, 2]), psrc=r.choice(IPS), pdst=r.choice(IPS), hwsrc=eth.src)
    elif kind in ("tcp6", "udp6"):
        l3 = IPv6(src=r.choice(IP6S), dst=r.choice(IP6S), hlim=r.choice([1, 64]))
        l3 = l3 / (TCP(sport=r.choice(TPORTS), dport=r.choice(TPORTS)) if kind == "tcp6"
                   else UDP(sport=r.choice(TPORTS), dport=r.choice(TPORTS)))
    else:
        l3 = IP(src=r.choice(IPS), dst=r.choice(IPS), ttl=r.choice([1, 2, 64]),
                tos=r.choice([0, 40, 184]))
        if kind == "tcp":
            l3 = l3 / TCP(sport=r.choice(TPORTS), dport=r.choice(TPORTS))
        elif kind == "udp":
            l3 = l3 / UDP(sport=r.choice(TPORTS), dport=r.choice(TPORTS))
        elif kind == "icmp":
            l3 = l3 / ICMP(type=r.choice([0, 8]))
    pkt = eth / l3
    if r.random() < 0.3:
        pkt = Ether(src=eth.src, dst=eth.dst) / Dot1Q(vlan=r.choice(VLANS + (30,))) / l3
    return r.choice(PORTS), raw(pkt)


def mpls_table_set(seed: int) -> TableSet:
    """Tables exercising MPLS push/pop/set on IP and labelled packets (no lookups after a
    pop of the last label, where OVS would recirculate to reparse)."""
    r = random.Random(seed)
    labels = (16, 17, 100)
    flows = []
    for _ in range(r.randint(4, 8)):
        port = r.choice(PORTS)
        kind = r.random()
        pri = r.randint(1, 1000)
        if kind < 0.2:
            flows.append(f"priority={pri},mpls,mpls_label={r.choice(labels)} actions="
                         f"set_mpls_label({r.choice(labels)}),dec_mpls_ttl,output:{port}")
        elif kind < 0.35:
            flows.append(f"priority={pri},mpls,mpls_bos=1 actions=pop_mpls:0x0800,output:{port}")
        elif kind < 0.5:
            flows.append(f"priority={pri},mpls,mpls_bos=0 actions=pop_mpls:0x8847,"
                         f"set_mpls_ttl({r.randint(1, 9)}),output:{port}")
        elif kind < 0.65:
            flows.append(f"priority={pri},{r.choice(['ip', 'tcp', 'udp'])} actions=push_mpls:0x8847,"
                         f"set_mpls_label({r.choice(labels)}),output:{port}")
        elif kind < 0.75:
            flows.append(f"priority={pri},ip actions=push_mpls:0x8847,push_mpls:0x8847,"
                         f"set_mpls_tc(3),output:{port}")
        elif kind < 0.85:
            flows.append(f"priority={pri},mpls actions=push_mpls:0x8847,"
                         f"set_mpls_label({r.choice(labels)}),output:{port}")
        else:
            flows.append(f"priority={pri},in_port={r.choice(PORTS)},mpls actions=output:{port}")
    return TableSet(flows, [], False)


def mpls_packet(r: random.Random) -> tuple[int, bytes]:
    from scapy.contrib.mpls import MPLS
    eth = Ether(src=r.choice(MACS[:3]), dst=r.choice(MACS[:3]))
    l3 = IP(src=r.choice(IPS), dst=r.choice(IPS), ttl=r.choice([1, 2, 64]),
            tos=r.choice([0, 40, 184])) / UDP(sport=r.choice(TPORTS), dport=r.choice(TPORTS))
    if r.random() < 0.3:
        return r.choice(PORTS), raw(eth / l3)
    depth = r.randint(1, 3)
    stack = None
    for i in range(depth):
        lse = MPLS(label=r.choice((16, 17, 100, 5)), cos=r.randint(0, 7), ttl=r.choice([1, 2, 64]),
                   s=1 if i == depth - 1 else 0)
        stack = lse if stack is None else stack / lse
    eth.type = 0x8847
    return r.choice(PORTS), raw(eth / stack / l3)


def nsh_table_set(seed: int) -> TableSet:
    """Tables that classify into NSH (encap), forward NSH by SPI/SI (set, dec_nsh_ttl) and
    terminate it (decap twice, then the inner frame continues after recirculation)."""
    r = random.Random(seed)
    flows = []
    for _ in range(r.randint(3, 7)):
        port = r.choice(PORTS)
        pri = r.randint(1, 1000)
        kind = r.random()
        if kind < 0.35:
            md = r.choice([1, 2])
            sets = f"set_field:{r.choice([0x10, 0x20])}->nsh_spi,set_field:{r.choice([255, 254])}->nsh_si"
            if md == 1 and r.random() < 0.5:
                sets += f",set_field:{r.randint(0, 99)}->nsh_c1"
            eth = f",set_field:{r.choice(MACS[:3])}->eth_dst" if r.random() < 0.6 else ""
            flows.append(f"priority={pri},{r.choice(['ip', 'tcp', 'udp', 'arp'])} actions="
                         f"encap(nsh(md_type={md})),{sets},encap(ethernet){eth},output:{port}")
        elif kind < 0.7:
            m = f",nsh_spi={r.choice([0x10, 0x20])}" if r.random() < 0.7 else ""
            acts = r.choice([f"set_field:{r.choice([200, 254])}->nsh_si,dec_nsh_ttl",
                             "dec_nsh_ttl", f"set_field:{r.randint(1, 9)}->nsh_c2"])
            flows.append(f"priority={pri},eth_type=0x894f{m} actions={acts},output:{port}")
        else:
            flows.append(f"priority={pri},eth_type=0x894f actions=decap(),decap(),output:{port}")
    return TableSet(flows, [], False)


def nsh_packet(r: random.Random) -> tuple[int, bytes]:
    from scapy.contrib.nsh import NSH
    inner = Ether(src=r.choice(MACS[:3]), dst=r.choice(MACS[:3])) / IP(
        src=r.choice(IPS), dst=r.choice(IPS)) / r.choice([TCP(dport=80), UDP(dport=53)])
    if r.random() < 0.4:
        return r.choice(PORTS), raw(inner)
    outer = Ether(src=r.choice(MACS[:3]), dst=r.choice(MACS[:3]), type=0x894F)
    hdr = NSH(mdtype=1, nextproto=3, spi=r.choice([0x10, 0x20, 0x30]), si=r.choice([255, 254, 1]),
              ttl=r.choice([63, 1, 2]))
    return r.choice(PORTS), raw(outer / hdr / inner)
