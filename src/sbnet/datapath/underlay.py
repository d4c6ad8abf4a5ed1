"""The underlay's routing and neighbour view that tunnel ports send through (IPv4 and IPv6)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

_M64 = (1 << 64) - 1


def ip_int(addr: str | int | ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    """(family 4 or 6, integer value) of an address given as text, an ipaddress object or
    an int (an int below 2**32 is IPv4)."""
    if isinstance(addr, int):
        return (4 if addr < 1 << 32 else 6), addr
    a = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    return a.version, int(a)


def mac_int(mac: str | int | bytes) -> int:
    if isinstance(mac, int):
        return mac
    if isinstance(mac, bytes):
        return int.from_bytes(mac, "big")
    return int(mac.replace(":", "").replace("-", ""), 16)


def split6(value: int) -> tuple[int, int]:
    """An IPv6 address as the (hi, lo) 64-bit halves the flow key keeps."""
    return value >> 64, value & _M64


@dataclass(frozen=True)
class UnderlayPort:
    """A port of the switch that faces the underlay network."""

    ofport: int
    mac: int                 # source MAC of frames sent out of this port
    mtu: int = 1500          # largest IP packet (without the Ethernet header) it carries


@dataclass(frozen=True)
class Route:
    family: int              # 4 or 6
    network: int             # prefix value, host bits zero
    plen: int
    gateway: int             # next hop; 0 means on-link (the destination is the next hop)
    ofport: int
    src: int                 # source address tunnels use over this route (0: none)


@dataclass
class Resolved:
    """Where each destination of a batch goes; ok False where there is no route or neighbour."""

    ok: np.ndarray           # bool
    reason: np.ndarray       # 0 ok, 1 no route, 2 no neighbour (see RESOLVE_REASONS)
    ofport: np.ndarray       # uint32 underlay port
    dst_mac: np.ndarray      # uint64 next hop's MAC
    src_mac: np.ndarray      # uint64 the port's MAC
    src_hi: np.ndarray       # uint64 route source address (IPv4: in src_lo, hi 0)
    src_lo: np.ndarray
    mtu: np.ndarray          # int64


RESOLVE_REASONS = ("ok", "no_route", "no_neighbour")


class Underlay:
    """Routes (longest-prefix match), neighbours (IP -> MAC), local addresses, port MTUs.

    IPv4 addresses are ints below 2**32; IPv6 addresses are 128-bit ints, or in batches
    (hi, lo) uint64 arrays as the flow key keeps them.  Lookups are vectorized: one pass
    per distinct prefix length present (at most 33 for IPv4, 129 for IPv6), each a sorted
    search over the batch.
    """

    def __init__(self) -> None:
        self.ports: dict[int, UnderlayPort] = {}
        self.routes: list[Route] = []
        self.neighbours: dict[tuple[int, int], int] = {}
        self.local: set[tuple[int, int]] = set()
        self._tables: dict[int, list] | None = None
        self.generation = 0      # bumped by every change: caches of lookups key on it

    # --- configuration ------------------------------------------------------------------

    def add_port(self, ofport: int, mac: str | int | bytes, mtu: int = 1500) -> None:
        self.ports[ofport] = UnderlayPort(ofport, mac_int(mac), mtu)
        self._changed()

    def add_local(self, addr) -> None:
        """An address of this host: tunnels terminate here and may send from it."""
        self.local.add(ip_int(addr))
        self._changed()

    def add_route(self, prefix: str, ofport: int, gateway=None, src=None) -> None:
        """`prefix` like "10.0.0.0/8" or "fd00::/64"; `gateway` None for on-link."""
        net = ipaddress.ip_network(prefix, strict=False)
        if ofport not in self.ports:
            raise ValueError(f"route {prefix} via unknown underlay port {ofport}")
        gw = 0 if gateway is None else ip_int(gateway)[1]
        s = 0 if src is None else ip_int(src)[1]
        self.routes.append(Route(net.version, int(net.network_address), net.prefixlen,
                                 gw, ofport, s))
        self._changed()

    def add_neighbour(self, addr, mac: str | int | bytes) -> None:
        """Learn or change a neighbour; the same answer again (a restarted agent's ARP)
        changes nothing, so the tunnel caches built on it stay."""
        ip, mac = ip_int(addr), mac_int(mac)
        if self.neighbours.get(ip) != mac:
            self.neighbours[ip] = mac
            self._changed()

    def remove_neighbour(self, addr) -> None:
        """Forget a neighbour (its entry expired): tunnels to it drop as no_neighbour."""
        if self.neighbours.pop(ip_int(addr), None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._tables = None
        self.generation += 1

    # --- lookups ------------------------------------------------------------------------

    def is_local(self, family: int, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Per row: is the address (IPv4 in lo, hi 0) one of ours?"""
        t = self._compiled()[family]
        return _member(t["local"], hi, lo, family)

    def resolve(self, family: int, hi: np.ndarray, lo: np.ndarray) -> Resolved:
        """Route and neighbour lookup for a batch of destinations of one family.

        IPv4 destinations are given in `lo` (hi zeros).  Route selection is the longest
        matching prefix; among equal prefixes the one added first wins.
        """
        hi = np.asarray(hi, dtype=np.uint64)
        lo = np.asarray(lo, dtype=np.uint64)
        n = len(lo)
        t = self._compiled()[family]
        route = np.full(n, -1, dtype=np.int64)
        for plen, (mhi, mlo), keys, idx in t["lpm"]:
            todo = np.flatnonzero(route < 0)
            if len(todo) == 0:
                break
            k = _key(hi[todo] & mhi, lo[todo] & mlo, family)
            pos = np.searchsorted(keys, k)
            pos = np.minimum(pos, len(keys) - 1)
            hit = keys[pos] == k
            route[todo[hit]] = idx[pos[hit]]
        routed = route >= 0
        r = np.where(routed, route, 0)
        rt = t["rt"]
        gw_hi, gw_lo = rt["gw_hi"][r], rt["gw_lo"][r]
        onlink = (gw_hi == 0) & (gw_lo == 0)
        nh_hi = np.where(onlink, hi, gw_hi)
        nh_lo = np.where(onlink, lo, gw_lo)
        nkeys, nmacs = t["neigh"]
        k = _key(nh_hi, nh_lo, family)
        if len(nkeys):
            pos = np.minimum(np.searchsorted(nkeys, k), len(nkeys) - 1)
            known = nkeys[pos] == k
            dst_mac = np.where(known, nmacs[pos], 0).astype(np.uint64)
        else:
            known = np.zeros(n, dtype=bool)
            dst_mac = np.zeros(n, dtype=np.uint64)
        ok = routed & known
        reason = np.where(~routed, 1, np.where(~known, 2, 0)).astype(np.int8)
        return Resolved(ok, reason, rt["port"][r].astype(np.uint32), dst_mac,
                        rt["mac"][r], rt["src_hi"][r], rt["src_lo"][r], rt["mtu"][r])

    # --- compiled form ------------------------------------------------------------------

    def _compiled(self) -> dict[int, dict]:
        if self._tables is None:
            self._tables = {4: self._compile(4), 6: self._compile(6)}
        return self._tables

    def _compile(self, family: int) -> dict:
        bits = 32 if family == 4 else 128
        routes = [r for r in self.routes if r.family == family]
        if not routes:   # one never-matching placeholder keeps the arrays non-empty
            routes_arr = [Route(family, 0, 0, 0, 0, 0)]
        else:
            routes_arr = routes
        rt = {
            "gw_hi": np.array([r.gateway >> 64 for r in routes_arr], np.uint64),
            "gw_lo": np.array([r.gateway & _M64 for r in routes_arr], np.uint64),
            "port": np.array([r.ofport for r in routes_arr], np.uint32),
            "mac": np.array([self.ports[r.ofport].mac if r.ofport in self.ports else 0
                             for r in routes_arr], np.uint64),
            "mtu": np.array([self.ports[r.ofport].mtu if r.ofport in self.ports else 0
                             for r in routes_arr], np.int64),
            "src_hi": np.array([r.src >> 64 for r in routes_arr], np.uint64),
            "src_lo": np.array([r.src & _M64 for r in routes_arr], np.uint64),
        }
        lpm = []
        for plen in sorted({r.plen for r in routes}, reverse=True):
            mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
            seen: dict[int, int] = {}
            for i, r in enumerate(routes):
                if r.plen == plen:
                    seen.setdefault(r.network & mask, i)
            nets = sorted(seen)
            keys = _key(np.array([v >> 64 for v in nets], np.uint64),
                        np.array([v & _M64 for v in nets], np.uint64), family)
            idx = np.array([seen[v] for v in nets], np.int64)
            lpm.append((plen, (np.uint64(mask >> 64), np.uint64(mask & _M64)), keys, idx))
        neigh = sorted((v, m) for (f, v), m in self.neighbours.items() if f == family)
        nkeys = _key(np.array([v >> 64 for v, _ in neigh], np.uint64),
                     np.array([v & _M64 for v, _ in neigh], np.uint64), family)
        nmacs = np.array([m for _, m in neigh], np.uint64)
        local = sorted(v for f, v in self.local if f == family)
        lkeys = _key(np.array([v >> 64 for v in local], np.uint64),
                     np.array([v & _M64 for v in local], np.uint64), family)
        return {"rt": rt, "lpm": lpm, "neigh": (nkeys, nmacs), "local": lkeys}


def _key(hi: np.ndarray, lo: np.ndarray, family: int = 6) -> np.ndarray:
    """Sortable, comparable keys: IPv4 as plain uint64, IPv6 as a structured (hi, lo) array."""
    if family == 4:
        return np.asarray(lo, dtype=np.uint64)
    k = np.empty(len(lo), dtype=[("hi", np.uint64), ("lo", np.uint64)])
    k["hi"] = hi
    k["lo"] = lo
    return k


def _member(keys: np.ndarray, hi: np.ndarray, lo: np.ndarray, family: int) -> np.ndarray:
    k = _key(np.asarray(hi, np.uint64), np.asarray(lo, np.uint64), family)
    if len(keys) == 0:
        return np.zeros(len(k), dtype=bool)
    pos = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
    return keys[pos] == k
