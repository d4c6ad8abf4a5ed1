"""The express lane against the numpy reference on two hosts: stateful group, ct, VXLAN both ways, same packets, counters and connections."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sbnet.agent.embedded import Cluster
from sbnet.api.local import LocalApi
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
