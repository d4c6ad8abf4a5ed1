"""OpenFlow meters: the switch's meter table and its drop-band token buckets, run on batches as OVS's userspace datapath runs them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbnet.flows import actions as A

MAX_METER_ID = 0xFFFF0000     # OFPM13_MAX: larger ids are OpenFlow's virtual meters
MAX_METERS = 1 << 18          # dpif-netdev's MAX_METERS (ovs-ofctl meter-features: max_meter)
UNITS = ("kbps", "pktps")


class MeterError(ValueError):
    """A meter mod, or a flow naming a meter, that OVS refuses; `code` is OpenFlow's error name."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code


@dataclass(frozen=True)
class MeterStats:
    """One meter's counters, as `ovs-ofctl meter-stats` reports them (one drop band)."""

    meter_id: int
    flow_count: int           # installed flows whose actions name the meter
    packet_in_count: int      # packets that reached the meter
    byte_in_count: int
    duration: float           # seconds since the meter was added or last modified
    band_packet_count: int    # packets the drop band dropped
    band_byte_count: int

    def __str__(self) -> str:
        return (f"meter:{self.meter_id} flow_count:{self.flow_count} "
                f"packet_in_count:{self.packet_in_count} byte_in_count:{self.byte_in_count} "
                f"duration:{self.duration:.3f}s bands:\n"
                f"0: packet_count:{self.band_packet_count} byte_count:{self.band_byte_count}")


class _Meter:
    """One meter's configuration and its one drop band's bucket.

    Units as dpif-netdev keeps them: the bucket holds bits (kbps) or 1/1000 packets
    (pktps), so `rate` tokens arrive per millisecond and a full bucket is burst * 1000.
    """

    __slots__ = ("band_bytes", "band_packets", "bytes_in", "capacity", "created", "dp_id", "mod",
                 "packets_in", "rate", "tokens", "used_ms")

    def __init__(self, mod: A.MeterMod, dp_id: int, now: float) -> None:
        self.mod = mod
        self.dp_id = dp_id
        self.created = now
        self.used_ms = _ms(now)
        self.rate = mod.rate
        # No burst given: OVS's userspace datapath uses one second's worth (burst = rate).
        self.capacity = (mod.burst or mod.rate) * 1000
        self.tokens = self.capacity                # a new meter starts with a full bucket
        self.packets_in = self.bytes_in = self.band_packets = self.band_bytes = 0


