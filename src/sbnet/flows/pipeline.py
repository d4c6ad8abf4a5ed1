"""Pipelines declared as data: tables by name, numbered from the declaration, flows checked on build."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.flows.flow import Flow
from sbnet.flows.match import Match


class PipelineError(ValueError):
    """A flow that breaks its table's declaration."""


# Fields any table may match because other fields need them as prerequisites.
_PREREQ_FIELDS = {"eth_type", "ip_proto", "icmpv6_type"}


@dataclass(frozen=True)
class TableSpec:
    """One table: its name, purpose, the fields it may match, where it may go, what a miss does."""

    name: str
    purpose: str
    match_fields: frozenset[str] = frozenset()
    next_tables: tuple[str, ...] = ()
    # "drop", "controller", "next" (go to the next table) or one of next_tables by name
    miss: str = "drop"

    def __post_init__(self) -> None:
        for f in self.match_fields:
            F.lookup(f)  # unknown field names fail at declaration time
        if self.miss not in ("drop", "controller", "next", *self.next_tables):
            raise PipelineError(f"table {self.name}: miss must be drop, controller, next "
                                "or one of its next tables")


@dataclass
class Pipeline:
    """An ordered list of tables; a table's number is its position plus `base`."""

    tables: tuple[TableSpec, ...]
    base: int = 0
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {}
        for i, t in enumerate(self.tables):
            if t.name in self._index:
                raise PipelineError(f"table {t.name!r} declared twice")
            self._index[t.name] = self.base + i
        for t in self.tables:
            for nxt in t.next_tables:
                if nxt not in self._index:
                    raise PipelineError(f"table {t.name}: next table {nxt!r} is not declared")
            if t.miss == "next" and self.number(t.name) == self.base + len(self.tables) - 1:
                raise PipelineError(f"table {t.name}: miss=next but it is the last table")

    def number(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise PipelineError(f"no table named {name!r}") from None

    def spec(self, table: int | str) -> TableSpec:
        num = self.number(table) if isinstance(table, str) else table
        if not self.base <= num < self.base + len(self.tables):
            raise PipelineError(f"table {num} is not in the pipeline")
        return self.tables[num - self.base]

    def flow(self, table: str, priority: int, match: Match | None = None,
             actions: tuple = (), cookie: int = 0) -> Flow:
        """Build a flow for the named table and check it against the declaration."""
        f = Flow(table=self.number(table), priority=priority, match=match or Match(),
                 actions=tuple(actions), cookie=cookie)
        self.check(f)
        return f

    def check(self, flow: Flow) -> None:
        spec = self.spec(flow.table)
        allowed = spec.match_fields | _PREREQ_FIELDS
        for name in flow.match.names():
            if name not in allowed:
                raise PipelineError(f"table {spec.name} may not match {name}")
        for target in _jumps(flow.actions, flow.table):
            tname = self.spec(target).name
            if tname not in spec.next_tables:
                raise PipelineError(f"table {spec.name} may not go to table {tname}")

    def miss_flows(self) -> list[Flow]:
        """The priority-0 flows that implement each table's declared miss behaviour."""
        out = []
        for t in self.tables:
            num = self.number(t.name)
            if t.miss == "controller":
                acts: tuple = (A.Controller(),)
            elif t.miss == "next":
                acts = (A.GotoTable(num + 1),)
            elif t.miss != "drop":
                acts = (A.GotoTable(self.number(t.miss)),)
            else:
                acts = ()
            out.append(Flow(table=num, priority=0, actions=acts))
        return out


def _jumps(actions: tuple, current: int):
    for a in actions:
        if isinstance(a, A.GotoTable):
            yield a.table
        elif isinstance(a, A.Resubmit):
            yield current if a.table is None else a.table
        elif isinstance(a, A.Ct) and a.table is not None:
            yield a.table
