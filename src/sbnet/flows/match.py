"""Matches: field values with masks, prerequisite checks, and their key-slot form."""

from __future__ import annotations

from dataclasses import dataclass

from sbnet.flows import fields as F


class MatchError(ValueError):
    """A match that breaks the registry's rules (unknown field, bad mask, missing prerequisite)."""


@dataclass(frozen=True, eq=False)
class Match:
    """An immutable set of field constraints: registry name -> (value, mask or None = exact).

    Two matches are equal when they constrain the same key bits the same way,
    however they are spelled (ip_dscp=10 equals nw_tos=40), as OpenFlow
    identifies flows.
    """

    items: tuple[tuple[str, int, int | None], ...] = ()

    def canonical(self) -> tuple[tuple[int, int, int], ...]:
        try:
            return self.__dict__["_canon"]
        except KeyError:
            canon = tuple(sorted((s, v, m) for s, (v, m) in self.slot_vector().items() if m))
            object.__setattr__(self, "_canon", canon)
            return canon

    def __eq__(self, other) -> bool:
        return isinstance(other, Match) and self.canonical() == other.canonical()

    def __hash__(self) -> int:
        return hash(self.canonical())

    @classmethod
    def of(cls, **kw) -> "Match":
        """Match.of(eth_type=0x800, ip_src=(0x0a000000, 0xff000000)); values or (value, mask)."""
        m = MatchBuilder()
        for name, v in kw.items():
            if isinstance(v, tuple):
                m.set(name, v[0], v[1])
            else:
                m.set(name, v)
        return m.build()

    def get(self, name: str) -> tuple[int, int | None] | None:
        for n, v, m in self.items:
            if n == name:
                return v, m
        return None

    def exact(self, name: str) -> int | None:
        got = self.get(name)
        if got is None or got[1] is not None:
            return None
        return got[0]

    def names(self) -> list[str]:
        return [n for n, _, _ in self.items]

    def slot_vector(self) -> dict[int, tuple[int, int]]:
        """slot index -> (value, mask) with implied bits, for the classifier."""
        out: dict[int, tuple[int, int]] = {}
        for name, value, mask in self.items:
            fld = F.lookup(name)
            full = fld.max if mask is None else mask
            for (si, sm), (_, sv) in zip(fld.slot_masks(full), fld.slot_values(value & full)):
                ov, om = out.get(si, (0, 0))
                out[si] = (ov | sv, om | sm)
            if fld.implied:
                iv, im = fld.implied
                si = F.SLOT_INDEX[fld.slot]
                ov, om = out.get(si, (0, 0))
                out[si] = (ov | iv, om | im)
        return out

    def __str__(self) -> str:
        from sbnet.flows.ofctl import format_match
        return format_match(self)


class MatchBuilder:
    """Accumulates field constraints and checks them against the registry."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[int, int | None]] = {}

    def set(self, name: str, value: int, mask: int | None = None) -> "MatchBuilder":
        try:
            fld = F.lookup(name)
        except KeyError:
            raise MatchError(f"unknown field {name!r}") from None
        if value < 0 or value > fld.max:
            raise MatchError(f"value {value:#x} does not fit {fld.width}-bit field {fld.name}")
        if mask is not None:
            if mask == fld.max:
                mask = None
            elif not fld.maskable:
                raise MatchError(f"field {fld.name} does not support masking")
            elif mask < 0 or mask > fld.max:
                raise MatchError(f"mask {mask:#x} does not fit {fld.width}-bit field {fld.name}")
        if mask is not None:
            value &= mask
        prev = self._items.get(fld.name)
        if prev is not None and prev != (value, mask):
            raise MatchError(f"field {fld.name} given twice with different values")
        self._items[fld.name] = (value, mask)
        return self

    def has(self, name: str) -> bool:
        return F.lookup(name).name in self._items

    def exact(self, name: str) -> int | None:
        got = self._items.get(F.lookup(name).name)
        return None if got is None or got[1] is not None else got[0]

    def build(self) -> Match:
        check_prerequisites(self._items)
        ordered = sorted(self._items.items(), key=lambda kv: _ORDER[kv[0]])
        return Match(tuple((n, v, m) for n, (v, m) in ordered))


_ORDER = {f.name: i for i, f in enumerate(F.all_fields())}


def check_prerequisites(items: dict[str, tuple[int, int | None]]) -> None:
    """Raise MatchError unless every field's prerequisites are matched exactly."""
    for name in items:
        for pre in F.lookup(name).prereqs:
            got = items.get(pre.field)
            if got is None or got[1] is not None or got[0] not in pre.values:
                want = " or ".join(f"{v:#x}" if pre.field == "eth_type" else str(v)
                                   for v in pre.values)
                raise MatchError(f"{name} requires {pre.field}={want}")
