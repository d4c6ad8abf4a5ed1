"""The signature match cache: the first dpif tier, full flow key hash -> datapath flow, compiled."""

from __future__ import annotations

import mmap

import numba
import numpy as np

from sbnet.datapath.jit import kernel
from sbnet.flows.fields import SLOT_INDEX

# The slots hashed to pick a packet's bucket: those that tell flows apart in practice.
# Any subset is correct (a hit is verified against the flow's whole match), so the
# rest of the key costs nothing here.
HASHED = np.array([SLOT_INDEX[s] for s in (
    "recirc_id", "in_port", "eth_src", "eth_dst", "eth_type", "vlan_tci", "nw_src", "nw_dst",
    "ipv6_src_lo", "ipv6_dst_lo", "nw_proto", "tp_src", "tp_dst", "ct_state", "ct_mark",
    "tun_id", "tun_src", "nsh_spi", "mpls_lse0")], dtype=np.int64)
_DEAD = np.uint64(0xFFFFFFFFFFFFFFFF)     # a match row's k when the flow is not cached


@numba.njit(cache=True, inline="always")
def hash_rows(keys, rows, n, hashed, out):
    """out[a]: the key hash of row rows[a] (its `hashed` slots, each xored in, then a
    multiply and a shift), for the first n rows, slot by slot over all rows: the rows'
    multiply chains overlap instead of each waiting on its own, and each slot's keys are
    read in order (unsigned indices: no negative-index fix-up)."""
    for a in range(n):
        out[a] = 0
    for s in hashed:
        ks = keys[s]
        for a in range(np.uint64(n)):
            h = out[a] ^ ks[np.uint64(rows[a])]
            h *= np.uint64(0x9E3779B97F4A7C15)
            out[a] = h ^ (h >> np.uint64(29))


@numba.njit(cache=True, inline="always")
def hash_span(keys, n, hashed, out):
    """hash_rows for rows 0 to n-1 in order: with no row index to follow, a slot's keys
    and the hashes are plain runs the compiler does eight at a time (3 ns a row against
    12 for hash_rows' indexed loads, with 19 slots)."""
    for a in range(n):
        out[a] = 0
    for s in hashed:
        ks = keys[s]
        for a in range(n):
            h = out[a] ^ ks[a]
            h *= np.uint64(0x9E3779B97F4A7C15)
            out[a] = h ^ (h >> np.uint64(29))


@numba.njit(cache=True, nogil=True)
def _covers(keys, i, match):
    """Does the flow whose match row is `match` ([k, slot, mask, value, ...]) take packet i?"""
    k = np.int64(match[0])
    for j in range(k):
        s = np.int64(match[1 + 3 * j])
        if keys[s, i] & match[2 + 3 * j] != match[3 + 3 * j]:
            return False
    return True


@numba.njit(cache=True, inline="always")
def covers_row(keys, i, row, masks):
    """Does the cached flow whose row is `row` ([k, mask id, value, ...]; its slots and
    masks in masks[mask id] as [slot, mask, ...]) take packet i?"""
    m = masks[np.uint64(row[1])]
    ui = np.uint64(i)
    # Unsigned indices: numba fixes up a signed index that could be negative on every
    # access (three more instructions a slot on the loop's critical path).
    for j in range(np.uint64(row[0])):
        if keys[m[np.uint64(2) * j], ui] & m[np.uint64(2) * j + np.uint64(1)] \
                != row[np.uint64(2) + j]:
            return False
    return True


# Buckets come in sets of WAYS (one 64-byte cache line: (hash, flow id + 1) pairs of
# 16 bytes); a hash may live in either of two sets, its own and an alternative from its
# high bits, so a few hashes meeting in one set do not push each other out batch after
# batch (with one set of two, about 3% of 100,000 flows missed the cache every time).
WAYS = 4


@numba.njit(cache=True, inline="always")
def _sets(table, h):
    """The first bucket of a hash's two sets."""
    mask = np.uint64(table.shape[0] - WAYS)
    return np.int64(h & mask), np.int64((h >> np.uint64(32)) * np.uint64(WAYS) & mask)


