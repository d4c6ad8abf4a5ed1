"""Compile one host's pipeline from the topology, and diff two compiles into a bundle."""

from __future__ import annotations

import contextlib
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
# (lb comes last so that the older stages keep their cookie numbers.)
STAGES = ("classify", "port_security", "dhcp", "qos", "secgroups", "chains", "l3", "l2", "deliver",
          "lb")


class CompileError(ValueError):
    """Intent that cannot be compiled for this host (the message says which resource and why)."""


class ResourceFault(CompileError):
    """One resource cannot be compiled: the compile is retried without it."""

    def __init__(self, typ: str, ident: str, reason: str) -> None:
        super().__init__(f"{typ} {ident}: {reason}")
        self.resource = (typ, ident)
        self.reason = reason


# The model type a unit's or cookie's kind names (which resource to leave out on a fault).
KIND_TYPES = {"port": "port", "network": "network", "flood": "network", "group": "security_group",
              "members": "security_group", "security_group_rule": "security_group", "router": "router",
              "floatingip": "floatingip", "qos_policy": "policy", "port_chain": "port_chain",
              "flow_classifier": "flow_classifier", "loadbalancer": "lb_loadbalancer"}


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
                with self.resource(key[1], key[2]):
                    fn(*args)
            finally:
                self._sink = direct
        self.used[key] = u

    @contextlib.contextmanager
    def resource(self, kind: str, ident: str):
        """Flows built inside are one resource's: if they cannot be built, that resource is
        reported as a ResourceFault (and left out), not the whole host's compile."""
        try:
            yield
        except ResourceFault:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is this resource's fault
            typ = KIND_TYPES.get(kind)
            if typ is None:
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ResourceFault(typ, ident, f"{self._stage}: {reason[:300]}") from exc

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
    to; `last_diff` is the bundle from the previous compile to this one.

    A resource that cannot be compiled (its flows fail to build, or clash with an older
    resource's) is left out and named in `faults`; everything else is compiled as if it
    did not exist.  A compile that fails changes nothing: the next one starts from the
    last good state."""

    MAX_FAULTS = 1000

    def __init__(self, host: str) -> None:
        self.host = host
        self.units: dict[tuple, Unit] = {}
        self.flows: dict[tuple, Flow] = {}
        self._contrib: dict[tuple, dict[tuple, Flow]] = {}
        self.rebuilt = 0                      # units rebuilt by the last compile
        self.last_diff = Diff()
        self._last: HostPipeline | None = None
        self.faults: dict[tuple[str, str], str] = {}   # (type, id) -> why it was left out

    def compile(self, topo: Topology) -> HostPipeline:
        faults: dict[tuple[str, str], str] = dict(topo.invalid)
        while True:
            try:
                out = self._compile(topo)
            except ResourceFault as f:
                if f.resource in faults or len(faults) >= self.MAX_FAULTS:
                    raise
                faults[f.resource] = f.reason
                topo = topo.without(faults)
                continue
            self.faults = faults
            return out

    def _compile(self, topo: Topology) -> HostPipeline:
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
        # Contributions of the flows the changed units touch, worked out on copies: nothing
        # of this compiler's state changes until every merge has succeeded.
        contrib: dict[tuple, dict[tuple, Flow]] = {}
        for k in changed:
            old, new = self.units.get(k), used.get(k)
            for fk in (old.out.flows if old is not None else ()):
                contrib.setdefault(fk, dict(self._contrib.get(fk, {}))).pop(k, None)
            for fk, f in (new.out.flows.items() if new is not None else ()):
                contrib.setdefault(fk, dict(self._contrib.get(fk, {})))[k] = f
        merged: dict[tuple, Flow | None] = {}
        for fk, c in contrib.items():
            try:
                merged[fk] = _merge(c.values()) if c else None
            except CompileError as exc:
                raise _culprit(topo, used, c, exc) from exc
        d = Diff()
        for fk, after in merged.items():
            before = self.flows.get(fk)
            if after is None:
                self._contrib.pop(fk, None)
                if before is not None:
                    del self.flows[fk]
                    d.delete.append(before)
                continue
            self._contrib[fk] = contrib[fk]
            if before is None:
                d.add.append(after)
            elif before.actions != after.actions or before.cookie != after.cookie:
                d.modify.append(after)
            else:
                continue
            self.flows[fk] = after
        self.rebuilt = sum(1 for k in changed if k[0] != "direct" and k in used)
        self.units = used
        out = HostPipeline(self.host, dict(self.flows))
        for u in used.values():
            out.origins.update(u.out.origins)
            out.groups.update(u.out.groups)
            out.meters.update(u.out.meters)
        _group_meter_diff(d, self._last, out)
        self.last_diff, self._last = d, out
        return out


def _culprit(topo: Topology, units: dict[tuple, Unit], contrib: dict[tuple, Flow],
             exc: CompileError) -> CompileError:
    """Flows of several resources clash: the newest of those resources is at fault."""
    owners = set()
    for k, f in contrib.items():
        origin = units[k].out.origins.get(f.cookie, "") if k in units else ""
        kind, ident = (k[1], k[2]) if k[0] != "direct" and len(k) > 2 else \
            (origin.split(" ")[1:3] + ["", ""])[:2]
        typ = KIND_TYPES.get(kind)
        if typ is not None and ident:
            owners.add((typ, ident))
    if not owners:
        return exc
    typ, ident = max(owners, key=lambda o: topo.created(*o))
    return ResourceFault(typ, ident, str(exc)[:300])


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
