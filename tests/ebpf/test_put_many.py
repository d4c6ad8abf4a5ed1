"""Megaflows of one translation put into the kernel tier together: the same entries, placements and reasons as one put each, and packets take them."""

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath import odp
from sbnet.datapath.dpif.megaflow import Megaflow
from sbnet.flows import fields as F
from tests.ebpf.conftest import require_bpf

S = F.SLOT_INDEX
ACTIONS = (odp.SetFields("eth", (("eth_dst", 0x020000000009),)), odp.Output(2))


def _run(first_id: int, ports, actions=ACTIONS, in_port: int = 1) -> list[Megaflow]:
    """Megaflows of one translation (the very same slots, mask and actions objects), one
    per UDP source port, as the bridge makes them for a batch's misses on one path."""
    fields = {"recirc_id": 0xFFFFFFFF, "in_port": 0xFFFFFFFF, "eth_type": 0xFFFF,
              "nw_frag": 3, "nw_proto": 0xFF, "tp_src": 0xFFFF}
    slots = tuple(sorted(S[k] for k in fields))
    mask = tuple(fields[F.SLOTS[s]] for s in slots)
    out = []
    for i, port in enumerate(ports):
        vals = {"recirc_id": 0, "in_port": in_port, "eth_type": 0x0800, "nw_frag": 0,
                "nw_proto": 17, "tp_src": port}
        value = tuple(vals[F.SLOTS[s]] for s in slots)
        out.append(Megaflow(first_id + i, slots, mask, value, actions, 0, [], "forwarded", (), 0))
    return out


def _frame(sport: int) -> bytes:
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
               / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=53) / bytes(18))


def test_a_translations_megaflows_go_in_together_as_one_put_each():
    require_bpf()
    from sbnet.datapath.ebpf.tier import EbpfTier
    ports = list(range(2000, 2040))
    with EbpfTier(capacity=256, conn_capacity=16, test=True) as one, \
            EbpfTier(capacity=256, conn_capacity=16, test=True) as many:
        for t in (one, many):
            t.add_port(1, 1)
            t.add_port(2, 2)
        want = [one.put(mf) for mf in _run(0, ports)]
        got = many.put_many(_run(0, ports))
        assert got == want and {p.tier for p in got} == {"ebpf"}
        assert len(_entries(many)[0]) == len(ports)
        assert dict(zip(*_entries(one))) == dict(zip(*_entries(many)))
        # A packet of one of them takes its entry (the megaflow id the counters fold into).
        res = many.run(_frame(2017), 1)
        assert res.verdict == "forward" and res.mf_id == 17
        assert [o.ofport for o in res.outputs] == [2]
        assert res.outputs[0].data[:6] == bytes.fromhex("020000000009")
        # A run the kernel cannot take (output to a port it has no device for) stays in
        # software, each with the reason one put gives.
        stay = _run(100, ports[:10], (odp.Output(9),))
        assert many.put_many(stay) == [one.put(mf) for mf in _run(100, ports[:10], (odp.Output(9),))]
        assert {p.tier for p in many.put_many(_run(200, ports[:10], (odp.Output(9),)))} == {"software"}
        assert len(many) == len(ports)


def _entries(tier) -> tuple[list[bytes], list[bytes]]:
    """The flow map's entries as (keys, values), one bytes each."""
    from sbnet.datapath.ebpf import layout as L
    keys, vals = tier.m_flows.items()
    k, v = L.FKEY.size, L.FLOW_SIZE
    return ([keys[i:i + k] for i in range(0, len(keys), k)],
            [vals[i:i + v] for i in range(0, len(vals), v)])
