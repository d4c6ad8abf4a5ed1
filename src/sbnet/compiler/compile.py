"""Compile one host's pipeline from the topology, and diff two compiles into a bundle."""

from __future__ import annotations

import functools
import importlib
import zlib
from dataclasses import dataclass, field

from sbnet.compiler.tables import PIPELINE
from sbnet.compiler.topology import Chassis, Topology
from sbnet.flows import actions as A
from sbnet.flows.flow import Flow
from sbnet.flows.match import MatchBuilder

# The stage modules, in pipeline order; each has build(ctx) and owns the tables it names.
STAGES = ("classify", "port_security", "qos", "secgroups", "chains", "l3", "l2", "deliver")


class CompileError(ValueError):
    """Intent that cannot be compiled for this host (the message says which resource and why)."""


@dataclass
class HostPipeline:
    """What one host must have installed: flows by OpenFlow identity, groups, meters, and
    for every cookie the stage and resource that made the flow (for "dropped by which rule")."""

    host: str
    flows: dict[tuple, Flow] = field(default_factory=dict)
    groups: dict[int, A.GroupMod] = field(default_factory=dict)
    meters: dict[int, A.MeterMod] = field(default_factory=dict)
    origins: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.flows)


@dataclass
class Diff:
    """The bundle that turns one HostPipeline into another."""

    add: list[Flow] = field(default_factory=list)
    modify: list[Flow] = field(default_factory=list)
    delete: list[Flow] = field(default_factory=list)
    groups: list[A.GroupMod] = field(default_factory=list)
    delete_groups: list[int] = field(default_factory=list)
    meters: list[A.MeterMod] = field(default_factory=list)
    delete_meters: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.add, self.modify, self.delete, self.groups, self.delete_groups,
                    self.meters, self.delete_meters))

    @property
    def size(self) -> int:
        return len(self.add) + len(self.modify) + len(self.delete)


class Context:
    """What a stage's build(ctx) uses: the topology, this host, and a checked flow builder."""

    def __init__(self, topo: Topology, host: str) -> None:
        self.topo = topo
        self.host = host
        self.chassis: Chassis | None = topo.chassis.get(host)
        self.out = HostPipeline(host)
        self._stage = ""

    def table(self, name: str) -> int:
        return PIPELINE.number(name)

    def goto(self, name: str) -> A.GotoTable:
        return A.GotoTable(PIPELINE.number(name))

    def cookie(self, kind: str, ident: str) -> int:
        """A cookie naming what made a flow: the stage in the top byte, a hash of the
        resource below.  origins maps it back to "stage kind id"."""
        c, origin = _cookie(self._stage, kind, ident)
        self.out.origins[c] = origin
        return c

    def flow(self, table: str, priority: int, actions: tuple | list = (),
             match: dict | None = None, cookie: int = 0) -> Flow:
        """Build a flow (match given as {field: value or (value, mask)}), check it against
        the pipeline declaration and add it.  The same identity twice with different
        actions is a compiler bug and fails loudly."""
        f = _flow(table, priority, tuple((match or {}).items()), tuple(actions), cookie)
        old = self.out.flows.get(f.key)
        if old is not None and old.actions != f.actions:
            raise CompileError(f"two flows with the same match in {table}: {old} / {f}")
        self.out.flows[f.key] = f
        return f

    def group(self, g: A.GroupMod) -> None:
        self.out.groups[g.group_id] = g

    def meter(self, m: A.MeterMod) -> None:
        self.out.meters[m.meter_id] = m


@functools.lru_cache(maxsize=1 << 20)
def _flow(table: str, priority: int, match: tuple, actions: tuple, cookie: int) -> Flow:
    """Flows are values: a recompile that asks for the same flow gets the same object back
    (no match building, no checks), which is what makes recompiling a host cheap and lets
    diff() compare by identity first."""
    mb = MatchBuilder()
    for name, v in match:
        if isinstance(v, tuple):
            mb.set(name, v[0], v[1])
        else:
            mb.set(name, v)
    return PIPELINE.flow(table, priority, mb.build(), actions, cookie)


@functools.lru_cache(maxsize=1 << 18)
def _cookie(stage: str, kind: str, ident: str) -> tuple[int, str]:
    num = STAGES.index(stage) + 1 if stage in STAGES else 0
    c = (num << 56) | (zlib.crc32(f"{kind}:{ident}".encode()) << 8) | (len(kind) & 0xFF)
    return c, f"{stage} {kind} {ident}"


def compile_host(topo: Topology, host: str) -> HostPipeline:
    """The whole pipeline of `host`: every stage's flows plus the tables' miss flows."""
    ctx = Context(topo, host)
    for f in PIPELINE.miss_flows():
        ctx.out.flows[f.key] = f
    for name in STAGES:
        ctx._stage = name
        importlib.import_module(f"sbnet.compiler.{name}").build(ctx)
    return ctx.out


def diff(old: HostPipeline | None, new: HostPipeline) -> Diff:
    """The additions, modifications and deletions (flows, groups, meters) from old to new."""
    d = Diff()
    old_flows = old.flows if old else {}
    for key, f in new.flows.items():
        o = old_flows.get(key)
        if o is f:
            continue
        if o is None:
            d.add.append(f)
        elif o.actions != f.actions or o.cookie != f.cookie:
            d.modify.append(f)
    d.delete = [f for key, f in old_flows.items() if key not in new.flows]
    old_groups = old.groups if old else {}
    d.groups = [g for gid, g in new.groups.items() if old_groups.get(gid) != g]
    d.delete_groups = [gid for gid in old_groups if gid not in new.groups]
    old_meters = old.meters if old else {}
    d.meters = [m for mid, m in new.meters.items() if old_meters.get(mid) != m]
    d.delete_meters = [mid for mid in old_meters if mid not in new.meters]
    return d
