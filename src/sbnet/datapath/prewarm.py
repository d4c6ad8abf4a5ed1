"""Datapath flows installed ahead of traffic: a migrating VM's first packets translated at its destination before it runs there, and a new connection's established state."""

from __future__ import annotations

import dpkt
import numpy as np

from sbnet.datapath import ctmove, odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.dpif.userspace import MAX_RECIRC
from sbnet.datapath.execute import execute
from sbnet.datapath.parse import Parsed, parse
from sbnet.flows import fields as F

_CT_FIELDS = slice(F.SLOT_INDEX["ct_state"], F.SLOT_INDEX["ct_tp_dst"] + 1)
_RECIRC = F.SLOT_INDEX["recirc_id"]
_AT_CT = 0xFFFFFF02         # pseudo-port: execute() hands back the packet as it reaches ct()
_ECHO_ANSWER = {8: 0, 0: 8, 128: 129, 129: 128}
_CT_STATE = F.SLOT_INDEX["ct_state"]
_TRK, _INV = F.CT_STATE_BITS["trk"], F.CT_STATE_BITS["inv"]
_NEW_TRK, _EST_TRK = F.CT_STATE_BITS["new"] | _TRK, F.CT_STATE_BITS["est"] | _TRK


def established_ahead(bridge, megaflows, now: float) -> int:
    """For each of `megaflows` (new ones) that is a pass after ct() committing a new
    connection, the same key as +est translated now, its megaflow made: the connection's
    next packet this way then finds its flow where the first packet's went (a kernel
    tier forwards an answered connection at once, so a ping's second request would
    otherwise go up behind it).  How many were made."""
    made = 0
    for mf in megaflows:
        key = mf.key
        if not key[_RECIRC] or (key[_CT_STATE] & _NEW_TRK) != _NEW_TRK or not any(
                isinstance(a, odp.Ct) and a.commit for a in mf.actions):
            continue
        est = list(key)
        est[_CT_STATE] = (key[_CT_STATE] & ~(_NEW_TRK | _INV)) | _EST_TRK
        if bridge.dpif.flow_find(est) < 0:
            bridge.upcall(est, now)
            made += 1
    return made


class Warmup:
    """Install the datapath flows of every pass a frame would take through a bridge,
    without sending or tracking anything: each ct() step runs on a scratch connection table
    that holds only `entries` (a handover's connections, as sbnet.datapath.ctmove exports
    them), so the state, marks and NAT the next pass sees are those the real table will
    give the VM's first frames, and the real table is not touched.  Any translation is a
    true one (a megaflow is its key's translation, whatever key it came from), so a guess
    that no real frame takes only costs its translation."""

    def __init__(self, entries: list, tcp_liberal: bool, now: float) -> None:
        self.scratch = Conntrack(tcp_liberal=tcp_liberal, checksums=False,
                                 capacity=max(64, 2 * len(entries)))
        ctmove.import_(self.scratch, entries, now)
        # What the frames' addressees send back, into this switch's own ports or through
        # the tunnel a frame left by (the destination holds the other hosts' copies of the
        # VM's traffic until it arrives, so no copy has set those up), as (in_port, frame,
        # tunnel metadata: {key field: value}).
        self.answers: list[tuple[int, bytes, dict]] = []

    def with_answers(self, frames):
        """(in_port, frame, tunnel metadata) for the (in_port, frame) pairs, then for the
        answers those translated meanwhile call for."""
        for in_port, f in frames:
            yield in_port, f, {}
        answers, self.answers = self.answers, []
        yield from answers

    def frame(self, bridge, in_port: int, frame: bytes, now: float,
              tun: dict | None = None) -> list:
        """Translate one frame arriving on `in_port` (from a tunnel: `tun` gives its
        tun_id, tun_src and tun_dst), and each recirculation it takes (after a ct() or not,
        every one its passes' actions start); the megaflows it installed (those already
        there are followed, not made again)."""
        batch = Batch.from_packets([bytes(frame)], int(in_port))
        first = parse(batch)
        for name, value in (tun or {}).items():
            first.keys[F.SLOT_INDEX[name], 0] = value
        todo = [(batch, first)]
        made = []
        passes = 0
        while todo and passes < 2 * MAX_RECIRC:
            passes += 1
            batch, parsed = todo.pop()
            if parsed.error[0]:
                continue
            key = parsed.keys[:, 0]
            found = bridge.dpif.flow_find(key)
            if found >= 0:
                actions = bridge.dpif.cache.flows[found].actions
            else:
                mf = bridge.upcall(key.tolist(), now)
                made.append(mf)
                actions = mf.actions
            if not any(isinstance(a, (odp.Ct, odp.Recirc)) for a in actions):
                self.answers += _answers(batch, parsed, actions, bridge.underlay)
                continue
            try:
                todo += self._recirculations(batch, parsed, actions, now)
            except (NotImplementedError, TypeError, ValueError):   # a step only a datapath runs
                continue
        return made

    def _recirculations(self, batch: Batch, parsed, actions: tuple, now: float) -> list:
        """The frame as each Recirc of a pass's actions sends it round again: edits done,
        and a ct() just before it run on the scratch table."""
        one = np.zeros(1, dtype=np.intp)
        out, start = [], 0
        for i, a in enumerate(actions):
            if not isinstance(a, (odp.Ct, odp.Recirc)):
                continue
            edits = tuple(x for x in actions[start:i] if not isinstance(x, odp.Output))
            batch = execute(batch, one, parsed.l3, parsed.l4, edits + (odp.Output(_AT_CT),))[-1][1]
            again = parse(batch)
            again.keys[_CT_FIELDS] = parsed.keys[_CT_FIELDS]
            parsed, start = again, i + 1
            if isinstance(a, odp.Ct):
                self.scratch.execute(batch, parsed, one, a.zone, commit=a.commit, nat=a.nat,
                                     set_mark=a.mark, set_label=a.label, now=now,
                                     force=a.force)
                continue
            copy = batch.take(one)
            keys = parsed.keys.copy()
            keys[_RECIRC] = a.recirc_id
            out.append((copy, Parsed(keys, parsed.l2_5, parsed.l3, parsed.l4, parsed.error)))
        return out


