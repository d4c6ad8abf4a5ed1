"""Flow records metered from megaflow counters: timeouts, cap with eviction, exact per-record deltas."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

import numpy as np

from sbnet.datapath import odp
from sbnet.datapath.parse import ERROR_REASONS
from sbnet.flows import fields as F

S = F.SLOT_INDEX
ACTIVE_TIMEOUT = 60.0      # seconds, as common NetFlow/IPFIX exporters (Cisco, nProbe, OVS)
IDLE_TIMEOUT = 15.0
MAX_RECORDS = 100_000

# Why a record was exported: IANA flowEndReason values (IE 136).
END_IDLE, END_ACTIVE, END_OF_FLOW, END_FORCED, END_RESOURCES = 1, 2, 3, 4, 5
END_NAMES = {END_IDLE: "idle timeout", END_ACTIVE: "active timeout",
             END_OF_FLOW: "end of flow", END_FORCED: "forced end",
             END_RESOURCES: "lack of resources"}

TOO_DEEP = "recirculation too deep"      # the switch's drop reason with no megaflow of its own
TIERS = ("software", "nic", "slowpath")

# The 5-tuple slots a record names, and the slots that carry it per family.
FIVE_TUPLE_V4 = ("nw_src", "nw_dst", "nw_proto", "tp_src", "tp_dst")
FIVE_TUPLE_V6 = ("ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi", "ipv6_dst_lo", "nw_proto",
                 "tp_src", "tp_dst")


@dataclass(frozen=True)
class PortInfo:
    """What the control plane knows about a datapath port: its Neutron port and project."""

    neutron_port: str | None = None
    project: str | None = None


@dataclass
class FlowRecord:
    """One exported (or live) flow record; counts are deltas since the previous record of the flow."""

    host: str
    in_port: int
    out_port: int                 # first output port of the actions, 0 when dropped
    direction: str                # "ingress": the switch meters packets as they enter in_port
    eth_type: int
    src: str                      # address text, "" when not IP
    dst: str
    src_prefix: int               # mask length the megaflow matched (32/128 = exact)
    dst_prefix: int
    proto: int
    sport: int
    dport: int
    vlan: int | None
    vni: int | None
    project: str | None
    neutron_port: str | None
    packets: int
    bytes: int
    first: float                  # seconds on the meter's clock
    last: float
    tcp_flags: int
    tier: str                     # "software", "nic" or "slowpath"
    reason: str                   # "forwarded" or why packets were dropped
    cookie: int                   # cookie of the last rule with a nonzero cookie (security-group rule)
    cookies: tuple[int, ...]
    exact: bool                   # True when the megaflow is exact on the 5-tuple
    wildcards: tuple[str, ...]    # 5-tuple fields the megaflow does not match exactly
    end_reason: int = END_FORCED
    megaflow: int = -1            # megaflow id, -1 for malformed-packet records
    src_int: int = 0              # the addresses as integers (what IPFIX carries)
    dst_int: int = 0

    @property
    def dropped(self) -> bool:
        return self.reason != "forwarded"

    def five_tuple(self) -> tuple:
        return (self.src, self.dst, self.proto, self.sport, self.dport)


@dataclass
class _Static:
    """Fields of a record fixed for the megaflow's lifetime (computed once per megaflow)."""

    in_port: int
    out_port: int
    eth_type: int
    src: str
    dst: str
    src_int: int
    dst_int: int
    src_prefix: int
    dst_prefix: int
    proto: int
    sport: int
    dport: int
    vlan: int | None
    vni: int | None
    tcp_flags: int
    tier: str
    reason: str
    cookie: int
    cookies: tuple[int, ...]
    exact: bool
    wildcards: tuple[str, ...]


def _v4(a: int) -> str:
    return f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"


_WIDTH = {"nw_src": 0xFFFFFFFF, "nw_dst": 0xFFFFFFFF, "nw_proto": 0xFF,
          "tp_src": 0xFFFF, "tp_dst": 0xFFFF}


