"""The signature match cache: the first dpif tier, full flow key hash -> datapath flow, compiled."""

from __future__ import annotations

import numba
import numpy as np

from sbnet.flows.fields import SLOT_INDEX

# The slots hashed to pick a packet's bucket: those that tell flows apart in practice.
# Any subset is correct (a hit is verified against the flow's whole match), so the
# rest of the key costs nothing here.
HASHED = np.array([SLOT_INDEX[s] for s in (
    "recirc_id", "in_port", "eth_src", "eth_dst", "eth_type", "vlan_tci", "nw_src", "nw_dst",
    "ipv6_src_lo", "ipv6_dst_lo", "nw_proto", "tp_src", "tp_dst", "ct_state", "ct_mark",
    "tun_id", "tun_src", "nsh_spi", "mpls_lse0")], dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def _key_hash(keys, i, hashed):
    h = np.uint64(0)
    for s in hashed:
        h ^= keys[s, i]
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return h


@numba.njit(cache=True, nogil=True)
def _covers(keys, i, f, nslot, slots, mask, value):
    """Does datapath flow f (live, with its match in row f) take packet i?"""
    k = nslot[f]
    if k < 0:
        return False
    for j in range(k):
        if keys[slots[f, j], i] & mask[f, j] != value[f, j]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def smc_lookup(keys, rows, hashed, table_h, table_f, nslot, slots, mask, value, hashes, out):
    """Flow id for each row (-1 on a miss); hashes[r] keeps each row's key hash."""
    size_mask = np.uint64(table_h.shape[0] - 1)
    misses = 0
    for r in range(rows.shape[0]):
        i = rows[r]
        h = _key_hash(keys, i, hashed)
        hashes[r] = h
        b = np.int64(h & size_mask)
        f = table_f[b] - 1
        if f >= 0 and table_h[b] == h and _covers(keys, i, f, nslot, slots, mask, value):
            out[r] = f
        else:
            out[r] = -1
            misses += 1
    return misses


@numba.njit(cache=True, nogil=True)
def smc_insert(hashes, flows, table_h, table_f, nslot):
    """Remember the flow found by a lower tier for each hash (flows that fit the cache only)."""
    size_mask = np.uint64(table_h.shape[0] - 1)
    for r in range(hashes.shape[0]):
        f = flows[r]
        if f >= 0 and nslot[f] >= 0:
            b = np.int64(hashes[r] & size_mask)
            table_h[b] = hashes[r]
            table_f[b] = f + 1


@numba.njit(cache=True, nogil=True)
def count_kernel(flows, lengths, tcp_flags, now, packets, nbytes, used, flags):
    """Per-flow counters for a batch: packets, bytes, last use and TCP flags seen."""
    for r in range(flows.shape[0]):
        f = flows[r]
        packets[f] += 1
        nbytes[f] += lengths[r]
        used[f] = now
        flags[f] |= np.uint16(tcp_flags[r])


class SignatureCache:
    """As OVS's SMC/EMC in front of the megaflow classifier: a direct-mapped table from the
    hash of a packet's whole flow key to the datapath flow that took it last.  A hit is
    verified against that flow's match (so a stale or colliding entry can only miss), and
    flows are found by id in arrays kept beside the table: one row per flow id with its
    masked slots, or nslot -1 once the flow is gone or too wide to cache."""

    def __init__(self, bits: int = 18, width: int = 24) -> None:
        # Zeroed memory (table_f holds flow id + 1; 0 is empty): pages a small switch
        # never touches cost nothing.
        self.table_h = np.zeros(1 << bits, dtype=np.uint64)
        self.table_f = np.zeros(1 << bits, dtype=np.int64)
        self.width = width
        self.nslot = np.full(1024, -1, dtype=np.int64)
        self.slots = np.zeros((1024, width), dtype=np.int16)
        self.mask = np.zeros((1024, width), dtype=np.uint64)
        self.value = np.zeros((1024, width), dtype=np.uint64)
        self.hits = 0
        self.lookups = 0

    def add(self, mf_id: int, slots: tuple, mask: tuple, value: tuple) -> None:
        if mf_id >= self.nslot.size:
            self._grow(mf_id)
        if len(slots) > self.width:
            return                      # too wide: the megaflow tier finds it every time
        k = len(slots)
        self.slots[mf_id, :k] = slots
        self.mask[mf_id, :k] = mask
        self.value[mf_id, :k] = value
        self.nslot[mf_id] = k

    def remove(self, mf_id: int) -> None:
        if mf_id < self.nslot.size:
            self.nslot[mf_id] = -1

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(flow id or -1 per row, key hash per row, misses)."""
        out = np.empty(rows.size, dtype=np.int64)
        hashes = np.empty(rows.size, dtype=np.uint64)
        misses = smc_lookup(keys, rows, HASHED, self.table_h, self.table_f, self.nslot, self.slots,
                            self.mask, self.value, hashes, out)
        self.lookups += rows.size
        self.hits += rows.size - misses
        return out, hashes, misses

    def insert(self, hashes: np.ndarray, flows: np.ndarray) -> None:
        smc_insert(hashes, flows, self.table_h, self.table_f, self.nslot)

    def _grow(self, mf_id: int) -> None:
        n = max(mf_id + 1, self.nslot.size * 2)
        nslot = np.full(n, -1, dtype=np.int64)
        nslot[:self.nslot.size] = self.nslot
        self.nslot = nslot
        for name in ("slots", "mask", "value"):
            old = getattr(self, name)
            new = np.zeros((n, self.width), dtype=old.dtype)
            new[:old.shape[0]] = old
            setattr(self, name, new)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.table_h, self.table_f, self.nslot, self.slots,
                                      self.mask, self.value))
