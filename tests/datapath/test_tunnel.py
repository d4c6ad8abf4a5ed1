"""Tunnel ports: generated encapsulations checked by tshark, round trips, drops per reason."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest

from sbnet.datapath import tunnel as T
from sbnet.datapath.batch import Batch
from tests.datapath.test_tunnel_util import (
    A4,
    A6,
    B4,
    B6,
    FAR4,
    FAR6,
    MAC_A,
    MAC_B,
    MAC_GW,
    UPLINK,
    Inner,
    assert_clean,
    dissect,
    inner_frame,
    ip4,
    ip6_parts,
    num,
    underlay,
)

N_CONFIGS = 130          # x 5 frames each = 650 generated encapsulations
PER_CONFIG = 5


@dataclass
class Case:
    port_a: T.TunnelPort          # sending side
    port_b: T.TunnelPort          # receiving side (mirrored addresses)
    family: int
    inners: list[Inner]
    tun: dict
    opts: list[bytes]
    far: bool                     # destination behind the gateway


def _config(rnd: random.Random, i: int) -> Case:
    kind = ("vxlan", "geneve", "gre")[i % 3]
    family = 6 if (i // 3) % 2 else 4
    far = rnd.random() < 0.15
    key = rnd.choice(("flow", "fixed", "fixed", None if kind == "gre" else "fixed"))
    key_val = rnd.randrange(1 << (32 if kind == "gre" else 24))
    csum = rnd.choice((None, True, False))
    tos = rnd.choice(("inherit", 0, rnd.randrange(64) << 2))
    ttl = rnd.choice(("inherit", 64, rnd.randrange(8, 256)))
    df = rnd.random() < 0.7
    flow_remote = rnd.random() < 0.4 or far
    a, b = (A4, B4) if family == 4 else (A6, B6)
    dst = (FAR4 if family == 4 else FAR6) if far else b
    common = {"kind": kind, "csum": csum, "tos": tos, "ttl": ttl, "df_default": df,
              "key": key_val if key == "fixed" else key}
    pa = T.TunnelPort(ofport=5, remote_ip="flow" if flow_remote else dst,
                      local_ip=None if rnd.random() < 0.5 else a, **common)
    pb = T.TunnelPort(ofport=6, remote_ip=a if rnd.random() < 0.6 else "flow", **common)
    inners = [inner_frame(rnd) for _ in range(PER_CONFIG)]
    tun: dict = {"tun_id": np.array([rnd.randrange(1 << 64) for _ in inners], np.uint64)}
    if family == 4:
        tun["tun_dst"] = ip4(dst)
    else:
        tun["tun_ipv6_dst_hi"], tun["tun_ipv6_dst_lo"] = ip6_parts(dst)
    opts = [b""] * PER_CONFIG
    if kind == "geneve" and rnd.random() < 0.6:
        opts = [b"".join(T.geneve_option(rnd.randrange(1 << 16), rnd.randrange(256),
                                         bytes(rnd.randrange(256)
                                               for _ in range(4 * rnd.randrange(0, 6))))
                         for _ in range(rnd.randrange(1, 4)))
                for _ in inners]
        tun["geneve_opts"] = opts
    return Case(pa, pb, family, inners, tun, opts, far)


CASES = [_config(random.Random(7000 + i), i) for i in range(N_CONFIGS)]


def _encap(case: Case):
    b = Batch.from_packets([x.frame for x in case.inners], 1)
    return T.encap(b, np.arange(len(b)), case.port_a, case.tun, underlay("a"))


def _expected_key(case: Case) -> np.ndarray:
    p = case.port_a
    bits = np.uint64((1 << p.key_bits) - 1)
    if p.key == "flow":
        return case.tun["tun_id"] & bits
    return np.full(PER_CONFIG, p.fixed_key, np.uint64)


def test_generated_encaps_round_trip():
    """Every generated case: sent, and the far side's decap gives back the same inner
    frame and tunnel metadata."""
    ub = underlay("b")
    for i, case in enumerate(CASES):
        r = _encap(case)
        assert r.counters == {"encap_packets": PER_CONFIG}, (i, r.counters)
        assert (r.out_port == UPLINK).all()
        if case.far:
            continue   # addressed past the gateway: not to host B
        d = T.decap(r.batch, np.arange(len(r.batch)), [case.port_b], ub)
        assert d.counters == {"decap_packets": PER_CONFIG}, (i, d.counters)
        assert d.batch.packets() == [x.frame for x in case.inners], i
        assert (d.in_port == 6).all()
        assert (d.tun["tun_id"] == _expected_key(case)).all(), i
        assert d.tun["geneve_opts"] == case.opts
        if case.family == 4:
            assert (d.tun["tun_src"] == ip4(A4)).all() and (d.tun["tun_dst"] == ip4(B4)).all()
        else:
            assert (d.tun["tun_ipv6_src_lo"] == ip6_parts(A6)[1]).all()
            assert (d.tun["tun_ipv6_dst_hi"] == ip6_parts(B6)[0]).all()
        assert ((d.tun["tun_flags"] & T.TNL_F_DONT_FRAGMENT) != 0).tolist() == \
            [case.family == 4 and case.port_a.df_default] * PER_CONFIG


FIELDS = ["eth.src", "eth.dst", "ip.src", "ip.dst", "ip.ttl", "ip.dsfield.dscp",
          "ip.dsfield.ecn", "ip.flags.df", "ip.checksum.status", "ipv6.src", "ipv6.dst",
          "ipv6.hlim", "ipv6.tclass.dscp", "ipv6.tclass.ecn", "udp.srcport", "udp.dstport",
          "udp.checksum.status", "vxlan.vni", "geneve.vni", "geneve.option.class",
          "gre.key", "gre.checksum.status", "gre.flags.checksum", "gre.proto"]


def test_tshark_dissects_every_encap_cleanly(tmp_path):
    """All generated frames in one pcap: no malformed packet or checksum warning anywhere
    (outer or inner), and the outer fields are the ones we meant."""
    frames, cases = [], []
    for case in CASES:
        r = _encap(case)
        for j, p in enumerate(r.batch.packets()):
            frames.append(p)
            cases.append((case, j))
    rows = dissect(tmp_path, frames, FIELDS)
    assert_clean(rows)
    assert len(frames) >= 500
    for n, (row, (case, j)) in enumerate(zip(rows, cases)):
        _check_outer(n, row, case, j)


def _check_outer(n: int, row: dict, case: Case, j: int) -> None:
    p, inner = case.port_a, case.inners[j]
    where = (n, p, inner.what)
    assert row["eth.src"][0] == MAC_A and row["eth.dst"][0] == (MAC_GW if case.far else MAC_B)
    v4 = case.family == 4
    pre = "ip" if v4 else "ipv6"
    src, dst = (A4, B4) if v4 else (A6, B6)
    if case.far:
        dst = FAR4 if v4 else FAR6
    assert row[f"{pre}.src"][0] == src and row[f"{pre}.dst"][0] == dst, where
    ttl = inner.ttl if (p.ttl == "inherit" and inner.ip) else \
        (64 if p.ttl == "inherit" else p.ttl)
    assert num(row["ip.ttl" if v4 else "ipv6.hlim"][0]) == ttl, where
    dscp = (inner.tos >> 2 if inner.ip else 0) if p.tos == "inherit" else p.tos >> 2
    ecn = 0 if not inner.ip else (2 if inner.tos & 3 == 3 else inner.tos & 3)
    field = "ip.dsfield" if v4 else "ipv6.tclass"
    assert num(row[f"{field}.dscp"][0]) == dscp, where
    assert num(row[f"{field}.ecn"][0]) == ecn, where
    if v4:
        assert num(row["ip.flags.df"][0]) == int(p.df_default), where
        assert row["ip.checksum.status"][0] == "1", where     # 1: good
    key = int(_expected_key(case)[j])
    csum = p.checksum(case.family)
    if p.kind == "gre":
        assert num(row["gre.proto"][0]) == T.ETH_TEB
        assert num(row["gre.flags.checksum"][0]) == int(csum), where
        if csum:
            assert row["gre.checksum.status"][0] == "1", where
        if p.key is None:
            assert row["gre.key"] == [], where
        else:
            assert num(row["gre.key"][0]) == key, where
        return
    assert num(row["udp.dstport"][0]) == p.dst_port
    assert T.UDP_SRC_MIN <= num(row["udp.srcport"][0]) < T.UDP_SRC_MAX
    assert csum or v4                 # UDP over IPv6 always has a checksum
    # 1: good, 3: not present (a zero checksum)
    assert row["udp.checksum.status"][0] == ("1" if csum else "3"), where
    vni = row["vxlan.vni" if p.kind == "vxlan" else "geneve.vni"]
    assert num(vni[0]) == key, where
    if p.kind == "geneve":
        opts = case.opts[j]
        classes = []
        while opts:
            classes.append(int.from_bytes(opts[:2], "big"))
            opts = opts[4 + 4 * (opts[3] & 0x1F):]
        assert [num(c) for c in row["geneve.option.class"]] == classes, where


def test_batch_equals_one_by_one():
    """Encapsulating a mixed batch gives the frames that one-packet batches give."""
    rnd = random.Random(11)
    for case in CASES[:24]:
        inners = [inner_frame(rnd) for _ in range(6)]
        tun = {k: v for k, v in case.tun.items() if k not in ("tun_id", "geneve_opts")}
        tun["tun_id"] = np.arange(6, dtype=np.uint64) * 1000
        if case.port_a.kind == "geneve":
            tun["geneve_opts"] = [T.geneve_option(1, 2, b"x" * (4 * k)) for k in range(6)]
        b = Batch.from_packets([x.frame for x in inners], 1)
        whole = T.encap(b, np.arange(6), case.port_a, tun, underlay("a")).batch.packets()
        for k in range(6):
            t1 = {n: (v[k:k + 1] if isinstance(v, (np.ndarray, list)) else v)
                  for n, v in tun.items()}
            one = T.encap(Batch.from_packets([inners[k].frame], 1), [0], case.port_a, t1,
                          underlay("a"))
            assert one.batch.packets() == [whole[k]]


def test_source_port_follows_the_inner_flow():
    rnd = random.Random(5)
    frame = inner_frame(rnd).frame
    port = T.TunnelPort(1, "vxlan", remote_ip=B4, key=1)
    b = Batch.from_packets([frame] * 3 + [inner_frame(rnd).frame for _ in range(40)], 1)
    r = T.encap(b, np.arange(len(b)), port, None, underlay("a"))
    sports = [int.from_bytes(p[34:36], "big") for p in r.batch.packets()]
    assert sports[0] == sports[1] == sports[2]
    assert len(set(sports[3:])) > 20


def test_encap_drops_counted():
    ua = underlay("a", mtu=1400)
    rnd = random.Random(3)
    small = inner_frame(rnd, 100).frame
    big = bytes(1400)
    port = T.TunnelPort(1, "geneve", remote_ip="flow", key="flow")
    b = Batch.from_packets([small, small, big, small, small], 1)
    tun = {"tun_dst": np.array([ip4(B4), 0, ip4(B4), ip4("203.0.113.9"), ip4("192.0.2.77")],
                               np.uint32), "tun_id": 5}
    r = T.encap(b, np.arange(5), port, tun, ua)
    assert r.counters == {"encap_packets": 2, "no_tunnel_dst": 1, "mtu_exceeded": 1,
                          "no_neighbour": 1}
    assert r.rows.tolist() == [0, 3]
    u = underlay("a")
    u.routes = [rt for rt in u.routes if rt.plen != 0]
    u._tables = None
    r = T.encap(b, np.arange(5), port, tun, u)
    assert r.counters["no_route"] == 1
    # Exactly the MTU passes: 20 + 8 + 8 + inner == 1400.
    r = T.encap(Batch.from_packets([bytes(1364), bytes(1365)], 1), [0, 1],
                T.TunnelPort(1, "vxlan", remote_ip=B4, key=1), None, ua)
    assert r.counters == {"encap_packets": 1, "mtu_exceeded": 1}


def test_port_config_checked():
    with pytest.raises(ValueError):
        T.TunnelPort(1, "stt", remote_ip=B4)
    with pytest.raises(ValueError):
        T.TunnelPort(1, "vxlan", remote_ip=B4, key=1 << 24)
    with pytest.raises(ValueError):
        T.TunnelPort(1, "gre", remote_ip=B4, dst_port=4789)
    with pytest.raises(ValueError):
        T.TunnelPort(1, "vxlan", remote_ip=B4, tos=3)
    with pytest.raises(ValueError):
        T.TunnelPort(1, "vxlan", remote_ip=B4, local_ip=A6)
    assert T.TunnelPort(1, "vxlan", remote_ip=B4).dst_port == 4789
    assert T.TunnelPort(1, "geneve", remote_ip=B6, csum=False).checksum(6)
    assert not T.TunnelPort(1, "geneve", remote_ip=B4).checksum(4)
    assert not T.TunnelPort(1, "gre", remote_ip=B6).checksum(6)


def test_source_address_choice_as_ovs():
    """local_ip fixed wins; local_ip=flow takes tun_src where set; else the route's source."""
    frame = inner_frame(random.Random(1)).frame
    b = Batch.from_packets([frame, frame], 1)
    tun = {"tun_src": np.array([ip4("192.0.2.9"), 0], np.uint32)}

    def sources(local_ip):
        port = T.TunnelPort(1, "vxlan", remote_ip=B4, key=1, local_ip=local_ip)
        r = T.encap(b, [0, 1], port, tun, underlay("a"))
        return [".".join(str(x) for x in p[26:30]) for p in r.batch.packets()]

    assert sources("flow") == ["192.0.2.9", A4]
    assert sources(None) == [A4, A4]
    assert sources("192.0.2.5") == ["192.0.2.5", "192.0.2.5"]
