"""NSH: generated MD type 1 and 2 encaps dissected by tshark and parsed, round trips, edits."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sbnet.datapath import nsh as N
from sbnet.datapath.batch import Batch
from sbnet.datapath.parse import parse
from tests.datapath.test_tunnel_util import assert_clean, dissect, inner_frame, num

N_CASES = 240


def _case(i: int) -> dict:
    rnd = random.Random(9000 + i)
    md = 1 if i % 2 else 2
    c = {"md_type": md, "spi": rnd.randrange(1 << 24), "si": rnd.randrange(256),
         "flags": rnd.randrange(4), "ttl": rnd.randrange(64),
         "eth_src": rnd.getrandbits(48) & ~(1 << 40), "eth_dst": rnd.getrandbits(48) & ~(1 << 40),
         "inner": inner_frame(rnd).frame}
    if md == 1:
        c["context"] = tuple(rnd.getrandbits(32) for _ in range(4))
        c["tlvs"] = []
    else:
        c["tlvs"] = [(rnd.randrange(1 << 16), rnd.randrange(256),
                      bytes(rnd.randrange(256) for _ in range(rnd.randrange(13))))
                     for _ in range(rnd.randrange(0, 4))]
        c["md2"] = b"".join(N.md2_tlv(*t) for t in c["tlvs"])
    return c


CASES = [_case(i) for i in range(N_CASES)]


def _encap_one(c: dict) -> bytes:
    b = Batch.from_packets([c["inner"]], 1)
    kw = {k: c[k] for k in ("spi", "si", "flags", "ttl", "context", "md2") if k in c}
    return N.encap(b, [0], c["md_type"], c["eth_src"], c["eth_dst"], **kw).packet(0)


def _encap_all(cases: list[dict]) -> Batch:
    """One push for all cases of one MD type: fields as per-row arrays."""
    md = cases[0]["md_type"]
    b = Batch.from_packets([c["inner"] for c in cases], 1)
    def col(k):
        return np.array([c[k] for c in cases], np.int64)
    kw = {k: col(k) for k in ("spi", "si", "flags", "ttl")}
    if md == 1:
        kw["context"] = tuple(np.array([c["context"][j] for c in cases], np.int64)
                              for j in range(4))
    else:
        kw["md2"] = [c["md2"] for c in cases]
    return N.encap(b, np.arange(len(cases)), md, col("eth_src"), col("eth_dst"), **kw)


def test_batch_push_equals_one_by_one():
    for md in (1, 2):
        cases = [c for c in CASES if c["md_type"] == md]
        assert _encap_all(cases).packets() == [_encap_one(c) for c in cases]


FIELDS = ["eth.type", "nsh.version", "nsh.ttl", "nsh.length", "nsh.mdtype", "nsh.nextproto",
          "nsh.spi", "nsh.si", "nsh.Obit", "nsh.CBit", "nsh.contextheader",
          "nsh.metadataclass", "nsh.metadatatype", "nsh.metadatalen", "nsh.metadata"]


def test_tshark_dissects_generated_nsh(tmp_path):
    frames = [_encap_one(c) for c in CASES]
    rows = dissect(tmp_path, frames, FIELDS)
    assert_clean(rows)
    for i, (row, c) in enumerate(zip(rows, CASES)):
        assert num(row["eth.type"][0]) == N.ETH_NSH
        assert num(row["nsh.version"][0]) == 0
        assert num(row["nsh.spi"][0]) == c["spi"], i
        assert num(row["nsh.si"][0]) == c["si"], i
        assert num(row["nsh.ttl"][0]) == c["ttl"], i
        assert num(row["nsh.mdtype"][0]) == c["md_type"]
        assert num(row["nsh.nextproto"][0]) == N.NP_ETHERNET
        assert (num(row["nsh.Obit"][0]), num(row["nsh.CBit"][0])) == \
            (c["flags"] >> 1, c["flags"] & 1), i
        if c["md_type"] == 1:
            assert num(row["nsh.length"][0]) == 6
            ctx = [int(x, 16) for x in row["nsh.contextheader"][:4]]
            assert ctx == list(c["context"]), i
        else:
            assert num(row["nsh.length"][0]) == 2 + len(c["md2"]) // 4
            got = list(zip([num(x) for x in row["nsh.metadataclass"]],
                           [num(x) for x in row["nsh.metadatatype"]],
                           [num(x) for x in row["nsh.metadatalen"]]))
            assert got == [(t[0], t[1], len(t[2])) for t in c["tlvs"]], i


def test_parser_reads_pushed_headers():
    for md in (1, 2):
        cases = [c for c in CASES if c["md_type"] == md]
        p = parse(_encap_all(cases))
        assert p.ok.all()
        for name, key in (("nsh_spi", "spi"), ("nsh_si", "si"), ("nsh_ttl", "ttl"),
                          ("nsh_flags", "flags")):
            assert p.field(name).tolist() == [c[key] for c in cases], name
        assert (p.field("nsh_mdtype") == md).all()
        assert (p.field("nsh_np") == N.NP_ETHERNET).all()
        if md == 1:
            for j in range(4):
                assert p.field(f"nsh_c{j + 1}").tolist() == [c["context"][j] for c in cases]


def test_round_trip():
    for md in (1, 2):
        cases = [c for c in CASES if c["md_type"] == md]
        e = _encap_all(cases)
        r = N.decap(e, np.arange(len(e)))
        assert r.counters == {"pop_packets": len(cases)}
        assert r.batch.packets() == [c["inner"] for c in cases]
        assert r.fields["nsh_spi"].tolist() == [c["spi"] for c in cases]
        assert r.fields["nsh_np"].tolist() == [N.NP_ETHERNET] * len(cases)
        if md == 2:
            assert r.fields["md2"] == [c["md2"] for c in cases]
        # The same through pop_eth then pop_nsh, OVS's two decap() actions.
        pe = N.pop_eth(e, np.arange(len(e)))
        assert N.pop_nsh(pe, np.arange(len(pe))).batch.packets() == [c["inner"] for c in cases]


def test_push_nsh_on_an_l3_packet_and_pop():
    ip = CASES[0]["inner"][14:]
    b = Batch.from_packets([ip, ip], 1)
    pushed = N.push_nsh(b, [0, 1], 1, next_proto=N.NP_IPV4, spi=[5, 6])
    r = N.pop_nsh(pushed, [0, 1])
    assert r.batch.packets() == [ip, ip]
    assert r.fields["nsh_np"].tolist() == [N.NP_IPV4] * 2
    assert r.fields["nsh_spi"].tolist() == [5, 6]
    assert r.fields["nsh_ttl"].tolist() == [N.DEFAULT_TTL] * 2
    assert r.fields["nsh_si"].tolist() == [N.DEFAULT_SI] * 2


def test_set_fields_and_dec_ttl(tmp_path):
    cases = [c for c in CASES if c["md_type"] == 1][:40]
    e = _encap_all(cases)
    ttls = np.array([0, 1, 2, 63] * 10)
    ok = N.set_nsh(e, np.arange(40), nsh_ttl=ttls, nsh_spi=0xABCDEF, nsh_si=np.arange(40),
                   nsh_c2=7, nsh_flags=2)
    assert ok.all()
    expired = N.dec_nsh_ttl(e, np.arange(40))
    assert expired.tolist() == [True, True, False, False] * 10
    f = N.fields(e, np.arange(40))
    assert f["nsh_ttl"].tolist() == [0, 1, 1, 62] * 10
    assert (f["nsh_spi"] == 0xABCDEF).all() and f["nsh_si"].tolist() == list(range(40))
    assert (f["nsh_c2"] == 7).all() and (f["nsh_flags"] == 2).all()
    assert f["nsh_c1"].tolist() == [c["context"][0] for c in cases]
    rows = dissect(tmp_path, e.packets(), ["nsh.spi", "nsh.ttl"])
    assert_clean(rows)
    assert [num(r["nsh.ttl"][0]) for r in rows] == [0, 1, 1, 62] * 10
    r = N.decap(e, np.arange(40))
    assert r.batch.packets() == [c["inner"] for c in cases]
    with pytest.raises(ValueError):
        N.set_nsh(e, [0], nsh_mdtype=2)


def _patch(frame: bytes, off: int, value: int) -> bytes:
    b = bytearray(frame)
    b[off] = value
    return bytes(b)


def test_malformed_counted():
    good = _encap_one(CASES[1])           # MD type 1
    md2 = _encap_one(CASES[0])
    frames = [good,
              _patch(good, 14, 0x40 | good[14]),           # version 1
              _patch(good, 15, (good[15] & 0xC0) | 5),      # MD type 1 of 20 bytes
              _patch(good, 16, 3),                          # MD type 3
              good[:30],                                    # cut inside the header
              _patch(good, 13, 0x00),                       # not NSH
              md2]
    r = N.decap(Batch.from_packets(frames, 1), np.arange(len(frames)))
    assert r.counters == {"pop_packets": 2, "bad_nsh": 3, "truncated_nsh": 1, "not_nsh": 1}
    assert r.rows.tolist() == [0, 6]
    e = Batch.from_packets(frames, 1)
    assert N.set_nsh(e, np.arange(len(frames)), nsh_si=1).tolist() == \
        [True, False, False, False, False, False, True]
    assert e.packets()[1:6] == frames[1:6]
