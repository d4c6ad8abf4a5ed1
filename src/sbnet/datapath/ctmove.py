"""Connection-state handover for live migration: a port's conntrack entries exported from one switch and imported into another."""

from __future__ import annotations

import ipaddress
from typing import Iterable

import numpy as np

from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.conntrack_table import _W, C_NAT, C_PROTO, C_TUP, C_V6, C_ZONE
from sbnet.flows.fields import IP_TCP

# An entry: [seconds left before it expires, the connection's row (_W uint64 words)].
ENTRY_LEN = 1 + _W


def addresses(ips: Iterable[str]) -> set[int]:
    """Addresses as the connection table holds them (IPv4 and IPv6 alike, as integers)."""
    return {int(ipaddress.ip_address(ip)) for ip in ips}


def _matching(ct, zones: set[int], addrs: set[int]) -> list[int]:
    tab = ct.table
    if not zones or not addrs:
        return []
    slots = np.flatnonzero(tab.live & np.isin(tab.zone, np.array(sorted(zones), np.uint64)))
    out = []
    for i in slots.tolist():
        t = tab.tuple(i, 0)
        r = tab.tuple(i, 1)
        if {t[3], t[4], r[3], r[4]} & addrs:
            out.append(i)
    return out


def export(ct, zones: Iterable[int], addrs: Iterable[int], now: float,
           remove: bool = False, keep: Iterable[int] = ()) -> list[list]:
    """The live connections of `zones` with an address in `addrs` on either side (NAT
    entries included: their reply tuple holds the translated address), as entries.
    remove: delete them here afterwards (the port left), except those whose other end is
    an address in `keep` (a port still on this host shares the entry)."""
    zones, addrs, keep = set(zones), set(addrs), set(keep)
    tab = ct.table
    out, gone = [], []
    for i in _matching(ct, zones, addrs):
        out.append([max(0.0, float(tab.exp[i]) - now), *tab.mem[i].tolist()])
        t, r = tab.tuple(i, 0), tab.tuple(i, 1)
        if remove and not ({t[3], t[4], r[3], r[4]} - addrs) & keep:
            gone.append(i)
    if gone:
        tab.delete_many(np.array(gone, dtype=np.int64))
    return out


def tuples(entry: list) -> tuple[tuple, tuple]:
    """An entry's original and reply tuples: (zone, proto, v6, src, dst, sport, dport)."""
    if len(entry) != ENTRY_LEN:
        raise ValueError(f"a conntrack entry has {ENTRY_LEN} numbers, not {len(entry)}")
    return _tuples(np.array(entry[1:], dtype=np.uint64))


def _tuples(row: np.ndarray) -> tuple[tuple, tuple]:
    zone, proto, v6 = int(row[C_ZONE]), int(row[C_PROTO]), int(row[C_V6])
    w = row[C_TUP:C_TUP + 12].tolist()
    fwd = (zone, proto, v6, w[0] << 64 | w[1], w[2] << 64 | w[3], w[4], w[5])
    rev = (zone, proto, v6, w[6] << 64 | w[7], w[8] << 64 | w[9], w[10], w[11])
    return fwd, rev


def import_(ct, entries: Iterable[list], now: float) -> list[tuple]:
    """Install exported connections (replacing this switch's own entry for the same
    tuples); returns their original tuples.  TCP peers restart their sequence tracking
    from the next segment each way (as Linux picks up a connection mid-stream): the windows
    the source saw are stale by the time the VM runs here (connections past ESTABLISHED
    keep them), and each end's largest window is at least 65,535 (unscaled), so the peer
    may run that far ahead before this host sees the VM answer; a liberal conntrack (one
    that accepts segments outside the windows) keeps them ESTABLISHED with the windows
    unknown instead.  NAT, mark, label and the timeout left stay."""
    tab = ct.table
    done = []
    for e in entries:
        if len(e) != ENTRY_LEN:
            raise ValueError(f"a conntrack entry has {ENTRY_LEN} numbers, not {len(e)}")
        left = float(e[0])
        if left <= 0:
            continue
        row = np.array(e[1:], dtype=np.uint64)
        fwd, rev = _tuples(row)
        for t in (fwd, rev):
            i, _ = tab.lookup(t, float("-inf"))
            if i >= 0:
                tab.delete(i)
        i = tab.create(fwd, rev, int(row[C_NAT]))
        tab.mem[i] = row
        tab.exp[i] = now + left
        if fwd[1] == IP_TCP and (tab.tcp[i, :, 4] == T.ESTABLISHED).all():
            for d in (0, 1):
                _, _, max_win, wscale, _ = tab.tcp[i, d].tolist()
                if ct.tcp_liberal:
                    # Windows unknown, accepted meanwhile: still established, so a datapath
                    # that runs established connections outside it may take this one now.
                    tab.tcp[i, d] = (0, 0, 0, T.WSCALE_UNKNOWN, T.ESTABLISHED)
                else:
                    # The largest unscaled window: the other end may run that far ahead of
                    # what this host has seen acknowledged (while the VM still runs at the
                    # source).
                    tab.tcp[i, d] = (0, 1, max(max_win, 0xFFFF), wscale, T.CLOSED)
        done.append(fwd)
    return done


def forget(ct, tuples: Iterable[tuple]) -> int:
    """Delete the connections owning these original tuples (an import that did not happen)."""
    n = 0
    for t in tuples:
        i, _ = ct.table.lookup(tuple(t), float("-inf"))
        if i >= 0:
            ct.table.delete(i)
            n += 1
    return n

