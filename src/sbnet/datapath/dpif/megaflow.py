"""The megaflow cache: masked-key subtables with vectorized open-addressing lookup over a batch, and its compiled twin for small batches."""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from sbnet.datapath.jit import kernel
from sbnet.flows import fields as F

_MULT = np.uint64(0x9E3779B97F4A7C15)
COMPILED_MAX = 1 << 16   # batches up to this size: one compiled call per subtable
# Columns of a megaflow's counter record (Megaflows._rec): used holds a float64's bits.
_PACKETS, _BYTES, _USED, _ACTION = range(4)
_REC_W = 4


def _records(n: int) -> np.ndarray:
    """n counter records, zero, no action list (-1)."""
    rec = np.zeros((n, _REC_W), dtype=np.int64)
    rec[:, _ACTION] = -1
    return rec


def _hash(masked: np.ndarray) -> np.ndarray:
    """Hash (k, n) masked key words to (n,) uint64."""
    h = np.zeros(masked.shape[1], dtype=np.uint64)
    for row in masked:
        h ^= row
        h *= _MULT
        h ^= h >> np.uint64(29)
    return h


@numba.njit(cache=True, inline="always")
def _holds(keys, g, slots, mask, values, ids, r):
    """Whether live row r of a subtable is packet g's masked key."""
    if ids[r] < 0:
        return False
    for j in range(slots.shape[0]):
        if values[j, r] != keys[slots[j], g] & mask[j]:
            return False
    return True


@kernel("int64(uint64[:, :], int64[:], int64[:], int64, int64[:], uint64[:], int64[:],"
        " uint64[:, :], int64[:], uint64[:], int64[:], int64[:])")
def subtable_kernel(keys, todo, pos, n, slots, mask, home_row, values, ids, ovf_h, ovf_row,
                    out):
    """Subtable.lookup of the rows todo[:n] (out[pos[t]] set for each found), as one
    compiled pass: the same hash, home slot, overflow walk and verification.  The rows
    not found are compacted to the front of todo and pos; returns their number."""
    k = slots.shape[0]
    size_mask = np.uint64(home_row.shape[0] - 1)
    left = 0
    for t in range(n):
        g = todo[t]
        h = np.uint64(0)
        for j in range(k):
            h ^= keys[slots[j], g] & mask[j]
            h *= _MULT
            h ^= h >> np.uint64(29)
        found = -1
        r = home_row[np.int64(h & size_mask)]
        if r >= 0 and _holds(keys, g, slots, mask, values, ids, r):
            found = ids[r]
        if found < 0 and ovf_h.shape[0]:
            i = np.searchsorted(ovf_h, h)
            while i < ovf_h.shape[0] and ovf_h[i] == h:
                if _holds(keys, g, slots, mask, values, ids, ovf_row[i]):
                    found = ids[ovf_row[i]]
                    break
                i += 1
        if found >= 0:
            out[pos[t]] = found
        else:
            todo[left] = g
            pos[left] = pos[t]
            left += 1
    return left


@dataclass(eq=False, slots=True)
class Megaflow:
    """One cached translation: match (key & mask) -> datapath actions."""

    mf_id: int
    slots: tuple[int, ...]           # slots with a nonzero mask
    mask: tuple[int, ...]            # mask per slot in `slots`
    value: tuple[int, ...]           # key & mask per slot
    actions: tuple                   # odp actions
    action_id: int
    rules: list                      # classifier rules whose actions ran
    reason: str                      # "forwarded" or why packets are dropped
    # The key that created it (for revalidation): a tuple, or a KeyColumn until first
    # read (a batch's megaflows are made without a tuple of each key).
    origin: object
    modified: int                    # slots the actions rewrite (bitmask)
    created: float = 0.0
    tier: str = "software"

    @property
    def key(self) -> tuple[int, ...]:
        k = self.origin
        if type(k) is KeyColumn:
            k = self.origin = tuple(k.keys[:, k.col].tolist())
        return k


class KeyColumn:
    """A key as a column of a batch's slot-major keys, read into a tuple when needed."""

    __slots__ = ("keys", "col")

    def __init__(self, keys: np.ndarray, col: int) -> None:
        self.keys, self.col = keys, col


