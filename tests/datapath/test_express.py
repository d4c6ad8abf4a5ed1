"""The express lane against the numpy reference on two hosts: stateful group, ct, VXLAN both ways, same packets, counters and connections."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from sbnet.agent.embedded import Cluster
from sbnet.api.local import LocalApi
from sbnet.datapath.batch import Batch
from sbnet.datapath.ports import MemoryPort
from sbnet.datapath.switch import Switch
from sbnet.offload.compare import Cloud, endpoints
from sbnet.offload.workload import ACK, FIN, PSH, SYN, tcp_frames


def _clouds():
    """One API, two clusters synced from it: the express lane's, the numpy reference's."""
    fast = Cloud("software", LocalApi(), Cluster(["h1", "h2"], compiled=True), "normal")
    net = fast.network("vxlan")
    web = fast.group("web")
    c = fast.port(net, "h1")
    s = fast.port(net, "h2", security_groups=[web["id"]])
    fast.sync()
    ref = Cloud("software", fast.api, Cluster(["h1", "h2"], compiled=False), "normal")
    ref.sync()
    return fast, ref, *endpoints(c, s)


def _traffic(seed: int, cli, srv):
    """(sender side, frames) steps: handshakes, data both ways in bursts, some to a closed
    port, out-of-window, bad-checksum and stray segments, a few closes."""
    r = random.Random(seed)
    n = 24
    sport = 2000 + np.arange(n)
    dport = np.array([r.choice([80, 80, 80, 22]) for _ in range(n)])
    z = np.zeros(n, dtype=np.int64)
    steps = [("c", tcp_frames(cli.mac, cli.peer_mac, cli.ip, cli.peer_ip, sport, dport, z + 1, z,
                              SYN)),
             ("s", tcp_frames(srv.mac, srv.peer_mac, srv.ip, srv.peer_ip, dport, sport, z + 1,
                              z + 2, SYN | ACK)),
             ("c", tcp_frames(cli.mac, cli.peer_mac, cli.ip, cli.peer_ip, sport, dport, z + 2,
                              z + 2, ACK))]
    seq_c = z + 2
    for k in range(8):
        pick = np.array(sorted(r.sample(range(n), r.choice([1, 3, n]))))
        ln = r.choice([0, 10, 100])
        frames = tcp_frames(cli.mac, cli.peer_mac, cli.ip, cli.peer_ip, sport[pick], dport[pick],
                            seq_c[pick], z[pick] + 2, PSH | ACK, ln)
        if r.random() < 0.3:        # a segment far outside the window: invalid
            frames = frames + tcp_frames(cli.mac, cli.peer_mac, cli.ip, cli.peer_ip,
                                         sport[:1], dport[:1], seq_c[:1] + (1 << 30),
                                         z[:1] + 2, ACK, 5)
        if r.random() < 0.3:
            # A data segment with a bad TCP checksum: invalid at each of the sender's two ct
            # passes (the lane keeps a row's verdict across them only when it was good).
            bad = bytearray(frames[0])
            bad[50] ^= 0x5A
            frames = frames + [bytes(bad)]
        seq_c[pick] += ln
        steps.append(("c", frames))
        steps.append(("s", tcp_frames(srv.mac, srv.peer_mac, srv.ip, srv.peer_ip, dport[pick],
                                      sport[pick], z[pick] + 2, seq_c[pick], ACK)))
    steps.append(("c", tcp_frames(cli.mac, cli.peer_mac, cli.ip, cli.peer_ip, sport[:4],
                                  dport[:4], seq_c[:4], z[:4] + 2, FIN | ACK)))
    return steps


def _by_connection(frames: list[bytes]) -> dict[bytes, list[bytes]]:
    """Frames per TCP port pair, in order: packets of different connections in one batch
    may leave in either order (as in OVS), those of one connection may not."""
    out: dict[bytes, list[bytes]] = {}
    for f in frames:
        out.setdefault(f[34:38], []).append(f)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_express_lane_equals_numpy_reference_over_vxlan_and_conntrack(seed):
    fast, ref, cli, srv = _clouds()
    for side, frames in _traffic(seed, cli, srv):
        sender = (cli if side == "c" else srv).port_id
        got, want = fast.cluster.send(sender, frames), ref.cluster.send(sender, frames)
        for ep in (cli, srv):
            assert _by_connection(got.to(ep.port_id)) == _by_connection(want.to(ep.port_id))
    for host in ("h1", "h2"):
        a, b = fast.cluster.hosts[host].switch, ref.cluster.hosts[host].switch
        assert sorted(a.dump_megaflows(now=99.0)) == sorted(b.dump_megaflows(now=99.0))
        assert [(s.flow, s.n_packets, s.n_bytes) for s in a.dump_flows(now=99.0)] == \
            [(s.flow, s.n_packets, s.n_bytes) for s in b.dump_flows(now=99.0)]
        assert sorted(a.dump_conntrack()) == sorted(b.dump_conntrack())
        assert a.drop_counts() == b.drop_counts()
    # The steady state went through the lane on both hosts, not the general path.
    for host in ("h1", "h2"):
        assert fast.cluster.hosts[host].switch.dpif.lane_packets > 0


_EXACT = """\
priority=20,udp,nw_src=255.255.255.255,tp_src=1,actions=drop
priority=10,udp,in_port=1,actions=output:2
priority=0,actions=drop
"""


def _udp(src: int, sport: int) -> bytes:
    """A minimal Ethernet/IPv4/UDP frame from 10.x.y.z (src's low 24 bits) to 10.255.0.1."""
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + (0x0A000000 | src).to_bytes(4, "big") \
        + bytes([10, 255, 0, 1])
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip + \
        sport.to_bytes(2, "big") + b"\x12\x34\x00\x08\x00\x00"


def test_the_lane_follows_the_caches_as_they_grow():
    # Every source its own megaflow (the drop rule un-wildcards it), 1,600 of them
    # in rounds that also revisit old ones: the megaflow cache (1,024 rows to begin with)
    # and the signature cache's rows are replaced by bigger ones while the lane runs, so
    # its hits must land in the arrays the caches hold then.
    switches = []
    for compiled in (True, False):
        sw = Switch(clock=lambda: 0.0, compiled=compiled)
        sw.add_port(1, port=MemoryPort(1, "p1"))
        sw.add_port(2, port=MemoryPort(2, "p2"))
        sw.load(_EXACT)
        switches.append(sw)
    r = random.Random(5)
    frames = [_udp(i, 1024 + (i & 3)) for i in range(1600)]
    arrays = []
    for k in range(0, 1600, 100):
        sel = frames[k:k + 100] + r.sample(frames[:k + 100], 60)
        for sw in switches:
            sw.process(Batch.from_packets(sel, 1), now=1.0 + k)
        arrays.append(switches[0].dpif.cache.packets)
        got, want = (sw.ports[2].take_sent() for sw in switches)
        # Packets of different flows may leave a batch in either order (as in OVS).
        assert sorted(got) == sorted(want) and len(got) == len(sel)
    assert arrays[0] is not arrays[-1], "the megaflow cache did not grow"
    fast, ref = switches
    assert sorted(fast.dump_megaflows(now=99.0)) == sorted(ref.dump_megaflows(now=99.0))
    assert [(s.flow, s.n_packets) for s in fast.dump_flows(now=99.0)] == \
        [(s.flow, s.n_packets) for s in ref.dump_flows(now=99.0)]
    # The revisits (60 a round, less those of flows new in the same batch) hit in the lane.
    assert fast.dpif.lane_packets > 700


def test_several_outputs_leave_the_lane_as_the_first_packet_left_the_slow_path():
    # The first batch runs the flow's actions one by one (output, output, ...); later
    # batches hit the lane, which sends each port's copies together, packet by packet in
    # row order (as the kernel datapath runs a packet's actions).  Each port must get the
    # same packets, as many times, either way.
    sw = Switch(clock=lambda: 0.0, compiled=True)
    for p in (1, 2, 3):
        sw.add_port(p, port=MemoryPort(p, f"p{p}", keep=False))
    sw.load("priority=10,udp,in_port=1,actions=output:2,output:2,output:3,output:2\n"
            "priority=0,actions=drop\n")
    frames = [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                    / IP(src=f"10.0.0.{i}", dst="10.0.0.9") / UDP(sport=1234, dport=80)
                    / b"payload") for i in range(1, 5)]

    def per_port(out):
        got = {}
        for port, b in out:
            got.setdefault(port, Counter()).update(b.packets())
        return got

    first = per_port(sw.process(Batch.from_packets(frames, 1), now=1.0))
    lane_before = sw.dpif.lane_packets
    later = per_port(sw.process(Batch.from_packets(frames, 1), now=1.0))
    assert sw.dpif.lane_packets - lane_before == 4 and sw.upcalls == 1
    assert later == first
    assert sum(first[2].values()) == 12 and sum(first[3].values()) == 4


