"""IP address management as pure functions: gateways, pools, overlap checks, picking, MACs."""

from __future__ import annotations

import ipaddress
import random
from typing import Callable, Iterable

from sbnet.model.errors import BadRequest, Conflict, InvalidInput

BASE_MAC = (0xFA, 0x16, 0x3E)  # Neutron's default base_mac, so operators recognise our ports


def network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


def default_gateway(cidr: str) -> str | None:
    net = network(cidr)
    if net.num_addresses < 2:
        return None
    return str(net.network_address + 1)


def _host_bounds(cidr: str) -> tuple[int, int]:
    """First and last assignable address: v4 skips network and broadcast, v6 only the anycast."""
    net = network(cidr)
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4 and net.prefixlen <= 30:
        return first + 1, last - 1
    if net.version == 6 and net.prefixlen <= 126:
        return first + 1, last
    return first, last


def _ip(version: int, n: int) -> str:
    return str(ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n))


def default_pools(cidr: str, gateway: str | None) -> list[dict]:
    net = network(cidr)
    lo, hi = _host_bounds(cidr)
    ranges = [(lo, hi)]
    if gateway is not None and lo <= int(ipaddress.ip_address(gateway)) <= hi:
        g = int(ipaddress.ip_address(gateway))
        ranges = [(a, b) for a, b in ((lo, g - 1), (g + 1, hi)) if a <= b]
    return [{"start": _ip(net.version, a), "end": _ip(net.version, b)} for a, b in ranges]


def validate_pools(cidr: str, pools: list[dict], gateway: str | None) -> list[dict]:
    """Neutron's pool checks: well formed, inside the CIDR, disjoint, clear of the gateway."""
    net = network(cidr)
    spans = []
    for pool in pools:
        if set(pool) != {"start", "end"}:
            raise BadRequest(f"Invalid input for allocation_pools. Reason: '{pool}' must have "
                             "exactly the keys start and end.")
        try:
            start, end = ipaddress.ip_address(pool["start"]), ipaddress.ip_address(pool["end"])
        except (ValueError, TypeError):
            raise BadRequest(f"The allocation pool {pool} is not valid.",
                             type_name="InvalidAllocationPool") from None
        if start.version != net.version or end.version != net.version or start > end:
            raise BadRequest(f"The allocation pool {start}-{end} is not valid.",
                             type_name="InvalidAllocationPool")
        if start not in net or end not in net:
            raise BadRequest(f"The allocation pool {start}-{end} spans beyond the subnet cidr {cidr}.",
                             type_name="OutOfBoundsAllocationPool")
        spans.append((int(start), int(end)))
    spans.sort()
    for (a1, b1), (a2, b2) in zip(spans, spans[1:]):
        if a2 <= b1:
            raise Conflict(f"Found overlapping allocation pools: {_ip(net.version, a1)}-"
                           f"{_ip(net.version, b1)} {_ip(net.version, a2)}-{_ip(net.version, b2)} "
                           f"for subnet {cidr}.", type_name="OverlappingAllocationPools")
    if gateway is not None:
        g = int(ipaddress.ip_address(gateway))
        for a, b in spans:
            if a <= g <= b:
                raise Conflict(f"Gateway ip {gateway} conflicts with allocation pool "
                               f"{_ip(net.version, a)}-{_ip(net.version, b)}.",
                               type_name="GatewayConflictWithAllocationPools")
    return [{"start": _ip(net.version, a), "end": _ip(net.version, b)} for a, b in spans]


def check_gateway(cidr: str, gateway: str) -> None:
    net, gw = network(cidr), ipaddress.ip_address(gateway)
    if gw.version != net.version:
        raise InvalidInput(error_message=f"Gateway IP version {gw.version} inconsistent with "
                                         f"subnet IP version {net.version}")
    if gw in net and net.num_addresses > 2 and (
            gw == net.network_address or (net.version == 4 and gw == net.broadcast_address)):
        raise InvalidInput(error_message="Gateway is not valid on subnet")


def overlapping(cidr: str, others: Iterable[str]) -> str | None:
    net = network(cidr)
    for other in others:
        o = network(other)
        if o.version == net.version and o.overlaps(net):
            return other
    return None


def allocate_prefix(prefixes: Iterable[str], prefixlen: int, used: Iterable[str]) -> str | None:
    """The first prefix of length prefixlen inside one of prefixes that overlaps none of used
    (a subnet pool's allocation); None when the pool has no room."""
    taken = sorted((network(u) for u in used), key=lambda n: (n.version, n.network_address))
    for prefix in sorted((network(p) for p in prefixes), key=lambda n: n.network_address):
        if prefixlen < prefix.prefixlen:
            continue
        step = 1 << (prefix.max_prefixlen - prefixlen)
        start, end = int(prefix.network_address), int(prefix.broadcast_address)
        cand = start
        while cand + step - 1 <= end:
            block = ipaddress.ip_network((cand, prefixlen))
            clash = next((t for t in taken if t.version == block.version and t.overlaps(block)), None)
            if clash is None:
                return str(block)
            # Skip past the clashing allocation, aligned to the block size.
            past = int(clash.broadcast_address) + 1
            cand = max(cand + step, (past + step - 1) // step * step)
    return None


def contains(cidr: str, ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    net = network(cidr)
    return addr.version == net.version and addr in net


def pick_ip(pools: list[dict], is_used: Callable[[str], bool], all_used: Callable[[], set[str]],
            rng: random.Random | None = None, probes: int = 8) -> str | None:
    """A free address of the pools, or None when they are exhausted.

    Like Neutron, a random address is tried first (a few point lookups, whatever the subnet's
    size); only when those probes hit used addresses are the pools scanned for the lowest free one.
    """
    r = rng or random
    spans = [(int(ipaddress.ip_address(p["start"])), int(ipaddress.ip_address(p["end"])))
             for p in pools]
    total = sum(b - a + 1 for a, b in spans)
    if total == 0:
        return None
    version = ipaddress.ip_address(pools[0]["start"]).version
    for _ in range(probes):
        n = r.randrange(total)
        for a, b in spans:
            if n <= b - a:
                cand = _ip(version, a + n)
                if not is_used(cand):
                    return cand
                break
            n -= b - a + 1
    used = {int(ipaddress.ip_address(u)) for u in all_used()}
    for a, b in spans:
        # At most len(used) + 1 steps per pool: every skipped address is a used one.
        n = a
        while n <= b:
            if n not in used:
                return _ip(version, n)
            n += 1
    return None


def eui64(cidr: str, mac: str) -> str:
    """The SLAAC address a host with this MAC takes in an IPv6 /64."""
    octets = [int(x, 16) for x in mac.split(":")]
    octets[0] ^= 0x02
    iid = octets[:3] + [0xFF, 0xFE] + octets[3:]
    suffix = int.from_bytes(bytes(iid), "big")
    return str(ipaddress.IPv6Address(int(network(cidr).network_address) | suffix))


def random_mac(rng: random.Random | None = None) -> str:
    r = rng or random
    return ":".join(f"{b:02x}" for b in (*BASE_MAC, r.randrange(256), r.randrange(256), r.randrange(256)))