@numba.njit(cache=True, inline="always")
def probe_rows(table, hashes, n, out):
    """out[a]: the flow id the buckets of hashes[a] hold (-1: none; not yet verified), for
    the first n hashes.  One call a batch, not one a row: numba counts a reference to
    `table` on entering an inlined function and drops it on each return, two atomic
    operations that also stalled the loads of the rows around them (a sixth of the lane's
    lookup with 100,000 flows)."""
    mask = np.uint64(table.shape[0] - WAYS)
    for a in range(n):
        h = hashes[a]
        f = np.int64(-1)
        b = np.uint64(h & mask)
        for _ in range(2):
            for j in range(b, b + np.uint64(WAYS)):
                if table[j, 0] == h and table[j, 1] != 0:
                    f = np.int64(table[j, 1]) - 1
                    break
            if f >= 0:
                break
            b = (h >> np.uint64(32)) * np.uint64(WAYS) & mask
        out[a] = f


@numba.njit(cache=True, inline="always")
def lookup_rows(keys, rows, n, in_order, hashed, table, matches, masks, records, hashes, found):
    """found[a]: the cached flow of row rows[a] (-1: a miss), for the first n rows, and
    hashes[a] its key hash; in_order: rows[a] is a (hash_span); records: per flow, an
    array the caller reads next (its cache line is loaded here; empty: none).  Returns
    (misses, a word of what the touch loops read, for the caller to keep).
    Hash, probe and verify in separate passes, so the random loads of many rows overlap
    instead of waiting on memory one after another; and the rows' first bucket sets, then
    their flows' match rows and records, read first in loops of their own: independent
    loads the core overlaps, where the probe's and the verify's branches took each miss
    in turn (with 100,000 flows these misses were a third of the lane's time)."""
    if in_order:
        hash_span(keys, n, hashed, hashes)
    else:
        hash_rows(keys, rows, n, hashed, hashes)
    sink = np.uint64(0)
    for a in range(n):
        sink ^= table[_sets(table, hashes[a])[0], 0]
    probe_rows(table, hashes, n, found)
    touch = records.shape[0] > 0
    for a in range(n):
        f = found[a]
        if f >= 0:
            # The cache line of the match row the verify reads (for up to six slots; the
            # masks rows are few and stay cached).
            sink ^= matches[f, 0]
            if touch:
                sink ^= np.uint64(records[f])
    misses = 0
    for a in range(n):
        f = found[a]
        if f >= 0 and (matches[f, 0] == _DEAD or not covers_row(keys, rows[a], matches[f],
                                                                 masks)):
            f = -1
            found[a] = -1
        misses += f < 0
    return misses, sink


_NO_RECORDS = np.zeros(0, np.int64)


# Kernels with one signature each, compiled (or loaded from the on-disk cache) at import,
# never in the middle of a packet burst; callers pass exactly these types.
@kernel("int64(uint64[:, :], int64[:], int64[:], uint64[:, :], uint64[:, :], uint64[:, :],"
        " uint64[:], int64[:])")
def smc_lookup(keys, rows, hashed, table, matches, masks, hashes, out):
    """Flow id for each row (-1 on a miss); hashes[r] keeps each row's key hash."""
    return lookup_rows(keys, rows, rows.shape[0], False, hashed, table, matches, masks,
                       _NO_RECORDS, hashes, out)[0]


@kernel("void(uint64[:], int64[:], uint64[:, :], uint64[:, :])")
def smc_insert(hashes, flows, table, matches):
    """Remember the flow found by a lower tier for each hash (flows that fit the cache only):
    in the bucket already holding the hash, else an empty one of its first set, then of its
    second, else one of its first set picked by the hash's top bits is replaced."""
    for r in range(hashes.shape[0]):
        f = flows[r]
        if f < 0 or matches[f, 0] == _DEAD:
            continue
        h = hashes[r]
        b1, b2 = _sets(table, h)
        at = -1
        for b in (b1, b2):
            for j in range(b, b + WAYS):
                if table[j, 0] == h and table[j, 1] != 0:
                    at = j
                    break
            if at >= 0:
                break
        if at < 0:
            for b in (b1, b2):
                for j in range(b, b + WAYS):
                    if table[j, 1] == 0:
                        at = j
                        break
                if at >= 0:
                    break
        if at < 0:
            at = b1 + np.int64(h >> np.uint64(62))
        table[at, 0] = h
        table[at, 1] = f + 1


