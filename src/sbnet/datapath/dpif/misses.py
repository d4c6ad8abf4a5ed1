"""The upcall of a batch's misses: one translation per new megaflow, each new megaflow claiming every miss it matches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sbnet.datapath.dpif.megaflow import Megaflow
from sbnet.datapath.dpif.smc import (_DEAD, SignatureCache, claim_kernel, claim_many_kernel,
                                     masked_hash_kernel, match_row)

if TYPE_CHECKING:
    from sbnet.datapath.dpif.userspace import UserspaceDpif


def upcall_misses(dpif: UserspaceDpif, keys: np.ndarray, miss: np.ndarray,
                  now: float) -> np.ndarray:
    """The megaflow id of each missed key column `miss` of `keys`, through dpif.upcall.

    Each new megaflow takes every miss of the batch it matches at once; the first miss
    it does not take is translated next (so a packet gets the first megaflow made for
    it, as if the misses went up one by one).  The misses are indexed by their key's
    hash under each megaflow mask met (a batch meets few masks), so finding what a new
    megaflow takes costs a search, not a pass over the batch."""
    n = miss.size
    owner = np.full(n, -1, dtype=np.int64)
    # Every column missed (a burst of new flows): read the keys in place, no copy (the
    # kernels and the translation only read them).
    whole = n == keys.shape[1] and np.array_equal(miss, np.arange(n))
    sub = keys if whole else keys[:, miss]
    index: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    smc, flows = dpif.smc, dpif.cache.flows
    first = 0
    stride = 1
    skip = 0
    while first < n:
        mf = dpif.upcall(sub[:, first].tolist(), now)
        owner[first] = mf.mf_id
        match = match_of(smc, mf)
        ix = _index(index, sub, mf, match)
        first = claim_kernel(sub, ix[0], ix[1], match, owner, mf.mf_id, first)
        if first < n and dpif.same_path is not None:
            if skip:              # paths had no other misses of late: ask less often
                skip -= 1
                continue
            cols, ids = dpif.same_path(sub, owner, index, now)
            if not cols.size:
                stride = min(2 * stride, dpif.max_stride)
                skip = stride - 1
            else:
                stride = 1
                # Their flows share one mask: each takes the misses it matches too.
                owner[cols] = ids
                uniq = np.unique(ids)
                mf = flows[int(uniq[0])]
                ix = _index(index, sub, mf, match_of(smc, mf))
                _claim_many(smc, flows, sub, ix, uniq, owner)
                left = np.flatnonzero(owner[first:] < 0)
                first = first + int(left[0]) if left.size else n
    return owner


def match_of(smc: SignatureCache | None, mf: Megaflow) -> np.ndarray:
    """A megaflow's match row: the one the signature cache stored for it, else made."""
    if smc is not None and smc.wide[mf.mf_id, 0] == len(mf.slots):
        return smc.wide[mf.mf_id]
    return match_row(mf.slots, mf.mask, mf.value)


def _index(index: dict, sub: np.ndarray, mf: Megaflow, match: np.ndarray) -> tuple:
    """The batch's misses hashed under a flow's mask, sorted (made once per mask)."""
    ix = index.get((mf.slots, mf.mask))
    if ix is None:
        h = np.empty(sub.shape[1], dtype=np.uint64)
        masked_hash_kernel(sub, match, h)
        order = np.argsort(h, kind="stable")
        ix = index[(mf.slots, mf.mask)] = (h[order], order)
    return ix


def _claim_many(smc: SignatureCache | None, flows: dict, sub: np.ndarray, ix: tuple,
                ids: np.ndarray, owner: np.ndarray) -> None:
    """Every miss no flow owns yet that one of the flows `ids` (of one mask) takes."""
    if smc is not None and smc.wide[int(ids[0]), 0] != _DEAD:
        claim_many_kernel(sub, ix[0], ix[1], smc.wide, ids, owner)
        return
    for i in ids.tolist():
        claim_kernel(sub, ix[0], ix[1], match_of(smc, flows[i]), owner, i, 0)