class MeterTable:
    """The meters of one switch, by OpenFlow id, each with the datapath id megaflows name it by.

    Datapath ids are allocated as ofproto-dpif does (the lowest free id from 0), so
    `meter(N)` in our datapath actions is what `ovs-appctl ofproto/trace` prints.
    """

    def __init__(self) -> None:
        self._meters: dict[int, _Meter] = {}
        self._by_dp: dict[int, _Meter] = {}
        self.dp_ids: dict[int, int] = {}          # OpenFlow id -> datapath id (read by xlate)

    def __contains__(self, meter_id: int) -> bool:
        return meter_id in self._meters

    def __len__(self) -> int:
        return len(self._meters)

    def mods(self) -> list[A.MeterMod]:
        """The meters' configurations by OpenFlow id (what `ovs-ofctl dump-meters` lists)."""
        return [self._meters[i].mod for i in sorted(self._meters)]

    def dp_id(self, meter_id: int) -> int:
        return self._meters[meter_id].dp_id

    # -- meter mods ---------------------------------------------------------------
    def check(self, mod: A.MeterMod, adding: bool | None) -> None:
        """Raise MeterError for a mod OVS would refuse; adding: True add, False modify, None either."""
        mid = mod.meter_id
        if not 1 <= mid <= MAX_METER_ID:
            raise MeterError("OFPMMFC_INVALID_METER", f"meter id {mid} is not 1..{MAX_METER_ID:#x}")
        if mod.unit not in UNITS:
            raise MeterError("OFPMMFC_BAD_FLAGS", f"meter {mid}: unit {mod.unit!r} is not kbps or pktps")
        if mod.rate <= 0:
            raise MeterError("OFPMMFC_BAD_RATE", f"meter {mid}: a drop band needs a rate above 0")
        if mod.burst < 0:
            raise MeterError("OFPMMFC_BAD_BURST", f"meter {mid}: negative burst size")
        if adding is True and mid in self._meters:
            raise MeterError("OFPMMFC_METER_EXISTS", f"meter {mid} already exists")
        if adding is False and mid not in self._meters:
            raise MeterError("OFPMMFC_UNKNOWN_METER", f"meter {mid} does not exist")
        if mid not in self._meters and len(self._meters) >= MAX_METERS:
            raise MeterError("OFPMMFC_OUT_OF_METERS", f"the datapath holds {MAX_METERS} meters")

    def check_refs(self, actions: tuple, where: object, pending: set[int] = frozenset()) -> None:
        """Refuse actions naming a meter that neither exists nor is in `pending` (OVS 3.1
        answers a flow mod naming an unknown meter with OFPMMFC_INVALID_METER); `where`
        (e.g. the flow) is formatted only then."""
        for a in actions:
            if isinstance(a, A.Meter) and a.meter_id not in self._meters and a.meter_id not in pending:
                raise MeterError("OFPMMFC_INVALID_METER", f"{where}: meter {a.meter_id} does not exist")

    def add(self, mod: A.MeterMod, now: float) -> None:
        self.check(mod, adding=True)
        dp_id = next(i for i in range(len(self._by_dp) + 1) if i not in self._by_dp)
        self._put(_Meter(mod, dp_id, now))

    def modify(self, mod: A.MeterMod, now: float) -> None:
        """Replace a meter's band: as in dpif-netdev the bucket starts full and counters
        restart; its duration goes on, as ofproto keeps the meter's creation time."""
        self.check(mod, adding=False)
        old = self._meters[mod.meter_id]
        new = _Meter(mod, old.dp_id, now)
        new.created = old.created
        self._put(new)

    def set(self, mod: A.MeterMod, now: float) -> None:
        """Add the meter, or modify it when its configuration differs (an unchanged one keeps its bucket)."""
        old = self._meters.get(mod.meter_id)
        if old is None:
            self.add(mod, now)
        elif old.mod != mod:
            self.modify(mod, now)

    def delete(self, meter_id: int) -> bool:
        m = self._meters.pop(meter_id, None)
        if m is None:
            return False
        del self._by_dp[m.dp_id]
        del self.dp_ids[meter_id]
        return True

    def _put(self, m: _Meter) -> None:
        self._meters[m.mod.meter_id] = m
        self._by_dp[m.dp_id] = m
        self.dp_ids[m.mod.meter_id] = m.dp_id

    # -- packets ------------------------------------------------------------------
    def run(self, dp_id: int, lengths: np.ndarray, now: float) -> np.ndarray:
        """Meter packets of these byte lengths, in order, at time `now`: the bool mask of
        those that pass.  The drop band counts the others."""
        n = len(lengths)
        m = self._by_dp.get(dp_id)
        if m is None or n == 0:      # a meter deleted under a megaflow lets packets by, as OVS
            return np.ones(n, dtype=bool)
        now_ms = _ms(now)
        if now_ms > m.used_ms:
            m.tokens = min(m.capacity, m.tokens + (now_ms - m.used_ms) * m.rate)
            m.used_ms = now_ms
        lengths = np.asarray(lengths, dtype=np.int64)
        m.packets_in += n
        m.bytes_in += int(lengths.sum())
        cost = np.full(n, 1000, dtype=np.int64) if m.mod.unit == "pktps" else lengths * 8
        keep, m.tokens = _fit(cost, m.tokens)
        dropped = ~keep
        if dropped.any():
            m.band_packets += int(np.count_nonzero(dropped))
            m.band_bytes += int(lengths[dropped].sum())
        return keep

    def stats(self, meter_id: int, flow_count: int, now: float) -> MeterStats:
        m = self._meters[meter_id]
        return MeterStats(meter_id, flow_count, m.packets_in, m.bytes_in, max(0.0, now - m.created),
                          m.band_packets, m.band_bytes)


def _ms(t: float) -> int:
    """Milliseconds of a clock in seconds, as OVS's time_msec() (rounded to the microsecond
    first, so 0.57 s is 570 ms, not 569)."""
    return round(t * 1_000_000) // 1000


def _fit(cost: np.ndarray, tokens: int) -> tuple[np.ndarray, int]:
    """Which packets, taken in order, find `cost` tokens in the bucket: each packet that fits
    takes its tokens, one that does not is dropped and leaves the bucket as it was (so a
    smaller packet after it may still pass, as in dp_netdev_run_meter).  Returns the mask
    and the tokens left.  One cumulative sum per run of passing packets."""
    keep = np.zeros(cost.size, dtype=bool)
    total = int(cost.sum())
    if total <= tokens:
        keep[:] = True
        return keep, tokens - total
    idx = np.arange(cost.size)
    while idx.size:
        spent = np.cumsum(cost[idx])
        k = int(np.searchsorted(spent, tokens, side="right"))    # the prefix that fits
        keep[idx[:k]] = True
        if k:
            tokens -= int(spent[k - 1])
        rest = idx[k + 1:]                     # idx[k] did not fit
        idx = rest[cost[rest] <= tokens]       # the bucket only drains: larger ones never fit
    return keep, tokens
