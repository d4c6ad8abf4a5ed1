"""The express lane's long-lived arrays as one compiled struct, unboxed once per lane call."""

from __future__ import annotations

import numba
from numba.core import types
from numba.experimental import structref

# Unboxing an array argument costs numba about 0.15-0.3 us; the lane took 37 arguments, so
# a batch of one packet paid more to enter the lane than the lane's own work.  The arrays
# that live across batches (tables, counters, programs, the decap plan) are handed over once
# in this struct instead, and it is rebuilt when one of them is replaced.
# Arrays the lane indexes row by row are typed C-contiguous, so an index is one
# multiply by a row length, not a multiply by a stride read at run time per dimension;
# the megaflow cache's counters are columns of its records ('A': strided).
_A1 = {dt: types.Array(dt, 1, "A") for dt in (types.int64, types.float64)}
_C1 = {dt: types.Array(dt, 1, "C") for dt in (types.int64, types.uint64, types.float64,
                                             types.uint16, types.int8)}
_C2 = {dt: types.Array(dt, 2, "C") for dt in (types.int64, types.uint64, types.uint8)}
FIELDS = (
    # signature cache and megaflow cache
    ("table", _C2[types.uint64]), ("matches", _C2[types.uint64]),
    ("action_of", _A1[types.int64]), ("packets", _A1[types.int64]),
    ("nbytes", _A1[types.int64]), ("used", _A1[types.float64]),
    ("tcp_flags", _C1[types.uint16]),
    # the lane's programs and tunnel templates
    ("prog", _C2[types.int64]), ("tmpl", _C2[types.uint8]), ("tprm", _C2[types.int64]),
    # conntrack's table, timeouts and scratch
    ("kv", _C2[types.uint64]), ("mem", _C2[types.uint64]),
    ("tmo", _C1[types.float64]), ("mark", _C1[types.int8]), ("count", _C1[types.int64]),
    # counters out, key slots the lane resets
    ("stats", _C1[types.int64]), ("zero", _C1[types.int64]),
    # the tunnel ports and local addresses decap_kernel takes (tunnel_fast.decap_plan)
    ("local4", _C1[types.uint64]), ("local6", _C2[types.uint64]),
    ("udp_ports", _C1[types.int64]), ("udp_kinds", _C1[types.int64]),
    ("tports", _C2[types.int64]),
    # the signature cache's mask rows (after the plan: it is replaced on its own)
    ("masks", _C2[types.uint64]),
)
# Fields typed 'A' (the others are C-contiguous arrays: new_state makes sure).
_STRIDED = frozenset(("action_of", "packets", "nbytes", "used"))


@structref.register
class LaneStateType(types.StructRef):
    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(t)) for name, t in fields)


class LaneState(structref.StructRefProxy):
    """Made by new_state() (compiled and cached; the proxy's own constructor would be
    compiled again in every process)."""


structref.define_boxing(LaneStateType, LaneState)
LANE_STATE = LaneStateType(list(FIELDS))


@numba.njit(cache=True)
def _new(table, matches, action_of, packets, nbytes, used, tcp_flags, prog, tmpl, tprm, kv,
         mem, tmo, mark, count, stats, zero, local4, local6, udp_ports, udp_kinds, tports,
         masks):
    s = structref.new(LANE_STATE)
    s.table, s.matches, s.action_of, s.packets = table, matches, action_of, packets
    s.nbytes, s.used, s.tcp_flags = nbytes, used, tcp_flags
    s.prog, s.tmpl, s.tprm = prog, tmpl, tprm
    s.kv, s.mem, s.tmo, s.mark, s.count = kv, mem, tmo, mark, count
    s.stats, s.zero = stats, zero
    s.local4, s.local6, s.udp_ports, s.udp_kinds, s.tports = (local4, local6, udp_ports,
                                                              udp_kinds, tports)
    s.masks = masks
    return s


def new_state(arrays: tuple) -> LaneState:
    """A struct holding `arrays`, in FIELDS' order (all but _STRIDED's C-contiguous)."""
    if len(arrays) != len(FIELDS):
        raise ValueError(f"a lane state takes {len(FIELDS)} arrays, got {len(arrays)}")
    for (name, _), a in zip(FIELDS, arrays):
        if name not in _STRIDED and not a.flags.c_contiguous:
            # The lane writes some of them (counters, conntrack's scratch): a copy would
            # lose its writes, so the owner must keep them contiguous.
            raise ValueError(f"a lane state's {name} must be C-contiguous")
    return _new(*arrays)