@numba.njit(cache=True, inline="always")
def _masked_hash(keys, i, match):
    """A hash of packet i's key under the mask of match row `match` (its slots, masked):
    the packets one megaflow of that mask takes share the value."""
    h = np.uint64(14695981039346656037)
    for j in range(np.int64(match[0])):
        h = (h ^ (keys[np.int64(match[1 + 3 * j]), i] & match[2 + 3 * j])) * np.uint64(1099511628211)
        h ^= h >> np.uint64(29)
    return h


@kernel("void(uint64[:, :], uint64[:], uint64[:])")
def masked_hash_kernel(keys, match, out):
    """out[i]: packet i's key hashed under match row `match`'s mask (see _masked_hash)."""
    for i in range(keys.shape[1]):
        out[i] = _masked_hash(keys, i, match)


@numba.njit(cache=True, inline="always")
def _claim(keys, hashes, order, match, owner, flow):
    """Give `flow` (match row `match`) every packet it takes that no flow owns yet, found
    by its value's hash among `hashes` (the packets' masked hashes under its mask, sorted;
    `order` their packets)."""
    h = np.uint64(14695981039346656037)
    for j in range(np.int64(match[0])):
        h = (h ^ match[3 + 3 * j]) * np.uint64(1099511628211)     # values are masked
        h ^= h >> np.uint64(29)
    lo = np.searchsorted(hashes, h)
    for r in range(lo, hashes.shape[0]):
        if hashes[r] != h:
            break
        i = order[r]
        if owner[i] < 0 and _covers(keys, i, match):
            owner[i] = flow


@kernel("int64(uint64[:, :], uint64[:], int64[:], uint64[:], int64[:], int64, int64)")
def claim_kernel(keys, hashes, order, match, owner, flow, first):
    """_claim for one flow; returns the first packet after `first` still unowned."""
    _claim(keys, hashes, order, match, owner, flow)
    n = owner.shape[0]
    first += 1
    while first < n and owner[first] >= 0:
        first += 1
    return first


@kernel("void(uint64[:, :], uint64[:], int64[:], uint64[:, :], int64[:], int64[:])")
def claim_many_kernel(keys, hashes, order, matches, flows, owner):
    """_claim for several flows of one mask, each's match row matches[flow]."""
    for f in flows:
        _claim(keys, hashes, order, matches[f], owner, f)


def resident_zeros(shape: tuple, dtype) -> np.ndarray:
    """np.zeros whose pages the kernel maps at once (MAP_POPULATE: one call, no fault per
    page later); plain np.zeros where the platform has no such mapping."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if not populate or not size:
        return np.zeros(shape, dtype=dtype)
    mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(mem, dtype=dtype).reshape(shape)


def match_row(slots: tuple, mask: tuple, value: tuple) -> np.ndarray:
    """A flow's match as one row [k, slot, mask, value, ...] (what the cache verifies)."""
    row = np.empty(1 + 3 * len(slots), dtype=np.uint64)
    row[0] = len(slots)
    row[1:] = np.array([slots, mask, value], dtype=np.uint64).T.ravel()
    return row


