"""The dpif provider interface: what a bridge asks of the datapath below it, and what it is asked back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.datapath.dpif.megaflow import Megaflow


@dataclass(frozen=True)
class FlowCounts:
    """Packets, bytes and last use of one datapath flow (or summed over several)."""

    packets: int
    bytes: int
    used: float


@dataclass
class DpifStats:
    """What `ovs-appctl dpctl/show` would say: flows, masks, lookups that hit, upcalls."""

    flows: int
    masks: int
    hits: int
    upcalls: int
    tier_packets: dict[str, int] = field(default_factory=dict)


class Upcall(Protocol):
    """The bridge's miss handler: translate `key` over the OpenFlow tables, install the
    datapath flow through `Dpif.flow_put`, and return it (the first packet is then
    executed with its actions, never lost)."""

    def __call__(self, key: list[int], now: float) -> Megaflow: ...


class SamePath(Protocol):
    """Beside Upcall, optional: right after an upcall, the datapath flows of the other
    misses of its batch that take the path its translation took through the tables, put
    through `Dpif.flow_put_many`: what their own upcalls would install, for one
    translation.  keys: the batch's misses, slot-major (one column each); owner: the flow
    id each has already (-1: none yet); index: the batch's hash indexes, kept by the
    caller between calls.  Returns the columns given a flow and the flow id of each."""

    def __call__(self, keys: np.ndarray, owner: np.ndarray, index: dict,
                 now: float) -> tuple[np.ndarray, np.ndarray]: ...


class OffloadTier(Protocol):
    """A tier in front of the software tiers that may carry a datapath flow's packets
    (the NIC model of sbnet.offload, the kernel eBPF tier).  It counts the packets it
    carries; the dpif folds those counts into its flows, so statistics are exact."""

    carries: bool     # False: it never takes a packet, so the dpif need not ask per packet

    def attach(self, conntrack, dpif: Dpif) -> None:
        """Bind to the dpif's conntrack and flows (read through their public methods)."""

    def offer(self, mf: Megaflow, now: float):
        """A new datapath flow: place it (the placement says where, and why not)."""

    def placement(self, mf_id: int):
        """Where a flow was placed, with the reason it is not in this tier."""

    def held(self, mf_ids: np.ndarray, keys: np.ndarray, rows: np.ndarray,
             tcp_flags: np.ndarray, now: float) -> np.ndarray | None:
        """Per packet of a ct flow: its connection is held by this tier."""

    def record(self, mf_ids: np.ndarray, lengths: np.ndarray, now: float,
               held: np.ndarray | None) -> np.ndarray:
        """Which packets this tier carried (and counted)."""

    def advance(self, now: float):
        """Let time pass: install waiting flows; returns what moved in and out."""

    def take_counters(self) -> dict:
        """Counts not yet folded, by flow id; zeroed once taken."""

    def remove(self, mf_id: int):
        """Forget a flow; returns its last counts."""

    def expire(self) -> None:
        """Drop connections the dpif's conntrack no longer has."""


class Dpif(Protocol):
    """A datapath: datapath flows with counters, a receive path through its tiers, and
    an upcall to the bridge on a miss.  The userspace implementation is
    sbnet.datapath.dpif.userspace.UserspaceDpif."""

    upcall: Upcall

    def process(self, batch: Batch, now: float) -> list[tuple[int, Batch]]:
        """Receive a batch, which the dpif owns from here (it may edit the packets in
        place); returns (port, packets) emitted."""

    def flow_put(self, wc: list[int], key, actions: tuple, rules: list, reason: str,
                 modified: int, now: float) -> Megaflow: ...

    def flow_put_many(self, wc: list[int], keys: np.ndarray, actions: tuple, rules: list,
                      reason: str, modified: int, now: float) -> list[Megaflow]:
        """flow_put of one translation for several keys (columns of slot-major `keys`,
        each a flow of its own: key & wc)."""

    def flow_del(self, mf_id: int) -> FlowCounts: ...

    def flow_dump(self) -> list[Megaflow]: ...

    def flow_counts(self, mf_ids) -> FlowCounts: ...

    def flow_used(self, mf_id: int) -> float: ...

    def flow_find(self, key) -> int:
        """The datapath flow a packet of this key would match (its id), or -1."""

    def flows_since(self, mark: int) -> tuple[list[Megaflow], int]:
        """Datapath flows put since `mark` still there, and the next mark (a tier below
        installs what is new)."""

    def fold_counts(self, counts: dict) -> None:
        """Add the counts a tier below took (by flow id: packets, bytes, used, tcp_flags)."""

    def action_list(self, action_id: int) -> tuple: ...

    def action_ids(self, mf_ids: np.ndarray) -> np.ndarray: ...

    def stats(self) -> DpifStats: ...
