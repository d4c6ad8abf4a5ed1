"""The signature match cache: a hit is always the flow last cached for that key, and 100,000 keys fit a table of 2^18 buckets."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.datapath.dpif.smc import HASHED, SignatureCache, hash_rows, hash_span
from sbnet.flows.fields import N_SLOTS


def _keys(rng: np.random.Generator, n: int) -> np.ndarray:
    keys = np.zeros((N_SLOTS, n), np.uint64)
    keys[HASHED] = rng.integers(0, 1 << 62, (len(HASHED), n), dtype=np.uint64)
    return keys


def _cache(bits: int, n_flows: int) -> SignatureCache:
    smc = SignatureCache(bits=bits)
    for f in range(n_flows):
        smc.add(f, (), (), ())          # a flow that takes every key: hits are the cache's
    return smc


def test_a_hundred_thousand_keys_stay_cached_in_two_to_the_eighteen_buckets():
    rng = np.random.default_rng(5)
    keys = _keys(rng, 100_000)
    rows = np.arange(100_000)
    smc = _cache(18, 6250)
    flows, hashes, misses = smc.lookup(keys, rows)
    assert misses == 100_000
    smc.insert(hashes, rows % 6250)
    flows, _, misses = smc.lookup(keys, rows)
    # Two sets of four per key: at this load almost no key pushes another out.
    assert misses < 100
    hit = flows >= 0
    assert (flows[hit] == (rows % 6250)[hit]).all()


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 8), st.lists(st.tuples(st.integers(0, 300), st.integers(0, 9)),
                                    min_size=1, max_size=400), st.integers(0, 2**32 - 1))
def test_a_hit_is_the_flow_last_cached_for_that_key(bits, inserts, seed):
    """Tiny tables, so keys collide and push each other out: a lookup may miss, but what it
    finds is the flow last inserted for that key, never another key's."""
    keys = _keys(np.random.default_rng(seed), 301)
    smc = _cache(bits, 10)
    _, hashes, _ = smc.lookup(keys, np.arange(301))
    last: dict[int, int] = {}
    for k, f in inserts:
        smc.insert(hashes[[k]], np.array([f]))
        last[k] = f
        flows, _, _ = smc.lookup(keys, np.arange(301))
        for key, got in enumerate(flows.tolist()):
            if got >= 0:
                assert hashes[key] == hashes[k] and got == f if key == k else got == last.get(key)
        assert flows[k] == f           # just inserted: found


def test_the_first_pass_hash_of_rows_in_order_is_the_indexed_hash():
    # The lane hashes a batch's rows 0..n-1 with hash_span (plain runs) and any other rows
    # with hash_rows (through their index): one key, one hash, whichever it took.
    rng = np.random.default_rng(3)
    keys = _keys(rng, 300)
    by_span, by_index = np.empty(300, np.uint64), np.empty(300, np.uint64)
    hash_span(keys, 300, HASHED, by_span)
    hash_rows(keys, np.arange(300), 300, HASHED, by_index)
    assert (by_span == by_index).all()
    _, hashes, _ = SignatureCache().lookup(keys, np.arange(300))
    assert (hashes == by_span).all()


def test_a_hit_is_verified_against_the_flow_s_own_values_under_its_shared_mask():
    # Flows of one mask share a masks row; each keeps its values.  A flow of nine slots
    # (its row past its first cache line) is verified whole, and one wider than the cache
    # takes (over 24 slots) is never cached.
    keys = _keys(np.random.default_rng(4), 3)
    slots = tuple(int(s) for s in HASHED[:9])
    mask = tuple([0xFFFF] * 9)
    smc = SignatureCache()
    smc.add(0, slots, mask, tuple(int(keys[s, 0]) & 0xFFFF for s in slots))
    smc.add(1, slots, mask, tuple(int(keys[s, 1]) & 0xFFFF for s in slots))
    other = list(int(keys[s, 2]) & 0xFFFF for s in slots)
    other[8] ^= 1                       # differs in its last slot only
    smc.add(2, slots, mask, tuple(other))
    wide = tuple(range(N_SLOTS))[:25]
    smc.add(3, wide, tuple([0] * 25), tuple([0] * 25))
    _, hashes, _ = smc.lookup(keys, np.arange(3))
    smc.insert(hashes, np.array([0, 1, 2]))
    flows, _, misses = smc.lookup(keys, np.arange(3))
    assert flows.tolist() == [0, 1, -1] and misses == 1
    smc.insert(hashes[:1], np.array([3]))      # refused: key 0 still finds flow 0
    flows, _, _ = smc.lookup(keys, np.arange(1))
    assert flows.tolist() == [0]
