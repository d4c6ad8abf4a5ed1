"""Conntrack's tuple index: an open-addressing hash table in numpy arrays, probed for a whole batch at once."""

from __future__ import annotations

import numpy as np

from sbnet.datapath.jit import kernel

EMPTY, TOMB = 0, 1
_TOP = np.uint64(1 << 63)
_SCALAR = 8      # get_many finishes this many keys (or fewer) one by one


def stored(h):
    """The form a 64-bit tuple hash is kept in: top bit set, so never EMPTY or TOMB."""
    if isinstance(h, np.ndarray):
        return h | _TOP
    return h | (1 << 63)


@kernel("void(uint64[:, :], uint64[:], int64[:])")
def get_many_kernel(kv, h, out):
    """HashIndex.get_many compiled: out[i] the value under h[i], -1 when absent."""
    mask = np.uint64(kv.shape[0] - 1)
    for r in range(h.shape[0]):
        key = h[r]
        i = np.int64(key & mask)
        while True:
            k = kv[i, 0]
            if k == key:
                out[r] = np.int64(kv[i, 1])
                break
            if k == EMPTY:
                out[r] = -1
                break
            i = (i + 1) & np.int64(mask)


@kernel("int64(uint64[:, :], uint64[:], int64[:])")
def insert_many_kernel(kv, h, v):
    """HashIndex.insert_many's claim rounds compiled, once the table has room (each key
    lands where numpy's rounds put it: in a round every key still unplaced tries its
    slot; the first to try a slot free at the round's start takes it, the others move
    one slot on); returns the dead slots reused."""
    mask = np.int64(kv.shape[0] - 1)
    n = h.shape[0]
    pos = np.empty(n, np.int64)
    act = np.empty(n, np.int64)
    for r in range(n):
        pos[r] = np.int64(h[r] & np.uint64(mask))
        act[r] = r
    reused = 0
    left = n
    while left:
        nxt = 0
        for t in range(left):
            r = act[t]
            p = pos[r]
            k = kv[p, 0]
            if k <= TOMB:        # free at the round's start: a claim this round fills it
                if k == TOMB:
                    reused += 1
                kv[p, 0] = h[r]
                kv[p, 1] = np.uint64(v[r])
            else:
                pos[r] = (p + 1) & mask
                act[nxt] = r
                nxt += 1
        left = nxt
    return reused


