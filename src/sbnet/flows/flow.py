"""One OpenFlow flow: table, priority, match, actions, cookie and timeouts."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbnet.flows.match import Match

DEFAULT_PRIORITY = 32768


@dataclass(frozen=True)
class Flow:
    table: int = 0
    priority: int = DEFAULT_PRIORITY
    match: Match = field(default_factory=Match)
    actions: tuple = ()
    cookie: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0

    @property
    def key(self) -> tuple:
        """Identity in a table, as OpenFlow defines it: table, priority and match."""
        return (self.table, self.priority, self.match)

    def __str__(self) -> str:
        from sbnet.flows.ofctl import format_flow
        return format_flow(self)
