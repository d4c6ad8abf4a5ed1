"""The express lane's long-lived arrays as one compiled struct, unboxed once per lane call."""

from __future__ import annotations

import numba
from numba.core import types
from numba.experimental import structref

# Unboxing an array argument costs numba about 0.15-0.3 us; the lane took 37 arguments, so
# a batch of one packet paid more to enter the lane than the lane's own work.  The arrays
# that live across batches (tables, counters, programs, the decap plan) are handed over once
# in this struct instead, and it is rebuilt when one of them is replaced.
_A1 = {dt: types.Array(dt, 1, "A") for dt in (types.int64, types.uint64, types.float64,
                                             types.uint16, types.int8)}
_A2 = {dt: types.Array(dt, 2, "A") for dt in (types.int64, types.uint64, types.uint8)}
FIELDS = (
    # signature cache and megaflow cache
    ("table", _A2[types.uint64]), ("matches", _A2[types.uint64]),
    ("action_of", _A1[types.int64]), ("packets", _A1[types.int64]),
    ("nbytes", _A1[types.int64]), ("used", _A1[types.float64]),
    ("tcp_flags", _A1[types.uint16]),
    # the lane's programs and tunnel templates
    ("prog", _A2[types.int64]), ("tmpl", _A2[types.uint8]), ("tprm", _A2[types.int64]),
    # conntrack's table, timeouts and scratch
    ("kv", _A2[types.uint64]), ("mem", types.Array(types.uint64, 2, "C")),
    ("tmo", _A1[types.float64]), ("mark", _A1[types.int8]), ("count", _A1[types.int64]),
    # counters out, key slots the lane resets
    ("stats", _A1[types.int64]), ("zero", _A1[types.int64]),
    # the tunnel ports and local addresses decap_kernel takes (tunnel_fast.decap_plan)
    ("local4", _A1[types.uint64]), ("local6", _A2[types.uint64]),
    ("udp_ports", _A1[types.int64]), ("udp_kinds", _A1[types.int64]),
    ("tports", _A2[types.int64]),
    # the signature cache's mask rows (after the plan: it is replaced on its own)
    ("masks", _A2[types.uint64]),
)


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
    """A struct holding `arrays`, in FIELDS' order."""
    if len(arrays) != len(FIELDS):
        raise ValueError(f"a lane state takes {len(FIELDS)} arrays, got {len(arrays)}")
    return _new(*arrays)