class HashIndex:
    """Map of 64-bit keys (already `stored()`) to int64 values, linear probing.

    Lookups of many keys run as a few vectorized probe rounds; inserts and
    deletes are per key (they happen on the per-connection path).  Deleted
    slots become tombstones; the table is rebuilt when live + dead slots
    pass half its size.  compiled: get_many and insert_many as one native pass
    each (get_many_kernel, insert_many_kernel); False keeps the numpy rounds,
    the reference they are checked against.  Where a key lands may differ between
    the two; what each key maps to does not.
    """

    def __init__(self, capacity: int = 1 << 12, compiled: bool = True):
        self.compiled = compiled
        size = 1 << max(4, (capacity * 2 - 1).bit_length())
        self._init(size)

    def _init(self, size: int) -> None:
        # Each key beside its value: a lookup reads one cache line, not two.
        self.kv = np.zeros((size, 2), dtype=np.uint64)
        self.keys = self.kv[:, 0]
        self.vals = self.kv.view(np.int64)[:, 1]
        self.vals[:] = -1
        self.mask = size - 1
        self.used = 0
        self.dead = 0

    def __len__(self) -> int:
        return self.used

    def get_many(self, h: np.ndarray) -> np.ndarray:
        """Values for keys h (uint64, stored form), -1 where absent."""
        n = len(h)
        if self.compiled:
            res = np.empty(n, dtype=np.int64)
            get_many_kernel(self.kv, np.ascontiguousarray(h, dtype=np.uint64), res)
            return res
        res = np.full(n, -1, dtype=np.int64)
        keys, vals, mask = self.keys, self.vals, np.uint64(self.mask)
        pos = (h & mask).astype(np.intp)
        kv = self.kv.take(pos, axis=0)
        k = kv[:, 0]
        hit = k == h
        res[hit] = kv[:, 1].view(np.int64)[hit]
        act = np.flatnonzero(~hit & (k != EMPTY))
        m = self.mask
        while act.size > _SCALAR:
            p = (pos[act] + 1) & m
            pos[act] = p
            k = keys[p]
            hh = h[act]
            hit = k == hh
            if hit.any():
                res[act[hit]] = vals[p[hit]]
            act = act[~hit & (k != EMPTY)]
        # The last few long probe chains: a vectorized round each would cost more.
        for i in act.tolist():
            res[i] = self.get(int(h[i]))
        return res

    def _slot(self, h: int) -> int:
        keys, m = self.keys, self.mask
        i = h & m
        while True:
            k = int(keys[i])
            if k == h or k == EMPTY:
                return i
            i = (i + 1) & m

    def get(self, h: int) -> int:
        i = self._slot(h)
        return int(self.vals[i]) if int(self.keys[i]) == h else -1

    def __contains__(self, h: int) -> bool:
        return int(self.keys[self._slot(h)]) == h

    def insert(self, h: int, v: int) -> None:
        """Add key h (which must be absent)."""
        if (self.used + self.dead + 1) * 2 > self.mask + 1:
            self._rebuild()
        keys, m = self.keys, self.mask
        i = h & m
        while int(keys[i]) > TOMB:
            i = (i + 1) & m
        if int(keys[i]) == TOMB:
            self.dead -= 1
        keys[i] = h
        self.vals[i] = v
        self.used += 1

    def delete(self, h: int) -> bool:
        i = self._slot(h)
        if int(self.keys[i]) != h:
            return False
        self.keys[i] = TOMB
        self.vals[i] = -1
        self.used -= 1
        self.dead += 1
        return True

    def delete_many(self, h: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Remove the keys h whose value is v (vectorized probes); which were removed."""
        n = len(h)
        done = np.zeros(n, dtype=bool)
        keys, vals, m = self.keys, self.vals, self.mask
        pos = (h & np.uint64(m)).astype(np.intp)
        act = np.arange(n)
        while act.size:
            p = pos[act]
            k = keys[p]
            hit = (k == h[act]) & (vals[p] == v[act])
            if hit.any():
                keys[p[hit]] = TOMB
                vals[p[hit]] = -1
                done[act[hit]] = True
            act = act[~hit & (k != EMPTY)]
            pos[act] = (pos[act] + 1) & m
        k = int(done.sum())
        self.used -= k
        self.dead += k
        return done

    def _rebuild(self) -> None:
        live = self.keys > TOMB
        h, v = self.keys[live], self.vals[live]
        size = self.mask + 1
        if (self.used + 1) * 4 > size:
            size *= 2
        self._init(size)
        self.insert_many(h, v)

    def insert_many(self, h: np.ndarray, v: np.ndarray) -> None:
        """Add many absent, distinct keys at once (vectorized claim rounds)."""
        if not len(h):
            return
        while (self.used + self.dead + len(h)) * 2 > self.mask + 1:
            size = self.mask + 1
            live = self.keys > TOMB
            oh, ov = self.keys[live], self.vals[live]
            self._init(size * 2)
            if len(oh):
                self.insert_many(oh, ov)
        if self.compiled:
            self.dead -= insert_many_kernel(self.kv, np.ascontiguousarray(h, dtype=np.uint64),
                                            np.ascontiguousarray(v, dtype=np.int64))
            self.used += len(h)
            return
        keys, vals, m = self.keys, self.vals, self.mask
        pos = (h & np.uint64(m)).astype(np.intp)
        act = np.arange(len(h))
        while act.size:
            p = pos[act]
            k = keys[p]
            free = k <= TOMB
            cand, pc = act[free], p[free]
            if cand.size:
                _, first = np.unique(pc, return_index=True)
                win, ps = cand[first], pc[first]
                self.dead -= int((keys[ps] == TOMB).sum())
                keys[ps] = h[win]
                vals[ps] = v[win]
                placed = np.zeros(len(h), dtype=bool)
                placed[win] = True
                act = act[~placed[act]]
            pos[act] = (pos[act] + 1) & m
        self.used += len(h)

    def nbytes(self) -> int:
        return self.kv.nbytes