@functools.lru_cache(maxsize=4096)
def _mask_info(slots: tuple, mask: tuple, eth_type: int, proto: int):
    """Prefix lengths and wildcarded 5-tuple fields of one megaflow mask (shared by its subtable)."""
    mk = dict(zip(slots, mask))

    def m(name: str) -> int:
        return mk.get(S[name], 0)

    if eth_type == F.ETH_IP:
        sp, dp = m("nw_src").bit_count(), m("nw_dst").bit_count()
        names = FIVE_TUPLE_V4
    elif eth_type == F.ETH_IPV6:
        sp = m("ipv6_src_hi").bit_count() + m("ipv6_src_lo").bit_count()
        dp = m("ipv6_dst_hi").bit_count() + m("ipv6_dst_lo").bit_count()
        names = FIVE_TUPLE_V6
    else:
        return 0, 0, (), False
    wild = [n for n in names if not n.startswith("ipv6_") and m(n) & _WIDTH[n] != _WIDTH[n]]
    if eth_type == F.ETH_IPV6:
        wild += ["ipv6_src"] * (sp < 128) + ["ipv6_dst"] * (dp < 128)
    # tp_src/tp_dst carry ICMP type/code for ICMP, as in OVS; a record's ports are 0 then.
    if proto not in (F.IP_TCP, F.IP_UDP, F.IP_SCTP):
        wild = [w for w in wild if w not in ("tp_src", "tp_dst")]
    return sp, dp, tuple(wild), not wild


@functools.lru_cache(maxsize=4096)
def _action_info(actions: tuple, tier: str) -> tuple[int, str]:
    """First output port and tier: megaflows sending to the controller are slow-path work."""
    out = next((a.port for a in actions if isinstance(a, odp.Output)
                and a.port != F.OFPP_CONTROLLER), 0)
    if any(isinstance(a, odp.Userspace) or (isinstance(a, odp.Output)
           and a.port == F.OFPP_CONTROLLER) for a in actions):
        tier = "slowpath"
    return out, tier


def _static_of(mf) -> _Static:
    key = mf.key
    mask = dict(zip(mf.slots, mf.mask))

    def val(name: str) -> int:
        s = S[name]
        return key[s] & mask.get(s, 0)

    eth_type = val("eth_type")
    src = dst = ""
    src_int = dst_int = 0
    ip = eth_type in (F.ETH_IP, F.ETH_IPV6)
    if eth_type == F.ETH_IP:
        src_int, dst_int = val("nw_src"), val("nw_dst")
        src, dst = _v4(src_int), _v4(dst_int)
    elif eth_type == F.ETH_IPV6:
        src_int = val("ipv6_src_hi") << 64 | val("ipv6_src_lo")
        dst_int = val("ipv6_dst_hi") << 64 | val("ipv6_dst_lo")
        src, dst = str(ipaddress.IPv6Address(src_int)), str(ipaddress.IPv6Address(dst_int))
    proto = val("nw_proto") if ip else 0
    sp, dp, wild, exact = _mask_info(mf.slots, mf.mask, eth_type, proto)
    ports = proto in (F.IP_TCP, F.IP_UDP, F.IP_SCTP)
    tci = val("vlan_tci")
    try:
        out, tier = _action_info(mf.actions, mf.tier)
    except TypeError:                       # unhashable actions: no memo
        out, tier = _action_info.__wrapped__(mf.actions, mf.tier)
    cookies = tuple(r.flow.cookie for r in mf.rules)
    cookie = next((c for c in reversed(cookies) if c), 0)
    tcp_mask = mask.get(S["tcp_flags"], 0)
    return _Static(
        in_port=key[S["in_port"]], out_port=out, eth_type=eth_type, src=src, dst=dst,
        src_int=src_int, dst_int=dst_int,
        src_prefix=sp, dst_prefix=dp, proto=proto,
        sport=val("tp_src") if ports else 0, dport=val("tp_dst") if ports else 0,
        vlan=(tci & 0xFFF) if tci & F.VLAN_CFI else None,
        vni=val("tun_id") if mask.get(S["tun_id"]) else None,
        # Without per-megaflow flag accumulation in the datapath, the flags known are
        # those of the packet that created the megaflow (exact when the mask has them).
        tcp_flags=(key[S["tcp_flags"]] if proto == F.IP_TCP else 0) if not tcp_mask
        else val("tcp_flags"),
        tier=tier, reason=mf.reason, cookie=cookie, cookies=cookies,
        exact=exact, wildcards=wild)


