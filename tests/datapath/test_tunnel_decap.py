"""Tunnel decap of frames scapy builds: field extraction, port choice, drops per reason, fuzz."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, GRE, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from sbnet.datapath import tunnel as T
from sbnet.datapath.batch import Batch
from sbnet.datapath.checksum import internet_checksum
from tests.datapath.test_tunnel_util import A4, A6, B4, B6, MAC_A, MAC_B, ip4, underlay

INNER = bytes(Ether(src="02:11:00:00:00:01", dst="02:22:00:00:00:02")
              / IP(src="10.1.0.1", dst="10.2.0.2") / UDP(sport=33333, dport=44444)
              / Raw(b"inner payload"))
PORTS = [T.TunnelPort(21, "vxlan", remote_ip=A4, key=100),
         T.TunnelPort(22, "geneve", remote_ip="flow", key="flow"),
         T.TunnelPort(23, "gre", remote_ip=A4, key=100, csum=True),
         T.TunnelPort(24, "vxlan", remote_ip=A6, key="flow")]


def outer(fam: int = 4, src=None, dst=None, **ip):
    e = Ether(src=MAC_A, dst=MAC_B)
    if fam == 4:
        return e / IP(src=src or A4, dst=dst or B4, flags="DF", ttl=40, tos=0xB8, **ip)
    return e / IPv6(src=src or A6, dst=dst or B6, hlim=40, tc=0xB8)


def vxlan(vni=100, fam=4, inner=INNER, **kw):
    return bytes(outer(fam, **kw) / UDP(sport=40000, dport=4789) / VXLAN(vni=vni, flags=0x08)
                 / Raw(inner))


def geneve(vni=7, opts=(), inner=INNER, **kw):
    g = GENEVE(vni=vni, proto=0x6558, options=list(opts))
    return bytes(outer(**kw) / UDP(sport=40001, dport=6081) / g / Raw(inner))


def gre(key=100, csum=True, inner=INNER, **kw):
    g = GRE(key_present=1, key=key, chksum_present=int(csum), proto=0x6558)
    return bytes(outer(**kw) / g / Raw(inner))


def run(frames, ports=PORTS):
    b = Batch.from_packets(frames, 9)
    return T.decap(b, np.arange(len(b)), ports, underlay("b"))


def test_valid_frames_from_scapy():
    opt = GeneveOptions(classid=0x0102, type=0x80, data=b"abcd")
    frames = [vxlan(), geneve(opts=[opt]), gre(), vxlan(vni=5, fam=6), gre(csum=False)]
    r = run(frames)
    assert r.counters == {"decap_packets": 5}
    assert r.batch.packets() == [INNER] * 5
    assert r.in_port.tolist() == [21, 22, 23, 24, 23]
    assert r.tun["tun_id"].tolist() == [100, 7, 100, 5, 100]
    assert r.tun["geneve_opts"][1] == bytes(opt)
    assert r.tun["tun_src"][0] == ip4(A4) and r.tun["tun_dst"][0] == ip4(B4)
    assert r.tun["tun_ttl"].tolist() == [40] * 5
    assert r.tun["tun_tos"].tolist() == [0xB8] * 5
    assert r.tun["tun_tp_dst"].tolist() == [4789, 6081, 0, 4789, 0]
    f = r.tun["tun_flags"].tolist()
    assert f[0] == T.TNL_F_KEY | T.TNL_F_DONT_FRAGMENT | T.TNL_F_CSUM   # scapy fills UDP csums
    assert f[2] == T.TNL_F_KEY | T.TNL_F_CSUM | T.TNL_F_DONT_FRAGMENT
    assert f[3] & T.TNL_F_CSUM        # scapy fills the IPv6 UDP checksum


def _set(frame: bytes, off: int, value: bytes, fix_ip: bool = True) -> bytes:
    b = bytearray(frame)
    b[off:off + len(value)] = value
    if fix_ip and b[12:14] == b"\x08\x00":
        ihl = (b[14] & 0x0F) * 4
        b[24:26] = b"\0\0"
        if ihl >= 20:
            b[24:26] = internet_checksum(bytes(b[14:14 + ihl])).to_bytes(2, "big")
    return bytes(b)


def _udp_len(frame: bytes, delta: int) -> bytes:
    n = int.from_bytes(frame[38:40], "big") + delta
    return _set(frame, 38, n.to_bytes(2, "big"))


BAD_OPT = bytes(GENEVE(vni=7, proto=0x6558, optionlen=2)) + b"\x01\x02\x03\x03" + bytes(4)
MALFORMED = {
    "bad_ip_header": _set(vxlan(), 14, b"\x44"),
    "bad_ip_length": _set(vxlan(), 16, (len(vxlan()) - 14 + 10).to_bytes(2, "big")),
    "bad_ip_checksum": _set(vxlan(), 24, b"\x00\x01", fix_ip=False),
    "ip_fragment": _set(vxlan(), 20, b"\x20\x00"),
    "bad_udp_length": _udp_len(vxlan(), 4),
    "bad_udp_checksum": _set(vxlan(), 60, b"\xff"),
    "truncated_vxlan": bytes(outer() / UDP(dport=4789) / Raw(b"\x08\0\0\0")),
    "bad_vxlan_header": bytes(outer() / UDP(dport=4789) / VXLAN(vni=100, flags=0x0C)
                              / Raw(INNER)),
    "truncated_geneve": bytes(outer() / UDP(dport=6081) / Raw(b"\0\0\x65\x58")),
    "bad_geneve_version": bytes(outer() / UDP(dport=6081) / GENEVE(version=1, proto=0x6558)
                                / Raw(INNER)),
    "bad_geneve_length": bytes(outer() / UDP(dport=6081) / GENEVE(optionlen=63, proto=0x6558)
                               / Raw(INNER[:40])),
    "bad_geneve_protocol": bytes(outer() / UDP(dport=6081) / GENEVE(proto=0x0800)
                                 / Raw(INNER)),
    "bad_geneve_option": bytes(outer() / UDP(dport=6081) / Raw(BAD_OPT + INNER)),
    "truncated_gre": bytes(outer(proto=47) / Raw(b"\x20\x00\x65\x58")),
    "bad_gre_version": bytes(outer() / GRE(version=1, proto=0x6558) / Raw(INNER)),
    "bad_gre_flags": bytes(outer() / GRE(routing_present=1, proto=0x6558) / Raw(INNER)),
    "bad_gre_protocol": bytes(outer() / GRE(key_present=1, key=100, proto=0x0800)
                              / Raw(INNER)),
    "bad_gre_checksum": _set(gre(), 70, b"\x00"),
    "truncated_inner": vxlan(inner=INNER[:10]),
    "unknown_key": vxlan(vni=999),
    "no_tunnel_port": gre(src="192.0.2.99"),
}


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_malformed_counted_per_reason(reason):
    r = run([MALFORMED[reason], vxlan()])
    assert r.counters == {reason: 1, "decap_packets": 1}
    assert r.rows.tolist() == [1]


def test_every_drop_reason_has_a_case():
    assert set(MALFORMED) == set(T.DECAP_DROPS)


def test_all_malformed_in_one_batch():
    frames = [MALFORMED[k] for k in sorted(MALFORMED)] + [vxlan()]
    r = run(frames)
    assert r.counters == {**{k: 1 for k in MALFORMED}, "decap_packets": 1}


def test_not_ours_passes_through():
    frames = [bytes(Ether() / ARP()), vxlan(dst="192.0.2.50"),
              bytes(outer() / UDP(sport=1, dport=53) / Raw(b"x" * 20)), INNER, vxlan(), b"\x01"]
    r = run(frames)
    assert r.counters == {"not_tunnel": 5, "decap_packets": 1}
    assert r.other.tolist() == [0, 1, 2, 3, 5]


def test_ipv6_zero_udp_checksum_accepted():
    f = bytearray(vxlan(vni=5, fam=6))
    f[60:62] = b"\0\0"
    r = run([bytes(f)])
    assert r.counters == {"decap_packets": 1}
    assert not r.tun["tun_flags"][0] & T.TNL_F_CSUM


def test_port_choice_in_ovs_order():
    """Exact key before key=flow, then exact remote before remote=flow."""
    ports = [T.TunnelPort(4, "vxlan", remote_ip="flow", key="flow"),
             T.TunnelPort(3, "vxlan", remote_ip="flow", key=100),
             T.TunnelPort(2, "vxlan", remote_ip=A4, key="flow"),
             T.TunnelPort(1, "vxlan", remote_ip=A4, key=100)]
    other = "192.0.2.77"
    frames = [vxlan(100), vxlan(5), vxlan(100, src=other), vxlan(5, src=other)]
    r = run(frames, ports)
    assert r.in_port.tolist() == [1, 2, 3, 4]
    local = [T.TunnelPort(7, "vxlan", remote_ip="flow", key="flow", local_ip="192.0.2.3")]
    assert run([vxlan()], local).counters == {"no_tunnel_port": 1}


def test_fuzzed_frames_never_raise_and_batch_equals_single():
    rnd = random.Random(99)
    opt = GeneveOptions(classid=1, type=2, data=b"abcdefgh")
    base = [vxlan(), geneve(opts=[opt]), gre(), vxlan(vni=5, fam=6), gre(csum=False),
            geneve(vni=3, fam=4)]
    frames = []
    for i in range(400):
        f = bytearray(rnd.choice(base))
        for _ in range(rnd.randrange(1, 4)):
            f[rnd.randrange(min(len(f), 90))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            f = f[:rnd.randrange(len(f))]
        frames.append(bytes(f))
    whole = run(frames)
    assert sum(whole.counters.values()) == len(frames)
    kept = dict(zip(whole.rows.tolist(), whole.batch.packets()))
    for i, f in enumerate(frames):
        one = run([f])
        if i in kept:
            assert one.batch.packets() == [kept[i]]
            j = whole.rows.tolist().index(i)
            for name, v in one.tun.items():
                w = whole.tun[name][j]
                assert (v[0] == w), (i, name)
        else:
            assert len(one.batch) == 0