class Subtable:
    """All megaflows sharing one mask: masked values by row, found through a hash index.

    The index is a direct-mapped table (each megaflow at the slot its hash
    names, four slots per megaflow) backed by a sorted overflow array for the
    few that collide, so most lookups are one gather for the whole batch.
    Inserts only append a row; the index takes them in at the next lookup.
    """

    def __init__(self, slots: tuple[int, ...], mask: tuple[int, ...]) -> None:
        self.slots = np.array(slots, dtype=np.intp)
        self.mask = np.array(mask, dtype=np.uint64)[:, None]
        self._slots64 = self.slots.astype(np.int64)
        self._mask1 = self.mask[:, 0].copy()
        # Slot-major (one row per masked slot, one column per megaflow): verifying a
        # batch of candidates gathers contiguous rows.
        self.values = np.zeros((len(slots), 16), dtype=np.uint64)
        self.ids = np.full(16, -1, dtype=np.int64)             # megaflow id per column
        self.free: list[int] = []
        self.rows_used = 0
        self.n = 0
        self.hits = 0
        self._size = 64
        self._home_h = np.zeros(self._size, dtype=np.uint64)
        self._home_row = np.full(self._size, -1, dtype=np.intp)
        self._ovf_h = np.zeros(0, dtype=np.uint64)               # sorted
        self._ovf_row = np.zeros(0, dtype=np.intp)
        self._indexed = 0                                       # entries in the index
        self._pending: list[int] = []
        self._stale = 0
        # Per slot, the value every megaflow here shares (None once they differ):
        # checking those needs no gather, and in real pipelines most slots of a
        # subtable (eth_type, ip_proto, in_port...) are such constants.
        self._const: list[int | None] | None = None

    def insert(self, value: tuple[int, ...], mf_id: int) -> int:
        """Add a megaflow; returns its row (used to remove it)."""
        if self.free:
            row = self.free.pop()
        else:
            if self.rows_used == self.ids.size:
                self._grow_rows()
            row = self.rows_used
            self.rows_used += 1
        self.values[:, row] = value
        self.ids[row] = mf_id
        if self._const is None:
            self._const = list(value)
        else:
            c = self._const
            for j, v in enumerate(value):
                if c[j] is not None and c[j] != v:
                    c[j] = None
        self._pending.append(row)
        self.n += 1
        return row

    def insert_many(self, values: np.ndarray, mf_ids: np.ndarray) -> np.ndarray:
        """insert() of several megaflows (values: one column each); returns their rows."""
        n = mf_ids.size
        take = min(n, len(self.free))
        reused = [self.free.pop() for _ in range(take)]
        while self.rows_used + n - take > self.ids.size:
            self._grow_rows()
        rows = np.array(reused + list(range(self.rows_used, self.rows_used + n - take)),
                        dtype=np.intp)
        self.rows_used += n - take
        self.values[:, rows] = values
        self.ids[rows] = mf_ids
        if self._const is None:
            self._const = [int(v) for v in values[:, 0]]
        c = self._const
        for j in range(len(c)):
            if c[j] is not None and (values[j] != np.uint64(c[j])).any():
                c[j] = None
        self._pending.extend(rows.tolist())
        self.n += n
        return rows

    def remove(self, row: int) -> None:
        self.ids[row] = -1
        self.free.append(row)
        self.n -= 1
        self._stale += 1

    def _grow_rows(self) -> None:
        old = self.ids.size
        self.values = np.hstack([self.values, np.zeros_like(self.values)])
        self.ids = np.concatenate([self.ids, np.full(old, -1, dtype=np.int64)])

    def _reindex(self) -> None:
        want = self._indexed + len(self._pending) - self._stale
        if self._stale * 2 > max(self._indexed, 64) or want * 4 > self._size:
            # Rebuild from the live rows: too many dead entries, or the table is full.
            rows = np.flatnonzero(self.ids[:self.rows_used] >= 0)
            size = 64
            while size < rows.size * 8:
                size *= 2
            self._size = size
            self._home_h = np.zeros(size, dtype=np.uint64)
            self._home_row = np.full(size, -1, dtype=np.intp)
            self._ovf_h = np.zeros(0, dtype=np.uint64)
            self._ovf_row = np.zeros(0, dtype=np.intp)
            self._indexed = self._stale = 0
            live = self.values[:, rows]
            self._const = [int(v[0]) if v.size and (v == v[0]).all() else None for v in live]
        else:
            rows = np.array(self._pending, dtype=np.intp)
        self._pending = []
        if rows.size == 0:
            return
        h = _hash(self.values[:, rows])
        pos = (h & np.uint64(self._size - 1)).astype(np.intp)
        free = self._home_row[pos] < 0
        _, first = np.unique(pos, return_index=True)
        home = np.zeros(rows.size, dtype=bool)
        home[first] = True
        home &= free
        self._home_h[pos[home]] = h[home]
        self._home_row[pos[home]] = rows[home]
        oh, orow = h[~home], rows[~home]
        if oh.size:
            order = np.argsort(oh, kind="stable")
            at = np.searchsorted(self._ovf_h, oh[order])
            self._ovf_h = np.insert(self._ovf_h, at, oh[order])
            self._ovf_row = np.insert(self._ovf_row, at, orow[order])
        self._indexed += rows.size

    def lookup_compiled(self, keys: np.ndarray, todo: np.ndarray, pos: np.ndarray, n: int,
                        out: np.ndarray) -> int:
        """lookup() of the rows todo[:n] through subtable_kernel (its contract)."""
        if self._pending or self._stale * 2 > max(self._indexed, 64):
            self._reindex()
        if self._indexed == 0:
            return n
        left = subtable_kernel(keys, todo, pos, n, self._slots64, self._mask1,
                               self._home_row, self.values, self.ids, self._ovf_h,
                               self._ovf_row, out)
        self.hits += n - left
        return left

    def lookup(self, keys: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """Megaflow id for each of `rows` (columns of the slot-major `keys`; None = all), -1 if none."""
        if self._pending or self._stale * 2 > max(self._indexed, 64):
            self._reindex()
        sel = np.take(keys, self.slots, axis=0)
        masked = (sel if rows is None else sel[:, rows]) & self.mask
        n = masked.shape[1]
        out = np.full(n, -1, dtype=np.int64)
        if self._indexed == 0:
            return out
        h = _hash(masked)
        r = self._home_row[(h & np.uint64(self._size - 1)).astype(np.intp)]
        ok = self._same(r, masked)
        out[ok] = self.ids[r[ok]]
        if self._ovf_h.size:
            todo = np.flatnonzero(out < 0)
            self._overflow(h, masked, todo, out)
        self.hits += int(np.count_nonzero(out >= 0))
        return out

    def _overflow(self, h, masked, todo, out) -> None:
        size = self._ovf_h.size
        # Sorted probes walk the sorted array in order: much kinder to the cache.
        todo = todo[np.argsort(h[todo], kind="stable")]
        pos = np.searchsorted(self._ovf_h, h[todo])
        while todo.size:
            inside = pos < size
            todo, pos = todo[inside], pos[inside]
            same = self._ovf_h[pos] == h[todo]
            todo, pos = todo[same], pos[same]
            if not todo.size:
                break
            r = self._ovf_row[pos]
            ok = self._same(r, masked[:, todo])
            out[todo[ok]] = self.ids[r[ok]]
            todo, pos = todo[~ok], pos[~ok] + 1

    def _same(self, r: np.ndarray, masked: np.ndarray) -> np.ndarray:
        """Which columns of `masked` equal the live megaflow in row r (r < 0: none)."""
        ok = (r >= 0) & (self.ids[r] >= 0)
        for j, const in enumerate(self._const):
            if const is None:
                ok &= self.values[j, r] == masked[j]
            else:
                ok &= masked[j] == np.uint64(const)
        return ok

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self._home_h, self._home_row, self._ovf_h, self._ovf_row,
                                      self.values, self.ids))


