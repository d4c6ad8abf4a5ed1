"""Our outer headers against the tnl_push headers of OVS 3.1's native tunnel ports."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, GRE, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from sbnet.datapath import tunnel as T
from sbnet.datapath.batch import Batch
from sbnet.datapath.underlay import Underlay
from sbnet.ovs.dummy import DummyOVS, require_ovs

# Not the 192.0.2.0/24 of the other tests: OVS's route table also holds this machine's
# own routes, and a more specific one there would win.
LOCAL4, LOCAL6 = "203.0.113.1", "2001:db8:100::1"
BR_MAC, PEER_MAC = "02:00:00:00:0a:01", "02:00:00:00:0b:01"
N_PORTS = 36


class TunnelOVS(DummyOVS):
    """DummyOVS with real tunnel netdevs: plain --enable-dummy keeps the vxlan/gre/geneve
    classes (=override turns them into dummies), which native tunneling needs."""

    def _spawn(self, argv, ready_path, timeout=20.0):
        argv = ["--enable-dummy" if a == "--enable-dummy=override" else a for a in argv]
        return super()._spawn(argv, ready_path, timeout)


def _configs():
    rnd = random.Random(4242)
    out = []
    for i in range(N_PORTS):
        kind = ("vxlan", "geneve", "gre")[i % 3]
        fam = 6 if (i // 3) % 2 else 4
        key = rnd.choice(("flow", rnd.randrange(1, 1 << (32 if kind == "gre" else 24)),
                          None if kind == "gre" else 0))
        remote = f"203.0.113.{10 + i}" if fam == 4 else f"2001:db8:100::{10 + i:x}"
        port = T.TunnelPort(ofport=10 + i, kind=kind, remote_ip=remote, key=key,
                            csum=rnd.choice((None, True, False)),
                            tos=rnd.choice(("inherit", 0, rnd.randrange(64) << 2)),
                            ttl=rnd.choice(("inherit", 64, rnd.randrange(8, 256))),
                            df_default=rnd.random() < 0.6)
        inner = rnd.choice(("udp", "udp", "vlan", "arp"))
        out.append((port, inner, rnd.randrange(64), rnd.randrange(4), rnd.randrange(8, 256),
                    rnd.randrange(1 << 24)))
    return out


CONFIGS = _configs()


def _options(p: T.TunnelPort) -> list[str]:
    opts = [f"options:remote_ip={p.remote_ip}"]
    if p.key is not None:
        opts.append(f"options:key={p.key}")
    if p.csum is not None:
        opts.append(f"options:csum={str(p.csum).lower()}")
    opts += [f"options:tos={p.tos}", f"options:ttl={p.ttl}",
             f"options:df_default={str(p.df_default).lower()}"]
    return opts


@pytest.fixture(scope="module")
def ovs():
    require_ovs()
    with TunnelOVS(1, bridge="br0") as o:
        cmd = ["set", "bridge", "br0", f"other-config:hwaddr={BR_MAC}",
               "--", "add-br", "int-br", "--", "set", "bridge", "int-br",
               "datapath_type=dummy", "fail_mode=secure"]
        for p, *_ in CONFIGS:
            cmd += ["--", "add-port", "int-br", f"t{p.ofport}", "--", "set", "interface",
                    f"t{p.ofport}", f"type={p.kind}", f"ofport_request={p.ofport}", *_options(p)]
        o.vsctl(*cmd)
        o.appctl("netdev-dummy/ip4addr", "br0", f"{LOCAL4}/24")
        o.appctl("netdev-dummy/ip6addr", "br0", f"{LOCAL6}/64")
        o.appctl("ovs/route/add", "203.0.113.0/24", "br0")
        o.appctl("ovs/route/add", "2001:db8:100::/64", "br0")
        for p, *_ in CONFIGS:
            o.appctl("tnl/neigh/set", "br0", p.remote_ip, PEER_MAC)
        o.ofctl("add-flow", "actions=normal")
        yield o


def _underlay() -> Underlay:
    u = Underlay()
    u.add_port(100, BR_MAC, 1500)
    u.add_route("203.0.113.0/24", 100, src=LOCAL4)
    u.add_route("2001:db8:100::/64", 100, src=LOCAL6)
    for p, *_ in CONFIGS:
        u.add_neighbour(p.remote_ip, PEER_MAC)
    return u


def _inner(kind: str, dscp: int, ecn: int, ttl: int) -> tuple[bytes, str]:
    """Our inner frame and the same packet as an ofproto/trace flow."""
    eth = Ether(src="02:11:00:00:00:01", dst="02:22:00:00:00:02")
    flow = "in_port=LOCAL,dl_src=02:11:00:00:00:01,dl_dst=02:22:00:00:00:02"
    if kind == "arp":
        return bytes(eth / ARP(psrc="10.1.0.1", pdst="10.1.0.2", op=1)), \
            "arp," + flow + ",arp_spa=10.1.0.1,arp_tpa=10.1.0.2,arp_op=1"
    ip = IP(src="10.1.0.1", dst="10.2.0.2", tos=dscp << 2 | ecn, ttl=ttl) \
        / UDP(sport=33333, dport=44444) / Raw(b"x" * 20)
    fields = (f",nw_src=10.1.0.1,nw_dst=10.2.0.2,nw_tos={dscp << 2},nw_ecn={ecn},"
              f"nw_ttl={ttl},udp_src=33333,udp_dst=44444")
    if kind == "vlan":
        return bytes(eth / Dot1Q(vlan=5) / ip), "udp," + flow + ",dl_vlan=5" + fields
    return bytes(eth / ip), "udp," + flow + fields


def _ovs_header(actions: str) -> dict:
    m = re.search(r"tnl_push\(tnl_port\(\d+\),header\(size=(\d+),type=\d+,"
                  r"eth\(dst=([^,]+),src=([^,]+),dl_type=(0x[0-9a-f]+)\),(.*)\),out_port", actions)
    assert m, actions
    h = {"size": int(m[1]), "eth_dst": m[2], "eth_src": m[3], "dl_type": int(m[4], 16)}
    rest = m[5]
    if (v4 := re.search(r"ipv4\(src=([^,]+),dst=([^,]+),proto=(\d+),tos=([^,]+),ttl=(\d+),"
                        r"frag=([^)]+)\)", rest)):
        h |= {"src": v4[1], "dst": v4[2], "proto": int(v4[3]), "tos": int(v4[4], 0),
              "ttl": int(v4[5]), "df": int(v4[6], 0) == 0x4000}
    else:
        v6 = re.search(r"ipv6\(src=([^,]+),dst=([^,]+),label=(\d+),proto=(\d+),"
                       r"tclass=([^,]+),hlimit=(\d+)\)", rest)
        h |= {"src": v6[1], "dst": v6[2], "label": int(v6[3]), "proto": int(v6[4]),
              "tos": int(v6[5], 0), "ttl": int(v6[6])}
    if (u := re.search(r"udp\(src=\d+,dst=(\d+),csum=([^)]+)\)", rest)):
        h |= {"udp_dst": int(u[1]), "csum": int(u[2], 0) != 0}
    if (x := re.search(r"vxlan\(flags=([^,]+),vni=([^)]+)\)", rest)):
        h |= {"vxlan_flags": int(x[1], 0), "key": int(x[2], 0)}
    if (g := re.search(r"geneve\((?:crit,)?(?:oam,)?vni=([^,)]+)", rest)):
        h["key"] = int(g[1], 0)
    if (r := re.search(r"gre\(\(flags=([^,]+),proto=([^)]+)\)(?:,csum=[^,)]+)?"
                       r"(?:,key=([^)]+))?\)", rest)):
        h |= {"gre_flags": int(r[1], 0), "gre_proto": int(r[2], 0),
              "key": int(r[3], 0) if r[3] else None, "csum": bool(int(r[1], 0) & T.GRE_CSUM)}
    return h


def _our_header(frame: bytes, inner_len: int) -> dict:
    e = Ether(frame)
    h = {"size": len(frame) - inner_len, "eth_dst": e.dst, "eth_src": e.src, "dl_type": e.type}
    ip = e.payload
    if isinstance(ip, IP):
        h |= {"src": ip.src, "dst": ip.dst, "proto": ip.proto, "tos": ip.tos, "ttl": ip.ttl,
              "df": bool(ip.flags.DF)}
    else:
        h |= {"src": ip.src, "dst": ip.dst, "label": ip.fl, "proto": ip.nh, "tos": ip.tc,
              "ttl": ip.hlim}
    t = ip.payload
    if isinstance(t, UDP):
        h |= {"udp_dst": t.dport, "csum": t.chksum != 0}
        body = bytes(t.payload)
        if t.dport == 4789:
            v = VXLAN(body)
            h |= {"vxlan_flags": int.from_bytes(body[:4], "big"), "key": v.vni}
        else:
            h["key"] = GENEVE(body).vni
    else:
        g = GRE(bytes(t))
        flags = int.from_bytes(bytes(t)[:2], "big")
        h |= {"gre_flags": flags, "gre_proto": g.proto,
              "key": g.key if g.key_present else None, "csum": bool(g.chksum_present)}
    return h


@pytest.mark.ovs
@pytest.mark.parametrize("n", range(N_PORTS))
def test_outer_header_matches_ovs(ovs, n):
    port, inner_kind, dscp, ecn, ttl, flow_key = CONFIGS[n]
    frame, flow = _inner(inner_kind, dscp, ecn, ttl)
    acts = (f"set_field:{flow_key}->tun_id," if port.key == "flow" else "") + \
        f"output:{port.ofport}"
    ovs._run(["ovs-ofctl", "replace-flows", f"unix:{ovs.dir}/int-br.mgmt", "-"],
             stdin=f"in_port=LOCAL,actions={acts}\n")
    trace = ovs.appctl("ofproto/trace", "int-br", flow)
    theirs = _ovs_header(trace)
    r = T.encap(Batch.from_packets([frame], 1), [0], port, {"tun_id": flow_key}, _underlay())
    assert r.counters == {"encap_packets": 1}
    ours = _our_header(r.batch.packet(0), len(frame))
    assert ours == theirs, (port, inner_kind, trace.splitlines()[-1])


def test_configs_cover_every_kind_family_and_option():
    seen = {(p.kind, p.remote[0]) for p, *_ in CONFIGS}
    assert len(seen) == 6
    assert {p.tos == "inherit" for p, *_ in CONFIGS} == {True, False}
    assert {p.ttl == "inherit" for p, *_ in CONFIGS} == {True, False}
    assert {p.key == "flow" for p, *_ in CONFIGS} == {True, False}
    assert {i for _, i, *_ in CONFIGS} == {"udp", "vlan", "arp"}
    assert np.unique([ecn for *_, ecn, _, _ in CONFIGS]).size == 4
