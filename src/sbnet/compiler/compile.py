"""Compile one host's pipeline from the topology, and diff two compiles into a bundle."""

from __future__ import annotations

import dataclasses
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
STAGES = ("classify", "port_security", "dhcp", "qos", "secgroups", "chains", "l3", "l2", "deliver")


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


@dataclass
class Unit:
    """Flows one piece of intent makes (a port, a group's rules, a network's flooding), kept
    with the inputs they were made from: a recompile whose inputs are unchanged reuses them."""

    deps: tuple
    out: HostPipeline


class Context:
    """What a stage's build(ctx) uses: the topology, this host, and a checked flow builder.

    Flows built inside ctx.unit(...) belong to that unit; the others to the stage's own
    "direct" unit, which is rebuilt on every compile (cheap: flows are cached values)."""

    def __init__(self, topo: Topology, host: str, units: dict | None = None) -> None:
        self.topo = topo
        self.host = host
        self.chassis: Chassis | None = topo.chassis.get(host)
        self._units = units if units is not None else {}
        self.used: dict[tuple, Unit] = {}
        self._stage = ""
        self._sink = HostPipeline(host)

    def stage(self, name: str) -> None:
        """Start a stage: close the previous one's direct unit."""
        self._close_direct()
        self._stage = name
        self._sink = HostPipeline(self.host)

    def _close_direct(self) -> None:
        key = ("direct", self._stage)
        old = self._units.get(key)
        new = self._sink
        if (old is not None and old.out.flows.keys() == new.flows.keys()
                and all(old.out.flows[k] is f for k, f in new.flows.items())
                and old.out.groups == new.groups and old.out.meters == new.meters
                and old.out.origins == new.origins):
            self.used[key] = old
        else:
            self.used[key] = Unit((), new)

    def finish(self) -> dict[tuple, "Unit"]:
        self._close_direct()
        return self.used

    def unit(self, key: tuple, deps: tuple, fn, *args) -> None:
        """Run fn(*args) as one unit: `deps` must hold every input fn reads from the
        topology (versions of resources, keys, ofports), so that equal deps mean equal flows.
        tests/compiler/test_incremental.py checks that against compiles from scratch."""
        key = (self._stage, *key)
        u = self._units.get(key)
        if u is None or u.deps != deps:
            u = Unit(deps, HostPipeline(self.host))
            direct, self._sink = self._sink, u.out
            try:
                fn(*args)
            finally:
                self._sink = direct
        self.used[key] = u

    def table(self, name: str) -> int:
        return PIPELINE.number(name)

    def goto(self, name: str) -> A.GotoTable:
        return A.GotoTable(PIPELINE.number(name))

    def cookie(self, kind: str, ident: str) -> int:
        """A cookie naming what made a flow: the stage in the top byte, a hash of the
        resource below.  origins maps it back to "stage kind id"."""
        c, origin = _cookie(self._stage, kind, ident)
        self._sink.origins[c] = origin
        return c

    def flow(self, table: str, priority: int, actions: tuple | list = (),
             match: dict | None = None, cookie: int = 0) -> Flow:
        """Build a flow (match given as {field: value or (value, mask)}), check it against
        the pipeline declaration and add it.  The same identity twice with different
        actions is a compiler bug and fails loudly."""
        f = _flow(table, priority, tuple((match or {}).items()), tuple(actions), cookie)
        _add(self._sink.flows, f)
        return f

    def flow_object(self, f: Flow) -> None:
        """Add a flow built elsewhere (checked against the pipeline)."""
        PIPELINE.check(f)
        _add(self._sink.flows, f)

    def group(self, g: A.GroupMod) -> None:
        self._sink.groups[g.group_id] = g

    def meter(self, m: A.MeterMod) -> None:
        self._sink.meters[m.meter_id] = m


def _add(flows: dict, f: Flow) -> None:
    old = flows.get(f.key)
    flows[f.key] = f if old is None or old is f else _merge((old, f))