def translate_ahead(bridge, frames, entries, now: float) -> list:
    """Warmup.frame() of each (in_port, frame) of `frames` and of the answers they call
    for: the megaflows installed."""
    warm = Warmup(entries, bridge.conntrack.tcp_liberal, now)
    return [mf for in_port, f, tun in warm.with_answers(frames)
            for mf in warm.frame(bridge, in_port, f, now, tun)]


def _answers(batch: Batch, parsed, actions: tuple, underlay) -> list[tuple[int, bytes, dict]]:
    """The answer to each copy the last pass's actions send out of a port (the outside's
    reply through a floating IP arrives on the physical network's port with the MACs,
    addresses and ports of what left there swapped) or into an IPv4 tunnel (the answer
    comes back by it, the same VNI, from the host it went to, to the address this host
    sends from)."""
    one = np.zeros(1, dtype=np.intp)
    out: list[tuple[int, bytes, dict]] = []
    plain = tuple(a for a in actions if not isinstance(a, odp.TunnelPush))
    for i, push in enumerate(actions):
        if not isinstance(push, odp.TunnelPush):
            continue
        tun = dict(push.tun)
        remote = tun.get("tun_dst")
        if not remote or "tun_id" not in tun:
            continue
        local = tun.get("tun_src") or int(underlay.resolve(4, np.zeros(1, np.uint64),
                                                           np.array([remote], np.uint64)).src_lo[0])
        edits = tuple(a for a in actions[:i] if not isinstance(a, (odp.Output, odp.TunnelPush)))
        try:
            left = execute(batch, one, parsed.l3, parsed.l4, edits + (odp.Output(_AT_CT),))
        except (NotImplementedError, TypeError, ValueError):    # an NSH step
            continue
        meta = {"tun_id": tun["tun_id"], "tun_src": remote, "tun_dst": local}
        out += [(push.ofport, a, meta) for _, b in left[-1:]
                for a in map(_swapped, b.packets()) if a]
    try:
        left = execute(batch, one, parsed.l3, parsed.l4, plain)
    except (NotImplementedError, TypeError, ValueError):    # an NSH step
        return out
    return out + [(port, a, {}) for port, b in left for a in map(_swapped, b.packets()) if a]


def _swapped(frame: bytes) -> bytes | None:
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
        return None
    l4 = ip.data
    if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        l4.sport, l4.dport = l4.dport, l4.sport
    elif isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)) and l4.type in _ECHO_ANSWER:
        l4.type = _ECHO_ANSWER[l4.type]
    else:
        return None
    l4.sum = 0
    ip.src, ip.dst = ip.dst, ip.src
    if isinstance(ip, dpkt.ip.IP):      # as it left the answering host
        ip.ttl, ip.sum = 64, 0
    else:
        ip.hlim = 64
    eth.src, eth.dst = eth.dst, eth.src
    return bytes(eth)