@kernel("void(int64[:], int32[:], uint64[:], float64, int64[:], int64[:], float64[:],"
        " uint16[:])")
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
    hash of a packet's flow key to the datapath flow that took it last.  A hit is verified
    against that flow's match (so a stale or colliding entry can only miss).  Each bucket
    is one (hash, flow id + 1) pair.  A flow's match is one row [k, mask id, value, ...]
    (k = _DEAD once the flow is gone or too wide to cache) of whole cache lines, its slots
    and masks one row of `masks` that every flow of that mask shares: a hit reads one line
    of its flow's own for up to six slots (with [k, slot, mask, value, ...] rows it read
    three or four, and 100,000 flows' rows did not fit the core's cache).  `wide` keeps
    the [k, slot, mask, value, ...] rows the miss path's kernels take."""

    def __init__(self, bits: int = 18, width: int = 24) -> None:
        # Zeroed memory (0 is an empty bucket), resident from the start: a burst of new
        # flows writes buckets all over the table, and faulting its pages in one by one
        # then (a read fault, then a copy-on-write one, each page) cost more host CPU than
        # the inserts (as ovs-vswitchd --mlockall, which makes its memory resident).
        self.table = resident_zeros((1 << bits, 2), np.uint64)
        self.width = width
        self.matches = np.full((1024, (2 + width + 7) & ~7), _DEAD, dtype=np.uint64)
        self.wide = np.full((1024, 1 + 3 * width), _DEAD, dtype=np.uint64)
        self.masks = np.zeros((16, 2 * width), dtype=np.uint64)
        self._mask_ids: dict[tuple, int] = {}
        self.hits = 0
        self.lookups = 0

    def _grow(self, mf_id: int) -> None:
        if mf_id < self.matches.shape[0]:
            return
        n = max(mf_id + 1, 2 * self.matches.shape[0])
        for name in ("matches", "wide"):
            old = getattr(self, name)
            grown = np.full((n, old.shape[1]), _DEAD, dtype=np.uint64)
            grown[:old.shape[0]] = old
            setattr(self, name, grown)

    def _mask_id(self, slots: tuple, mask: tuple) -> int:
        """The masks row of (slots, mask), added on first use.  Rows are never reused: a
        switch meets few masks (OVS's subtables), and a row costs 8 bytes a slot."""
        mid = self._mask_ids.get((slots, mask))
        if mid is None:
            mid = self._mask_ids[(slots, mask)] = len(self._mask_ids)
            if mid >= self.masks.shape[0]:
                grown = np.zeros((2 * self.masks.shape[0], self.masks.shape[1]), np.uint64)
                grown[:mid] = self.masks[:mid]
                self.masks = grown
            self.masks[mid, :2 * len(slots)] = np.array([slots, mask], np.uint64).T.ravel()
        return mid

    def add(self, mf_id: int, slots: tuple, mask: tuple, value: tuple) -> None:
        self._grow(mf_id)
        if len(slots) > self.width:
            return                      # too wide: the megaflow tier finds it every time
        k = len(slots)
        self.wide[mf_id, :1 + 3 * k] = match_row(slots, mask, value)
        self.matches[mf_id, 1] = self._mask_id(slots, mask)
        self.matches[mf_id, 2:2 + k] = np.array(value, dtype=np.uint64)
        self.matches[mf_id, 0] = k

    def add_many(self, mf_ids: np.ndarray, slots: tuple, mask: tuple, values: np.ndarray) -> None:
        """add() of flows of one mask: values has a row of masked values per flow."""
        if not mf_ids.size:
            return
        self._grow(int(mf_ids.max()))
        if len(slots) > self.width:
            return
        k = len(slots)
        rows = self.wide[mf_ids]
        rows[:, 0] = k
        rows[:, 1:1 + 3 * k:3] = np.array(slots, dtype=np.uint64)
        rows[:, 2:2 + 3 * k:3] = np.array(mask, dtype=np.uint64)
        rows[:, 3:3 + 3 * k:3] = values
        self.wide[mf_ids] = rows
        rows = self.matches[mf_ids]
        rows[:, 0] = k
        rows[:, 1] = self._mask_id(slots, mask)
        rows[:, 2:2 + k] = values
        self.matches[mf_ids] = rows

    def remove(self, mf_id: int) -> None:
        if mf_id < self.matches.shape[0]:
            self.matches[mf_id, 0] = _DEAD
            self.wide[mf_id, 0] = _DEAD

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(flow id or -1 per row, key hash per row, misses)."""
        out = np.empty(rows.size, dtype=np.int64)
        hashes = np.empty(rows.size, dtype=np.uint64)
        misses = smc_lookup(keys, rows.astype(np.int64, copy=False), HASHED, self.table,
                            self.matches, self.masks, hashes, out)
        self.lookups += rows.size
        self.hits += rows.size - misses
        return out, hashes, misses

    def insert(self, hashes: np.ndarray, flows: np.ndarray) -> None:
        smc_insert(hashes, flows.astype(np.int64, copy=False), self.table, self.matches)

    def nbytes(self) -> int:
        return self.table.nbytes + self.matches.nbytes + self.wide.nbytes + self.masks.nbytes
