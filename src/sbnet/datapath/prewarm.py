"""Datapath flows installed ahead of traffic: a migrating VM's first packets translated at its destination before it runs there."""

from __future__ import annotations

import numpy as np

from sbnet.datapath import ctmove, odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.dpif.userspace import MAX_RECIRC
from sbnet.datapath.execute import execute
from sbnet.datapath.parse import parse
from sbnet.flows import fields as F

_CT_FIELDS = slice(F.SLOT_INDEX["ct_state"], F.SLOT_INDEX["ct_tp_dst"] + 1)
_RECIRC = F.SLOT_INDEX["recirc_id"]
_AT_CT = 0xFFFFFF02         # pseudo-port: execute() hands back the packet as it reaches ct()


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

    def frame(self, bridge, in_port: int, frame: bytes, now: float) -> list:
        """Translate one frame arriving on `in_port`, pass after pass; the megaflows it
        installed (those already there are followed, not made again)."""
        batch = Batch.from_packets([bytes(frame)], int(in_port))
        parsed = parse(batch)
        one = np.zeros(1, dtype=np.intp)
        made = []
        for _ in range(MAX_RECIRC):
            if parsed.error[0]:
                break
            key = parsed.keys[:, 0]
            found = bridge.dpif.flow_find(key)
            if found >= 0:
                actions = bridge.dpif.cache.flows[found].actions
            else:
                mf = bridge.upcall(key.tolist(), now)
                made.append(mf)
                actions = mf.actions
            at = next((i for i, a in enumerate(actions) if isinstance(a, odp.Ct)), None)
            if at is None or at + 1 >= len(actions) or \
                    not isinstance(actions[at + 1], odp.Recirc):
                break
            ct = actions[at]
            # The frame as it reaches ct() (edits before it done), conntrack's fields kept.
            batch = execute(batch, one, parsed.l3, parsed.l4,
                            actions[:at] + (odp.Output(_AT_CT),))[-1][1]
            again = parse(batch)
            again.keys[_CT_FIELDS] = parsed.keys[_CT_FIELDS]
            self.scratch.execute(batch, again, one, ct.zone, commit=ct.commit, nat=ct.nat,
                                 set_mark=ct.mark, set_label=ct.label, now=now,
                                 force=ct.force)
            again.keys[_RECIRC] = actions[at + 1].recirc_id
            parsed = again
        return made


def translate_ahead(bridge, frames, entries, now: float) -> list:
    """Warmup.frame() of each (in_port, frame) of `frames`: the megaflows installed."""
    warm = Warmup(entries, bridge.conntrack.tcp_liberal, now)
    return [mf for in_port, f in frames for mf in warm.frame(bridge, in_port, f, now)]
