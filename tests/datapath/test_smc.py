"""The signature match cache: a hit is always the flow last cached for that key, and 100,000 keys fit a table of 2^18 buckets."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.datapath.dpif.smc import HASHED, SignatureCache
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