def test_frames_the_lane_rewrites_in_a_batch_that_is_not_c_contiguous_keep_the_rewrite():
    # The lane's compiled code takes its frames C-contiguous; a batch whose rows are a
    # view of another layout is copied in and the lane's writes (here eth_dst and the
    # TTL, with the IPv4 checksum) copied back before its packets leave.
    frames = [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                    / IP(src=f"10.0.0.{i}", dst="10.0.0.9", ttl=9) / UDP(sport=1234, dport=80)
                    / b"payload") for i in range(1, 9)]
    out = []
    for compiled in (True, False):
        sw = Switch(clock=lambda: 0.0, compiled=compiled)
        sw.add_port(1, port=MemoryPort(1, "p1"))
        sw.add_port(2, port=MemoryPort(2, "p2"))
        sw.load("priority=10,udp,in_port=1,actions=mod_dl_dst:02:00:00:00:00:99,dec_ttl,"
                "output:2\npriority=0,actions=drop\n")
        sent = []
        for _ in range(2):          # the first batch goes up; the second is the lane's
            b = Batch.from_packets(frames, 1)
            b.data = np.asfortranarray(b.data)
            assert not b.data.flags.c_contiguous
            sw.process(b, now=1.0)
            sent.append(sw.ports[2].take_sent())
        out.append(sent)
        if compiled:
            assert sw.dpif.lane_packets == len(frames)
    (first, later), (ref_first, ref_later) = out
    assert later == first == ref_later == ref_first
    for p in later:
        e = Ether(p)
        assert e.dst == "02:00:00:00:00:99" and e[IP].ttl == 8
        fresh = e[IP].copy()
        del fresh.chksum                # scapy computes it again from the bytes
        assert IP(bytes(fresh)).chksum == e[IP].chksum


