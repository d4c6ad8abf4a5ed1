"""The NIC tier model: a capacity-limited flow table filled at the profile's insertion rate, with NIC counters and conntrack."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sbnet.offload.placement import Placement, place
from sbnet.offload.profile import Profile


@dataclass(frozen=True)
class Counters:
    """NIC-side counts of one megaflow not yet folded into the switch."""

    packets: int
    bytes: int
    used: float               # last time the NIC forwarded a packet of it (0: never)


@dataclass
class Changes:
    """What advance() did: megaflows now on the NIC, and those taken off it (still cached)."""

    installed: list[int] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)


class NicTier:
    """One NIC's offload table for one switch.  Pure: every call takes `now`; nothing runs by itself.

    Life of a megaflow: offer() places it; if offloadable it waits in a FIFO queue.
    advance(now) installs waiting entries one at a time through a single inserter
    that takes 1/insertion_rate seconds per entry (so entries offered at t are on
    the NIC at t + queue position / rate at the earliest).  While the table is full,
    the busiest waiting entry replaces the least-used installed one if it carried
    strictly more packets (usage decays with a half-life); the evicted entry waits
    again.  remove() forgets a megaflow the switch evicted or revalidated away.

    Counting: record() is given the megaflow id of every packet the switch handled
    and answers which of them the NIC did; those are counted here (per entry
    packets, bytes, used), the others stay the switch's to count.  take_counters()
    hands the NIC counts over and zeroes them, so each packet is counted once.
    """

    def __init__(self, profile: Profile, half_life: float = 1.0) -> None:
        self.profile = profile
        self.capacity = profile.flows if profile.offloads else 0
        self.rate = profile.insertion_rate
        self.half_life = half_life
        self._placements: dict[int, Placement] = {}
        self._offered_at: dict[int, float] = {}
        self._waiting: dict[int, None] = {}          # FIFO (dicts keep insertion order)
        self._installed: set[int] = set()
        self._free_at = 0.0                          # when the inserter can take the next entry
        self._last = None                            # time of the last advance (for decay)
        n = 1024
        self._on = np.zeros(n, dtype=bool)           # on the NIC, by megaflow id
        self._needs_ct = np.zeros(n, dtype=bool)
        self._offered = np.zeros(n, dtype=bool)
        self._score = np.zeros(n, dtype=np.float64)  # decayed packet count (software + NIC)
        self._packets = np.zeros(n, dtype=np.int64)  # NIC counts not yet taken
        self._bytes = np.zeros(n, dtype=np.int64)
        self._used = np.zeros(n, dtype=np.float64)
        self._conns: dict = {}
        self.ct_refused = 0                          # connections the full table turned away
        self.installs = 0
        self.evictions = 0
        self._ct_offload = None

    # -- the dpif's offload tier ----------------------------------------------------
    @property
    def carries(self) -> bool:
        """Whether this NIC ever takes a packet (a profile without offloads never does)."""
        return self.capacity > 0

    def attach(self, conntrack, dpif) -> None:
        """Bind to a dpif's conntrack and flows (the dpif calls this once)."""
        from sbnet.offload.conntrack import CtOffload
        self._ct_offload = CtOffload(self, conntrack, dpif)

    def held(self, mf_ids: np.ndarray, keys: np.ndarray, rows: np.ndarray,
             tcp_flags: np.ndarray, now: float) -> np.ndarray | None:
        """Per packet of a ct megaflow: its connection is in the NIC's conntrack table."""
        return self._ct_offload.held(mf_ids, keys, rows, tcp_flags, now)

    def expire(self) -> None:
        """Drop NIC connections the software conntrack no longer has."""
        self._ct_offload.expire()

    # -- megaflows ----------------------------------------------------------------
    def offer(self, mf, now: float) -> Placement:
        """Place a new megaflow; queue it for insertion if the NIC can run it."""
        p = place(self.profile, mf)
        mf_id = mf.mf_id
        self._grow(mf_id)
        self._placements[mf_id] = p
        if p.tier == "nic" and self.capacity > 0 and mf_id not in self._offered_at:
            self._offered_at[mf_id] = now
            self._waiting[mf_id] = None
            self._offered[mf_id] = True
            self._needs_ct[mf_id] = p.needs_ct
        return p

    def placement(self, mf_id: int) -> Placement | None:
        return self._placements.get(mf_id)

    def installed(self, mf_id: int) -> bool:
        return mf_id in self._installed

    def waiting(self) -> list[int]:
        return list(self._waiting)

    def __len__(self) -> int:
        return len(self._installed)

    def remove(self, mf_id: int) -> Counters:
        """Forget a megaflow (the switch evicted it); returns its NIC counts not yet taken."""
        self._placements.pop(mf_id, None)
        self._offered_at.pop(mf_id, None)
        self._waiting.pop(mf_id, None)
        self._installed.discard(mf_id)
        if mf_id >= self._on.size:
            return Counters(0, 0, 0.0)
        c = Counters(int(self._packets[mf_id]), int(self._bytes[mf_id]), float(self._used[mf_id]))
        for a in (self._on, self._needs_ct, self._offered):
            a[mf_id] = False
        for a in (self._score, self._packets, self._bytes, self._used):
            a[mf_id] = 0
        return c

    def advance(self, now: float) -> Changes:
        """Install waiting entries the inserter has had time for, evicting by traffic when full."""
        ch = Changes()
        if self._last is not None and now > self._last and self.half_life > 0:
            self._score *= 0.5 ** ((now - self._last) / self.half_life)
        self._last = now
        step = 1.0 / self.rate if self.rate > 0 else float("inf")
        while self._waiting:
            if len(self._installed) < self.capacity:
                mf_id = next(iter(self._waiting))
            else:
                mf_id = self._busiest_waiting()
            t = max(self._free_at, self._offered_at[mf_id])
            if t > now:
                break
            if len(self._installed) >= self.capacity:
                victim = self._least_used()
                if not self._score[mf_id] > self._score[victim]:
                    break
                self._installed.discard(victim)
                self._on[victim] = False
                self._waiting[victim] = None
                ch.evicted.append(victim)
                self.evictions += 1
            del self._waiting[mf_id]
            self._installed.add(mf_id)
            self._on[mf_id] = True
            self._free_at = t + step
            ch.installed.append(mf_id)
            self.installs += 1
        if self._free_at < now and (not self._waiting or len(self._installed) >= self.capacity):
            self._free_at = now        # an idle inserter saves no credit for later
        return ch

    def _busiest_waiting(self) -> int:
        ids = np.fromiter(self._waiting, dtype=np.int64, count=len(self._waiting))
        return int(ids[np.argmax(self._score[ids])])    # first (oldest) among equals

    def _least_used(self) -> int:
        ids = np.fromiter(self._installed, dtype=np.int64, count=len(self._installed))
        return int(ids[np.argmin(self._score[ids])])

    # -- packets --------------------------------------------------------------------
    def on_nic(self, mf_ids: np.ndarray, ct_held: np.ndarray | None = None) -> np.ndarray:
        """Which packets (by megaflow id) the NIC handles; ct megaflows need ct_held True."""
        mf_ids = np.asarray(mf_ids, dtype=np.int64)
        self._grow(int(mf_ids.max()) if mf_ids.size else 0)
        on = self._on[mf_ids]
        ct = self._needs_ct[mf_ids]
        if ct.any():
            held = np.zeros(mf_ids.size, dtype=bool) if ct_held is None else np.asarray(ct_held, bool)
            on &= ~ct | held
        return on

    def needs_ct(self, mf_ids: np.ndarray) -> np.ndarray:
        """Per packet (by megaflow id): its megaflow is offloadable (installed or waiting) and
        needs the packet's connection in the NIC conntrack table."""
        mf_ids = np.asarray(mf_ids, dtype=np.int64)
        self._grow(int(mf_ids.max()) if mf_ids.size else 0)
        return self._offered[mf_ids] & self._needs_ct[mf_ids]

    def record(self, mf_ids: np.ndarray, lengths: np.ndarray, now: float,
               ct_held: np.ndarray | None = None) -> np.ndarray:
        """Account a batch: mf_ids and byte lengths per packet (ct_held per packet: its
        connection is in the NIC conntrack table).  Counts the NIC's packets here and
        returns the bool mask of them; the switch counts the rest itself."""
        mf_ids = np.asarray(mf_ids, dtype=np.int64)
        on = self.on_nic(mf_ids, ct_held)
        offered = self._offered[mf_ids]
        if offered.any():
            np.add.at(self._score, mf_ids[offered], 1.0)
        if on.any():
            ids = mf_ids[on]
            np.add.at(self._packets, ids, 1)
            np.add.at(self._bytes, ids, np.asarray(lengths, dtype=np.int64)[on])
            self._used[ids] = now
        return on

    def take_counters(self) -> dict[int, Counters]:
        """NIC counts since the last take, by megaflow id (only those that moved); zeroes them."""
        ids = np.flatnonzero(self._packets)
        out = {int(i): Counters(int(self._packets[i]), int(self._bytes[i]), float(self._used[i]))
               for i in ids}
        self._packets[ids] = 0
        self._bytes[ids] = 0
        return out

    # -- conntrack ------------------------------------------------------------------
    def ct_add(self, conn, now: float) -> bool:
        """Offer an established TCP/UDP connection to the NIC conntrack table; False when full."""
        if conn in self._conns:
            return True
        if len(self._conns) >= self.profile.ct_capacity:
            self.ct_refused += 1
            return False
        self._conns[conn] = now
        return True

    def ct_remove(self, conn) -> None:
        self._conns.pop(conn, None)

    def ct_held(self, conn) -> bool:
        return conn in self._conns

    def ct_held_many(self, conns) -> np.ndarray:
        """ct_held for an array of integer connection ids (e.g. conntrack slots), one bool each."""
        held = np.fromiter(self._conns, dtype=np.int64, count=len(self._conns)) if self._conns else \
            np.zeros(0, dtype=np.int64)
        return np.isin(np.asarray(conns, dtype=np.int64), held)

    def ct_ids(self) -> np.ndarray:
        """Ids of the connections the NIC conntrack table holds (int64)."""
        return np.fromiter(self._conns, dtype=np.int64, count=len(self._conns))

    def ct_count(self) -> int:
        return len(self._conns)

    # -- internals ------------------------------------------------------------------
    def _grow(self, mf_id: int) -> None:
        if mf_id < self._on.size:
            return
        n = max(mf_id + 1, self._on.size * 2)
        for name in ("_on", "_needs_ct", "_offered", "_score", "_packets", "_bytes", "_used"):
            old = getattr(self, name)
            new = np.zeros(n, dtype=old.dtype)
            new[:old.size] = old
            setattr(self, name, new)


def nic_tier(profile: Profile | str) -> NicTier:
    """The NIC tier for a profile, or for a built-in profile's name ("smartnic", ...)."""
    from sbnet.offload.profile import builtin_profiles
    return NicTier(builtin_profiles()[profile] if isinstance(profile, str) else profile)