class FlowMeter:
    """Turns a switch's megaflow counters into flow records, as a NetFlow cache would.

    Nothing here runs per packet: `poll(now)` reads the cache's counter arrays
    (vectorized over megaflows) and returns the records that expired, by idle
    or active timeout, by the megaflow leaving the cache, or by the record cap.
    Every packet the switch processed lands in exactly one exported record:
    megaflow deltas, plus one record per malformed-packet reason.
    """

    def __init__(self, switch, host: str = "", active_timeout: float = ACTIVE_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, max_records: int = MAX_RECORDS,
                 ports: dict[int, PortInfo] | None = None, all_passes: bool = False) -> None:
        self.sw = switch
        # With conntrack a packet crosses one megaflow per pass (recirculation) and
        # ends in exactly one that does not recirculate: records come from those, so
        # each packet counts once, with its final verdict.
        self.all_passes = all_passes
        self.host = host
        self.active_timeout = active_timeout
        self.idle_timeout = idle_timeout
        self.max_records = max_records
        self.ports = ports or {}
        self._mfs: dict[int, object] = {}          # megaflows seen and not yet gone
        self._static: dict[int, _Static] = {}
        self._final: dict[int, tuple] = {}           # from on_evict: (mf, packets, bytes, used)
        self.lost_packets = 0                        # the same without the hook: counted, no record
        self._ids = np.zeros(0, dtype=np.int64)      # ids in self._mfs, ascending
        # Newest megaflow id looked at; megaflows cached now are metered from their start,
        # ids below the cache's next id that are gone already predate the meter.
        nxt = switch.cache.next_id
        self._last_id = min(switch.cache.flows, default=nxt if nxt is not None else 0) - 1
        self._start_id = nxt if nxt is not None else float("inf")
        self._handled: set[int] = set()              # orphans already recorded
        self._too_deep = 0
        n = 1024
        self._base_pk = np.zeros(n, dtype=np.int64)   # counts already exported, by megaflow id
        self._base_by = np.zeros(n, dtype=np.int64)
        self._first = np.zeros(n, dtype=np.float64)   # first seen of the live record
        self._live = np.zeros(n, dtype=bool)          # a record is open for the megaflow
        self._segments = np.zeros(n, dtype=np.int64)  # records already exported, by megaflow id
        self._parse_base = np.zeros(len(ERROR_REASONS), dtype=np.int64)
        # Counters (exported as metrics).
        self.records_exported = 0
        self.packets_exported = 0
        self.bytes_exported = 0
        self.evicted_for_cap = 0
        self.by_end_reason: dict[int, int] = {}
        # The switch calls these with each megaflow it evicts and its final counters.
        # Without the hook the meter still works: megaflow ids are never reused, so
        # the cache's counter arrays keep an evicted megaflow's final counts.
        hooks = getattr(switch, "on_evict", None)
        if isinstance(hooks, list):
            hooks.append(self.on_evict)
        self.exported_by: dict[tuple[int, str, str], list[int]] = {}  # (port, tier, reason) -> [pk, by]

    # -- the switch hook --------------------------------------------------------
    def on_evict(self, mf, packets: int, nbytes: int) -> None:
        """Called by the switch as it evicts a megaflow, with its final counters."""
        self._final[mf.mf_id] = (mf, packets, nbytes, float(self.sw.cache.used[mf.mf_id]))

    # -- polling ------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        if n <= self._base_pk.size:
            return
        size = max(n, self._base_pk.size * 2)
        for name in ("_base_pk", "_base_by", "_first", "_live", "_segments"):
            old = getattr(self, name)
            new = np.zeros(size, dtype=old.dtype)
            new[:old.size] = old
            setattr(self, name, new)

    def _track_new(self) -> None:
        c = self.sw.cache
        self._grow(c.packets.size)
        # Megaflow ids only grow and the cache's dict keeps insertion order, so the
        # megaflows made since the last look are at its end: no scan of the rest.
        new = []
        for i in reversed(c.flows):
            if i <= self._last_id:
                break
            new.append(i)
        if not new:
            return
        span = new[0] - self._last_id
        if span != len(new):
            # Ids skipped: megaflows made and evicted between two looks.
            # With the eviction hook poll() records them; without it their packets
            # are counted here (the switch dropped the megaflow object with its key).
            for g in sorted(set(range(self._last_id + 1, new[0] + 1)) - set(new)):
                if g in self._handled:
                    self._handled.discard(g)
                elif g not in self._final and g >= self._start_id:
                    self.lost_packets += int(c.packets[g])
        self._last_id = new[0]
        keep = []
        for i in reversed(new):
            mf = c.flows[i]
            if not self.all_passes and any(isinstance(a, odp.Recirc) for a in mf.actions):
                continue
            self._mfs[i] = mf
            keep.append(i)
        k = np.array(keep, dtype=np.int64)
        self._base_pk[k] = self._base_by[k] = 0
        self._live[k] = False
        self._segments[k] = 0
        self._ids = np.concatenate([self._ids, k])

    def poll(self, now: float) -> list[FlowRecord]:
        """Records that expired by `now`: megaflows gone, idle, past the active timeout, over the cap."""
        c = self.sw.cache
        self._track_new()
        out: list[FlowRecord] = []
        # Megaflows that left the cache (the cache marks them with action -1): their
        # final counts, then forget them.
        gone = c.action_of[self._ids] < 0
        for i in self._ids[gone].tolist():
            mf = self._mfs.pop(i)
            fin = self._final.pop(i, None)
            # Without the hook: ids are never reused, so the arrays still hold the final counts.
            pk, by, used = fin[1:] if fin else (int(c.packets[i]), int(c.bytes[i]), float(c.used[i]))
            end = END_IDLE if now - used >= self.idle_timeout else END_OF_FLOW
            rec = self._record(mf, pk, by, used, end)
            if rec is not None:
                out.append(rec)
            self._static.pop(i, None)
        # Evicted before any poll saw them (only the hook tells of these).
        for i, (mf, pk, by, used) in self._final.items():
            if i > self._last_id:
                self._handled.add(i)             # so the next look does not count it lost
            if pk and (self.all_passes or not any(isinstance(a, odp.Recirc) for a in mf.actions)):
                end = END_IDLE if now - used >= self.idle_timeout else END_OF_FLOW
                out.append(self._make(mf, pk, by, mf.created, used, end))
                self._static.pop(i, None)
        self._final.clear()
        if gone.any():
            self._ids = self._ids[~gone]
        ids = self._ids
        pk = c.packets[ids]
        used = c.used[ids]
        fresh = (pk > self._base_pk[ids]) & ~self._live[ids]
        if fresh.any():
            fi = ids[fresh]
            # A megaflow's first record starts at its creation (the first packet);
            # a later record starts at the first poll that saw its new packets.
            created = np.fromiter((self._mfs[int(i)].created for i in fi), dtype=np.float64,
                                  count=fi.size)
            self._first[fi] = np.where(self._segments[fi] == 0, created, used[fresh])
            self._live[fi] = True
        live = self._live[ids]
        idle = live & (now - used >= self.idle_timeout)
        active = live & ~idle & (now - self._first[ids] >= self.active_timeout)
        for sel, end in ((idle, END_IDLE), (active, END_ACTIVE)):
            if sel.any():
                out.extend(self._cut(ids[sel], end))
        n_live = int(np.count_nonzero(self._live[ids]))
        if n_live > self.max_records:
            # Over the cap: export and close the records least recently used.
            cand = ids[self._live[ids]]
            order = np.argsort(c.used[cand], kind="stable")[:n_live - self.max_records]
            out.extend(self._cut(cand[order], END_RESOURCES))
            self.evicted_for_cap += order.size
        out.extend(self._malformed(now))
        for r in out:
            self._account(r)
        return out

    def flush(self, now: float) -> list[FlowRecord]:
        """Export every open record (forced end), e.g. at shutdown; counters stay exact."""
        out = self.poll(now)
        c = self.sw.cache
        ids = self._ids
        rest = self._cut(ids[c.packets[ids] > self._base_pk[ids]], END_FORCED)
        for r in rest:
            self._account(r)
        return out + rest

    def live(self, now: float) -> list[FlowRecord]:
        """Open records with their counts so far (not exported, nothing changes)."""
        self._track_new()
        c = self.sw.cache
        out = []
        for i, mf in self._mfs.items():
            pk = int(c.packets[i]) - int(self._base_pk[i])
            if pk > 0:
                first = self._first[i] if self._live[i] else mf.created
                out.append(self._make(mf, pk, int(c.bytes[i]) - int(self._base_by[i]),
                                      float(first), float(c.used[i]), END_FORCED))
        return out

    # -- helpers ----------------------------------------------------------------
    def _cut(self, ids: np.ndarray, end: int) -> list[FlowRecord]:
        """Close the open records of megaflows `ids`: counts since the last cut, bases moved on."""
        c = self.sw.cache
        pk, by, used = c.packets[ids], c.bytes[ids], c.used[ids]
        # Not yet seen live by a poll: the first record starts at creation, later ones at last use.
        first = np.where(self._live[ids], self._first[ids],
                         np.where(self._segments[ids] == 0, np.nan, used))
        dpk, dby = pk - self._base_pk[ids], by - self._base_by[ids]
        self._base_pk[ids], self._base_by[ids] = pk, by
        self._live[ids] = False
        self._segments[ids] += 1
        out = []
        mfs = self._mfs
        for i, p, b, f, u in zip(ids.tolist(), dpk.tolist(), dby.tolist(), first.tolist(),
                                 used.tolist()):
            mf = mfs[i]
            out.append(self._make(mf, p, b, mf.created if f != f else f, u, end))
        return out

    def _record(self, mf, pk: int, by: int, used: float, end: int) -> FlowRecord | None:
        i = mf.mf_id
        dpk, dby = pk - int(self._base_pk[i]), by - int(self._base_by[i])
        if dpk <= 0:
            return None
        first = float(self._first[i]) if self._live[i] else (
            mf.created if self._segments[i] == 0 else used)
        return self._make(mf, dpk, dby, first, used, end)

    def _make(self, mf, pk: int, by: int, first: float, last: float, end: int) -> FlowRecord:
        st = self._static.get(mf.mf_id)
        if st is None:
            st = self._static[mf.mf_id] = _static_of(mf)
        info = self.ports.get(st.in_port) or PortInfo()
        flags = st.tcp_flags
        acc = getattr(self.sw.cache, "tcp_flags", None)   # per-megaflow OR of flags, if kept
        if acc is not None and st.proto == F.IP_TCP:
            flags |= int(acc[mf.mf_id])
        return FlowRecord(
            host=self.host, in_port=st.in_port, out_port=st.out_port, direction="ingress",
            eth_type=st.eth_type, src=st.src, dst=st.dst, src_prefix=st.src_prefix,
            dst_prefix=st.dst_prefix, proto=st.proto, sport=st.sport, dport=st.dport,
            vlan=st.vlan, vni=st.vni, project=info.project, neutron_port=info.neutron_port,
            packets=pk, bytes=by, first=first, last=max(last, first), tcp_flags=flags,
            # The tier a megaflow is in changes as the NIC takes it or gives it back:
            # a record has the tier at its export.
            tier="slowpath" if st.tier == "slowpath" else mf.tier,
            reason=st.reason, cookie=st.cookie, cookies=st.cookies,
            exact=st.exact, wildcards=st.wildcards, end_reason=end, megaflow=mf.mf_id,
            src_int=st.src_int, dst_int=st.dst_int)

    def _malformed(self, now: float) -> list[FlowRecord]:
        cur = np.asarray(self.sw.parse_errors, dtype=np.int64)
        delta = cur - self._parse_base
        self._parse_base = cur.copy()
        out = []
        deep = self.sw.drops.get(TOO_DEEP, 0)
        if deep > self._too_deep:
            out.append(self._pseudo(deep - self._too_deep, TOO_DEEP, now))
            self._too_deep = deep
        for code in np.flatnonzero(delta[1:] > 0) + 1:
            out.append(self._pseudo(int(delta[code]), f"malformed: {ERROR_REASONS[code]}", now))
        return out

    def _pseudo(self, packets: int, reason: str, now: float) -> FlowRecord:
        """A record for drops the switch counts only by reason (no megaflow, port or bytes)."""
        return FlowRecord(
            host=self.host, in_port=0, out_port=0, direction="ingress", eth_type=0,
            src="", dst="", src_prefix=0, dst_prefix=0, proto=0, sport=0, dport=0,
            vlan=None, vni=None, project=None, neutron_port=None,
            packets=packets, bytes=0, first=now, last=now, tcp_flags=0,
            tier="software", reason=reason, cookie=0,
            cookies=(), exact=False, wildcards=(), end_reason=END_FORCED)

    def _account(self, r: FlowRecord) -> None:
        self.records_exported += 1
        self.packets_exported += r.packets
        self.bytes_exported += r.bytes
        self.by_end_reason[r.end_reason] = self.by_end_reason.get(r.end_reason, 0) + 1
        k = (r.in_port, r.tier, r.reason)
        acc = self.exported_by.setdefault(k, [0, 0])
        acc[0] += r.packets
        acc[1] += r.bytes

    def open_records(self) -> int:
        return int(np.count_nonzero(self._live[self._ids]))

    def totals(self) -> dict[tuple[int, str, str], list[int]]:
        """Packets and bytes by (in_port, tier, reason): exported plus not yet exported."""
        out = {k: list(v) for k, v in self.exported_by.items()}
        c = self.sw.cache
        self._track_new()
        for i, mf in self._mfs.items():
            pk = int(c.packets[i]) - int(self._base_pk[i])
            if pk <= 0:
                continue
            st = self._static.get(i) or self._static.setdefault(i, _static_of(mf))
            tier = "slowpath" if st.tier == "slowpath" else mf.tier
            acc = out.setdefault((st.in_port, tier, st.reason), [0, 0])
            acc[0] += pk
            acc[1] += int(c.bytes[i]) - int(self._base_by[i])
        delta = np.asarray(self.sw.parse_errors, dtype=np.int64) - self._parse_base
        for code in np.flatnonzero(delta[1:] > 0) + 1:
            acc = out.setdefault((0, "software", f"malformed: {ERROR_REASONS[code]}"), [0, 0])
            acc[0] += int(delta[code])
        deep = self.sw.drops.get(TOO_DEEP, 0) - self._too_deep
        if deep > 0:
            out.setdefault((0, "software", TOO_DEEP), [0, 0])[0] += deep
        return out