def _merge(flows) -> Flow:
    """One flow from several with the same identity: fine when the actions agree (the
    lowest cookie is kept, whatever the order), and conjunction clauses shared by several
    rules become one flow with all their conjunctions (OpenFlow requires that).
    Anything else is a compiler bug."""
    it = iter(flows)
    first = next(it)
    rest = list(it)
    if not rest:
        return first
    if all(f.actions == first.actions for f in rest):
        return min((first, *rest), key=lambda f: f.cookie)
    if all(_all_conj(f.actions) for f in (first, *rest)):
        acts = {a for f in (first, *rest) for a in f.actions}
        return dataclasses.replace(first, cookie=0, actions=tuple(
            sorted(acts, key=lambda c: (c.conj_id, c.clause))))
    other = next(f for f in rest if f.actions != first.actions)
    raise CompileError(f"two flows with the same match: {first} / {other}")


def _all_conj(actions: tuple) -> bool:
    return bool(actions) and all(isinstance(a, A.Conjunction) for a in actions)


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


class Compiler:
    """One host's incremental compiler.  It keeps the units of its last compile, rebuilds
    only those whose inputs changed, and re-merges only the flows those units contribute
    to; `last_diff` is the bundle from the previous compile to this one."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.units: dict[tuple, Unit] = {}
        self.flows: dict[tuple, Flow] = {}
        self._contrib: dict[tuple, dict[tuple, Flow]] = {}
        self.rebuilt = 0                      # units rebuilt by the last compile
        self.last_diff = Diff()
        self._last: HostPipeline | None = None

    def compile(self, topo: Topology) -> HostPipeline:
        ctx = Context(topo, self.host, self.units)
        ctx.stage("miss")
        for f in PIPELINE.miss_flows():
            ctx.flow_object(f)
        for name in STAGES:
            ctx.stage(name)
            importlib.import_module(f"sbnet.compiler.{name}").build(ctx)
        used = ctx.finish()
        changed = [k for k, u in used.items() if self.units.get(k) is not u]
        changed += [k for k in self.units if k not in used]
        self.rebuilt = sum(1 for k in changed if k[0] != "direct" and k in used)
        dirty: set[tuple] = set()
        for k in changed:
            old, new = self.units.get(k), used.get(k)
            if old is not None:
                for fk in old.out.flows:
                    self._contrib[fk].pop(k, None)
                    dirty.add(fk)
            if new is not None:
                for fk, f in new.out.flows.items():
                    self._contrib.setdefault(fk, {})[k] = f
                    dirty.add(fk)
        d = Diff()
        for fk in dirty:
            before = self.flows.get(fk)
            contrib = self._contrib.get(fk)
            if not contrib:
                self._contrib.pop(fk, None)
                if before is not None:
                    del self.flows[fk]
                    d.delete.append(before)
                continue
            after = _merge(contrib.values())
            if before is None:
                d.add.append(after)
            elif before.actions != after.actions or before.cookie != after.cookie:
                d.modify.append(after)
            else:
                continue
            self.flows[fk] = after
        self.units = used
        out = HostPipeline(self.host, dict(self.flows))
        for u in used.values():
            out.origins.update(u.out.origins)
            out.groups.update(u.out.groups)
            out.meters.update(u.out.meters)
        _group_meter_diff(d, self._last, out)
        self.last_diff, self._last = d, out
        return out


def compile_host(topo: Topology, host: str) -> HostPipeline:
    """The whole pipeline of `host` from scratch: every stage's flows plus the tables'
    miss flows."""
    return Compiler(host).compile(topo)


def _group_meter_diff(d: Diff, old: HostPipeline | None, new: HostPipeline) -> None:
    old_groups = old.groups if old else {}
    d.groups = [g for gid, g in new.groups.items() if old_groups.get(gid) != g]
    d.delete_groups = [gid for gid in old_groups if gid not in new.groups]
    old_meters = old.meters if old else {}
    d.meters = [m for mid, m in new.meters.items() if old_meters.get(mid) != m]
    d.delete_meters = [mid for mid in old_meters if mid not in new.meters]


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
    _group_meter_diff(d, old, new)
    return d
