"""The megaflow cache: masked-key subtables with vectorized open-addressing lookup over a batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sbnet.flows import fields as F

_MULT = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.uint64(0)


def _hash(masked: np.ndarray) -> np.ndarray:
    """Hash (k, n) masked key words to (n,) nonzero uint64 (0 marks an empty hash slot)."""
    h = np.zeros(masked.shape[1], dtype=np.uint64)
    for row in masked:
        h ^= row
        h *= _MULT
        h ^= h >> np.uint64(29)
    # The top bit marks a used slot (0 is empty); the low bits pick the home slot.
    h |= np.uint64(1 << 63)
    return h


@dataclass(eq=False)
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
    key: tuple[int, ...]             # the key that created it (for revalidation)
    modified: int                    # slots the actions rewrite (bitmask)
    created: float = 0.0
    tier: str = "software"


class Subtable:
    """All megaflows sharing one mask, in an open-addressing hash table of numpy arrays."""

    def __init__(self, slots: tuple[int, ...], mask: tuple[int, ...]) -> None:
        self.slots = np.array(slots, dtype=np.intp)
        self.mask = np.array(mask, dtype=np.uint64)[:, None]
        self.size = 64
        self.hashes = np.zeros(self.size, dtype=np.uint64)
        self.index = np.full(self.size, -1, dtype=np.int64)    # row in `values`
        self.values = np.zeros((16, len(slots)), dtype=np.uint64)
        self.ids = np.full(16, -1, dtype=np.int64)             # megaflow id per row
        self.free: list[int] = list(range(15, -1, -1))
        self.n = 0
        self.used_slots = 0                                    # live + tombstones
        self.hits = 0

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Megaflow id for each of `rows` (columns of the slot-major `keys`), -1 if none."""
        masked = keys[self.slots][:, rows] & self.mask
        h = _hash(masked)
        out = np.full(rows.size, -1, dtype=np.int64)
        sizemask = np.uint64(self.size - 1)
        pos = (h & sizemask).astype(np.intp)
        todo = np.arange(rows.size)
        for _ in range(self.size):
            if todo.size == 0:
                break
            p = pos[todo]
            th = self.hashes[p]
            idx = self.index[p]
            cand = (th == h[todo]) & (idx >= 0)
            if cand.any():
                ci = todo[cand]
                rows_v = self.values[idx[cand]]
                eq = (rows_v.T == masked[:, ci]).all(axis=0)
                hit = ci[eq]
                out[hit] = self.ids[idx[cand][eq]]
                done = np.zeros(todo.size, dtype=bool)
                done[np.nonzero(cand)[0][eq]] = True
            else:
                done = np.zeros(todo.size, dtype=bool)
            done |= th == _EMPTY
            todo = todo[~done]
            pos[todo] = (pos[todo] + 1) & (self.size - 1)
        self.hits += int((out >= 0).sum())
        return out

    def insert(self, value: tuple[int, ...], mf_id: int) -> int:
        """Add a megaflow; returns its row (used to remove it)."""
        if (self.used_slots + 1) * 2 > self.size:
            self._rehash(self.size * 2 if self.n * 4 > self.size else self.size)
        if not self.free:
            self._grow_rows()
        row = self.free.pop()
        self.values[row] = value
        self.ids[row] = mf_id
        self._place(row)
        self.n += 1
        return row

    def remove(self, row: int) -> None:
        h = _hash(self.values[row][:, None])[0]
        p = int(h) & (self.size - 1)
        while self.hashes[p] != _EMPTY:
            if self.index[p] == row:
                self.index[p] = -1          # tombstone keeps probe chains intact
                break
            p = (p + 1) & (self.size - 1)
        self.ids[row] = -1
        self.free.append(row)
        self.n -= 1

    def _place(self, row: int) -> None:
        h = _hash(self.values[row][:, None])[0]
        p = int(h) & (self.size - 1)
        while self.hashes[p] != _EMPTY:
            p = (p + 1) & (self.size - 1)
        self.hashes[p] = h
        self.index[p] = row
        self.used_slots += 1

    def _grow_rows(self) -> None:
        old = self.values.shape[0]
        self.values = np.vstack([self.values, np.zeros_like(self.values)])
        self.ids = np.concatenate([self.ids, np.full(old, -1, dtype=np.int64)])
        self.free.extend(range(2 * old - 1, old - 1, -1))

    def _rehash(self, size: int) -> None:
        self.size = size
        self.hashes = np.zeros(size, dtype=np.uint64)
        self.index = np.full(size, -1, dtype=np.int64)
        self.used_slots = 0
        for row in np.nonzero(self.ids >= 0)[0]:
            self._place(int(row))

    def nbytes(self) -> int:
        return (self.hashes.nbytes + self.index.nbytes + self.values.nbytes + self.ids.nbytes)


class MegaflowCache:
    """Subtables by mask, per-megaflow counters in numpy arrays, megaflow objects by id."""

    def __init__(self) -> None:
        self.subtables: dict[tuple, Subtable] = {}
        self.order: list[Subtable] = []
        self.flows: dict[int, Megaflow] = {}
        self._rows: dict[int, tuple[Subtable, int]] = {}
        self._next = 0
        self.packets = np.zeros(1024, dtype=np.int64)
        self.bytes = np.zeros(1024, dtype=np.int64)
        self.used = np.zeros(1024, dtype=np.float64)
        self.action_of = np.full(1024, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.flows)

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Megaflow id for every column in `rows`, -1 for misses."""
        out = np.full(rows.size, -1, dtype=np.int64)
        todo = np.arange(rows.size)
        for sub in self.order:
            if todo.size == 0:
                break
            got = sub.lookup(keys, rows[todo])
            hit = got >= 0
            out[todo[hit]] = got[hit]
            todo = todo[~hit]
        return out

    def add(self, wc: list[int], key, actions: tuple, action_id: int, rules: list,
            reason: str, modified: int, now: float) -> Megaflow:
        slots = tuple(i for i, m in enumerate(wc) if m)
        mask = tuple(wc[i] for i in slots)
        value = tuple(int(key[i]) & wc[i] for i in slots)
        mf_id = self._next
        self._next += 1
        self._ensure(mf_id)
        mf = Megaflow(mf_id, slots, mask, value, actions, action_id, rules, reason,
                      tuple(int(k) for k in key), modified, now)
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
        return mf

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
        for name, fill in (("packets", 0), ("bytes", 0), ("used", 0.0), ("action_of", -1)):
            old = getattr(self, name)
            new = np.full(n, fill, dtype=old.dtype)
            new[:old.size] = old
            setattr(self, name, new)

    def nbytes(self) -> int:
        arrays = self.packets.nbytes + self.bytes.nbytes + self.used.nbytes + self.action_of.nbytes
        return arrays + sum(s.nbytes() for s in self.subtables.values())