class MegaflowCache:
    """Subtables by mask, per-megaflow counters in numpy arrays, megaflow objects by id.
    compiled: batches up to COMPILED_MAX rows are looked up by subtable_kernel, one call
    per subtable, instead of the numpy passes (whose fixed cost per subtable is tens of
    numpy calls)."""

    def __init__(self, compiled: bool = False) -> None:
        self.compiled = compiled
        self.subtables: dict[tuple, Subtable] = {}
        self.order: list[Subtable] = []
        self.flows: dict[int, Megaflow] = {}
        self._rows: dict[int, tuple[Subtable, int]] = {}
        self._next = 0
        self._counters(_records(1024))
        self.tcp_flags = np.zeros(1024, dtype=np.uint16)

    def _counters(self, rec: np.ndarray) -> None:
        """packets, bytes, used and action_of as columns of one record per megaflow: a
        packet's hit reads and writes one cache line for them, not four (at 100,000
        megaflows each was a miss)."""
        self._rec = rec
        self.packets = rec[:, _PACKETS]
        self.bytes = rec[:, _BYTES]
        self.used = rec[:, _USED].view(np.float64)
        self.action_of = rec[:, _ACTION]

    def __len__(self) -> int:
        return len(self.flows)

    @property
    def next_id(self) -> int:
        """The id the next megaflow will get (ids are never reused)."""
        return self._next

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Megaflow id for every column in `rows`, -1 for misses."""
        out = np.full(rows.size, -1, dtype=np.int64)
        if self.compiled and rows.size <= COMPILED_MAX and keys.dtype == np.uint64:
            todo = rows.astype(np.int64)
            pos = np.arange(rows.size, dtype=np.int64)
            n = rows.size
            for sub in self.order:
                if n == 0:
                    break
                n = sub.lookup_compiled(keys, todo, pos, n, out)
            return out
        todo = None              # None: every row still to find (saves a gather)
        for sub in self.order:
            sel = rows if todo is None else rows[todo]
            if sel.size == 0:
                break
            got = sub.lookup(keys, None if todo is None and rows.size == keys.shape[1] else sel)
            hit = got >= 0
            if todo is None:
                out[hit] = got[hit]
                todo = np.flatnonzero(~hit)
            else:
                out[todo[hit]] = got[hit]
                todo = todo[~hit]
        return out

    def add(self, wc: list[int], key, actions: tuple, action_id: int, rules: list,
            reason: str, modified: int, now: float) -> Megaflow:
        slots = tuple([i for i, m in enumerate(wc) if m])
        mask = tuple([wc[i] for i in slots])
        value = tuple([key[i] & wc[i] for i in slots])
        mf_id = self._next
        self._next += 1
        self._ensure(mf_id)
        mf = Megaflow(mf_id, slots, mask, value, actions, action_id, rules, reason,
                      tuple(key), modified, now)
        sub = self.subtables.get((slots, mask))
        if sub is None:
            sub = self.subtables[(slots, mask)] = Subtable(slots, mask)
            self.order.append(sub)
        row = sub.insert(value, mf_id)
        self.flows[mf_id] = mf
        self._rows[mf_id] = (sub, row)
        self.packets[mf_id] = self.bytes[mf_id] = 0
        self.used[mf_id] = now
        self.action_of[mf_id] = action_id
        self.tcp_flags[mf_id] = 0
        return mf

    def add_many(self, wc: list[int], keys: np.ndarray, actions: tuple, action_id: int,
                 rules: list, reason: str, modified: int, now: float) -> list[Megaflow]:
        """add() of one translation for several keys (columns of slot-major `keys`)."""
        n = keys.shape[1]
        if not n:
            return []
        slots = tuple([i for i, m in enumerate(wc) if m])
        mask = tuple([wc[i] for i in slots])
        values = keys[list(slots)] & np.array(mask, dtype=np.uint64)[:, None]
        first = self._next
        self._next += n
        self._ensure(self._next - 1)
        ids = np.arange(first, first + n, dtype=np.int64)
        mfs = [Megaflow(i, slots, mask, tuple(v), actions, action_id, rules, reason, KeyColumn(keys, c),
                        modified, now)
               for c, (i, v) in enumerate(zip(range(first, first + n), values.T.tolist()))]
        sub = self.subtables.get((slots, mask))
        if sub is None:
            sub = self.subtables[(slots, mask)] = Subtable(slots, mask)
            self.order.append(sub)
        rows = sub.insert_many(values, ids)
        self.flows.update(zip(range(first, first + n), mfs))
        self._rows.update(zip(range(first, first + n), ((sub, r) for r in rows.tolist())))
        self.packets[first:first + n] = 0
        self.bytes[first:first + n] = 0
        self.used[first:first + n] = now
        self.action_of[first:first + n] = action_id
        self.tcp_flags[first:first + n] = 0
        return mfs

    def remove(self, mf_id: int) -> Megaflow:
        mf = self.flows.pop(mf_id)
        sub, row = self._rows.pop(mf_id)
        sub.remove(row)
        if sub.n == 0:
            del self.subtables[(mf.slots, mf.mask)]
            self.order.remove(sub)
        self.action_of[mf_id] = -1
        return mf

    def matches(self, mf: Megaflow, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which of `rows` fall inside megaflow `mf` (bool per row)."""
        if not mf.slots:
            return np.ones(rows.size, dtype=bool)
        sl = np.array(mf.slots, dtype=np.intp)
        m = np.array(mf.mask, dtype=np.uint64)[:, None]
        v = np.array(mf.value, dtype=np.uint64)[:, None]
        return ((keys[sl][:, rows] & m) == v).all(axis=0)

    def resort(self) -> None:
        """Busiest subtables first, as OVS's dpcls orders them."""
        self.order.sort(key=lambda s: -s.hits)

    def _ensure(self, mf_id: int) -> None:
        if mf_id < self.packets.size:
            return
        n = max(mf_id + 1, self.packets.size * 2)
        rec = _records(n)
        rec[:self._rec.shape[0]] = self._rec
        self._counters(rec)
        flags = np.zeros(n, dtype=np.uint16)
        flags[:self.tcp_flags.size] = self.tcp_flags
        self.tcp_flags = flags

    def nbytes(self) -> int:
        arrays = self._rec.nbytes + self.tcp_flags.nbytes
        return arrays + sum(s.nbytes() for s in self.subtables.values())