def test_a_burst_kept_by_a_port_or_a_caller_is_not_overwritten_by_the_next():
    # The lane reuses its outer-frame buffers (VXLAN push) and its inner frames' columns
    # (decap) from one burst to the next when nothing holds them any more.  Bursts a port
    # keeps, or a caller keeps from process(), must stay as they left, burst after burst.
    from sbnet.agent.embedded import UNDERLAY_OFPORT
    fast, _, cli, srv = _clouds()
    cl = fast.cluster
    n = 8
    sport, z = 3000 + np.arange(n), np.zeros(n, dtype=np.int64)
    cl.send(cli.port_id, tcp_frames(cli.mac, cli.peer_mac, cli.ip, cli.peer_ip, sport,
                                    z + 80, z + 1, z, SYN))
    cl.send(srv.port_id, tcp_frames(srv.mac, srv.peer_mac, srv.ip, srv.peer_ip, z + 80,
                                    sport, z + 1, z + 2, SYN | ACK))
    h1, h2 = cl.hosts["h1"].switch, cl.hosts["h2"].switch
    vm_port, srv_port = cl.hosts["h1"].ofports[cli.port_id], cl.hosts["h2"].ofports[srv.port_id]
    bursts = [tcp_frames(cli.mac, cli.peer_mac, cli.ip, cli.peer_ip, sport, z + 80,
                         z + 2 + 10 * k, z + 2, PSH | ACK, 10 + k) for k in range(4)]
    for kept in (True, False):
        for sw in (h1, h2):
            for p in sw.ports.values():
                if isinstance(p, MemoryPort):
                    p.take_sent()
                    p.keep = kept
        wire, held, inner = [], [], []
        tx = {(sw, p): sw.ports[p].tx_bytes for sw, p in ((h1, UNDERLAY_OFPORT), (h2, srv_port))}
        for frames in bursts:
            out = h1.process(Batch.from_packets(frames, vm_port), now=5.0)
            held.append(out)
            under = [p for port, b in out if port == UNDERLAY_OFPORT for p in b.packets()]
            wire.append(under)
            inner.append(h2.process(Batch.from_packets(under, UNDERLAY_OFPORT), now=5.0))
        assert h1.dpif.lane_packets and h2.dpif.lane_packets
        for k, frames in enumerate(bursts):
            # Each outer frame carries its burst's inner frame, VXLAN after 50 bytes.
            assert [w[50:] for w in wire[k]] == frames
            assert [p for port, b in held[k] if port == UNDERLAY_OFPORT
                    for p in b.packets()] == wire[k]
            assert [p for port, b in inner[k] if port == srv_port
                    for p in b.packets()] == frames
        # The bytes each port counted are those of the frames it sent.
        assert h1.ports[UNDERLAY_OFPORT].tx_bytes - tx[h1, UNDERLAY_OFPORT] == \
            sum(len(w) for ws in wire for w in ws)
        assert h2.ports[srv_port].tx_bytes - tx[h2, srv_port] == \
            sum(len(f) for fs in bursts for f in fs)
        if kept:
            assert h1.ports[UNDERLAY_OFPORT].take_sent() == [w for ws in wire for w in ws]
            assert h2.ports[srv_port].take_sent() == [f for fs in bursts for f in fs]
