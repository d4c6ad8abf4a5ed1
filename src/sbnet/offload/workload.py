"""A TCP workload for offload measurements: many connections with heavy-tailed sizes, driven through a Cluster."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from sbnet.datapath.checksum import fold

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PAYLOAD = 100                      # bytes of data per segment


def pareto_counts(n: int, seed: int, alpha: float = 1.3, smallest: int = 4,
                  cap: int = 1000) -> np.ndarray:
    """Data segments per connection: Pareto (heavy tail: a few elephants carry most packets)."""
    rng = np.random.default_rng(seed)
    return np.minimum(cap, (smallest * (1 + rng.pareto(alpha, n))).astype(np.int64))


def tcp_frames(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: np.ndarray,
               dport: np.ndarray, seq: np.ndarray, ack: np.ndarray, flags: int,
               payload: int = 0) -> list[bytes]:
    """Ethernet/IPv4/TCP frames, one per row of the arrays, with valid checksums."""
    n = len(sport)
    if not n:
        return []
    ln = 54 + payload
    f = np.zeros((n, ln), dtype=np.uint8)
    f[:, 0:6] = np.frombuffer(bytes.fromhex(dst_mac.replace(":", "")), np.uint8)
    f[:, 6:12] = np.frombuffer(bytes.fromhex(src_mac.replace(":", "")), np.uint8)
    f[:, 12:14] = (0x08, 0x00)
    f[:, 14] = 0x45
    f[:, 16], f[:, 17] = (ln - 14) >> 8, (ln - 14) & 0xFF
    f[:, 22], f[:, 23] = 64, 6
    f[:, 26:30] = np.frombuffer(ipaddress.ip_address(src_ip).packed, np.uint8)
    f[:, 30:34] = np.frombuffer(ipaddress.ip_address(dst_ip).packed, np.uint8)
    for col, vals, k in ((34, sport, 2), (36, dport, 2), (38, seq, 4), (42, ack, 4)):
        v = np.asarray(vals, dtype=np.int64) & ((1 << (8 * k)) - 1)
        for j in range(k):
            f[:, col + j] = (v >> (8 * (k - 1 - j))) & 0xFF
    f[:, 46] = 0x50
    f[:, 47] = flags
    f[:, 48:50] = 0xFF
    if payload:
        f[:, 54:] = 0x61
    w = f.astype(np.uint64)
    if ln % 2:
        w = np.concatenate([w, np.zeros((n, 1), np.uint64)], axis=1)
    words = (w[:, 0::2] << np.uint64(8)) | w[:, 1::2]
    ip = fold(words[:, 7:17].sum(axis=1)) ^ 0xFFFF
    f[:, 24], f[:, 25] = ip >> 8, ip & 0xFF
    pseudo = words[:, 13:17].sum(axis=1) + 6 + (ln - 34)
    tcp = fold(words[:, 17:].sum(axis=1) + pseudo) ^ 0xFFFF
    f[:, 50], f[:, 51] = tcp >> 8, tcp & 0xFF
    return [r.tobytes() for r in f]


@dataclass
class Endpoint:
    """Where one side of the workload sends from: a port id (or a physnet, for the outside
    world) with its MAC and IP, the MAC it sends to, and the IP it addresses."""

    port_id: str | None
    mac: str
    ip: str
    peer_mac: str
    peer_ip: str
    physnet: str | None = None


@dataclass
class PhaseCount:
    sent: int = 0
    delivered: int = 0
    nic: int = 0                       # switch passes on the NIC tier, over all hosts
    software: int = 0
    cpu: float = 0.0                   # CPU seconds of this process in the switches
    upcall_cpu: float = 0.0            # of which in upcalls (the slow path)
    tier_cpu: float = 0.0              # of which in the NIC tier's model


@dataclass
class WorkloadResult:
    connections: int
    phases: dict[str, PhaseCount] = field(default_factory=dict)

    def total(self) -> PhaseCount:
        t = PhaseCount()
        for p in self.phases.values():
            for k in vars(t):
                setattr(t, k, getattr(t, k) + getattr(p, k))
        return t


class TcpWorkload:
    """Connections client -> server:80 in lock-step rounds: handshake, k data segments each
    acknowledged (k heavy-tailed per connection), then FIN both ways.  `now` advances by
    `step` seconds per round, so the NIC tier's insertion rate sees time pass."""

    def __init__(self, cluster, client: Endpoint, server: Endpoint, counts: np.ndarray,
                 seed: int = 7, step: float = 0.001, batch: int = 4096,
                 first_port: int = 1024) -> None:
        self.cluster, self.client, self.server = cluster, client, server
        self.counts = np.asarray(counts, dtype=np.int64)
        n = len(self.counts)
        rng = np.random.default_rng(seed)
        self.sport = first_port + np.arange(n) % (65536 - first_port)
        self.cisn = rng.integers(1, 1 << 31, n)
        self.sisn = rng.integers(1, 1 << 31, n)
        self.step, self.batch = step, batch
        self.now = float(cluster.clock())
        cluster.clock = lambda: self.now       # rounds advance the cluster's time

    def run(self) -> WorkloadResult:
        res = WorkloadResult(len(self.counts))
        c, s, n = self.cisn, self.sisn, np.arange(len(self.counts))
        L = PAYLOAD
        setup = res.phases.setdefault("setup", PhaseCount())
        self._send(setup, True, n, c, 0, SYN)
        self._send(setup, False, n, s, c + 1, SYN | ACK)
        self._send(setup, True, n, c + 1, s + 1, ACK)
        data = res.phases.setdefault("steady", PhaseCount())
        for t in range(1, int(self.counts.max(initial=0)) + 1):
            live = n[self.counts >= t]
            self._send(data, True, live, c[live] + 1 + (t - 1) * L, s[live] + 1, PSH | ACK, L)
            self._send(data, False, live, s[live] + 1, c[live] + 1 + t * L, ACK)
        end = res.phases.setdefault("teardown", PhaseCount())
        fin = c + 1 + self.counts * L
        self._send(end, True, n, fin, s + 1, FIN | ACK)
        self._send(end, False, n, s + 1, fin + 1, FIN | ACK)
        self._send(end, True, n, fin + 1, s + 2, ACK)
        return res

    def _send(self, ph: PhaseCount, forward: bool, idx: np.ndarray, seq, ack, flags: int,
              payload: int = 0) -> None:
        ep = self.client if forward else self.server
        sport = self.sport[idx] if forward else np.full(idx.size, 80)
        dport = np.full(idx.size, 80) if forward else self.sport[idx]
        seq = np.broadcast_to(np.asarray(seq), idx.shape)
        ack = np.broadcast_to(np.asarray(ack), idx.shape)
        frames = tcp_frames(ep.mac, ep.peer_mac, ep.ip, ep.peer_ip, sport, dport, seq, ack,
                            flags, payload)
        hosts = [h.switch for h in self.cluster.hosts.values()]
        for i in range(0, len(frames), self.batch):
            chunk = frames[i:i + self.batch]
            before = [(dict(sw.tier_packets), sw.upcall_seconds, sw.tier_seconds) for sw in hosts]
            t0 = self.cluster.switch_seconds
            if ep.physnet:
                out = self.cluster.send_external(ep.physnet, chunk)
            else:
                out = self.cluster.send(ep.port_id, chunk)
            ph.cpu += self.cluster.switch_seconds - t0
            ph.sent += len(chunk)
            peer = self.server if forward else self.client
            ph.delivered += len(out.external.get(peer.physnet, ())) if peer.physnet else \
                len(out.to(peer.port_id))
            for sw, (tp, up, tc) in zip(hosts, before):
                ph.nic += sw.tier_packets["nic"] - tp.get("nic", 0)
                ph.software += sw.tier_packets["software"] - tp.get("software", 0)
                ph.upcall_cpu += sw.upcall_seconds - up
                ph.tier_cpu += sw.tier_seconds - tc
        self.now += self.step
