"""Flow records metered from megaflow counters: timeouts, cap with eviction, exact per-record deltas."""

from __future__ import annotations

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

_RECIRC = S["recirc_id"]
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


def _static_of(mf) -> _Static:
    key = mf.key
    mask = dict(zip(mf.slots, mf.mask))

    def val(name: str) -> int:
        s = S[name]
        return key[s] & mask.get(s, 0)

    def m(name: str) -> int:
        return mask.get(S[name], 0)

    eth_type = val("eth_type")
    src = dst = ""
    sp = dp = 0
    if eth_type == F.ETH_IP:
        src = str(ipaddress.IPv4Address(val("nw_src")))
        dst = str(ipaddress.IPv4Address(val("nw_dst")))
        sp, dp = bin(m("nw_src")).count("1"), bin(m("nw_dst")).count("1")
        tuple_slots = FIVE_TUPLE_V4
    elif eth_type == F.ETH_IPV6:
        src = str(ipaddress.IPv6Address(val("ipv6_src_hi") << 64 | val("ipv6_src_lo")))
        dst = str(ipaddress.IPv6Address(val("ipv6_dst_hi") << 64 | val("ipv6_dst_lo")))
        sp = bin(m("ipv6_src_hi")).count("1") + bin(m("ipv6_src_lo")).count("1")
        dp = bin(m("ipv6_dst_hi")).count("1") + bin(m("ipv6_dst_lo")).count("1")
        tuple_slots = FIVE_TUPLE_V6
    else:
        tuple_slots = ()
    widths = {"nw_src": 0xFFFFFFFF, "nw_dst": 0xFFFFFFFF, "nw_proto": 0xFF,
              "tp_src": 0xFFFF, "tp_dst": 0xFFFF}
    full = {n: widths.get(n, 0xFFFFFFFFFFFFFFFF) for n in tuple_slots}
    wild = tuple(n for n in tuple_slots
                 if m(n) & full[n] != full[n] and not n.startswith("ipv6_"))
    if eth_type == F.ETH_IPV6:
        if sp < 128:
            wild += ("ipv6_src",)
        if dp < 128:
            wild += ("ipv6_dst",)
    proto = val("nw_proto") if tuple_slots else 0
    # tp_src/tp_dst carry ICMP type/code for ICMP, as in OVS; a record's ports are 0 then.
    ports = proto in (F.IP_TCP, F.IP_UDP, F.IP_SCTP)
    if proto in (F.IP_ICMP, F.IP_ICMPV6) or not ports:
        wild = tuple(w for w in wild if w not in ("tp_src", "tp_dst"))
    tci = val("vlan_tci")
    out = next((a.port for a in mf.actions if isinstance(a, odp.Output)
                and a.port != F.OFPP_CONTROLLER), 0)
    tier = mf.tier
    if any(isinstance(a, odp.Userspace) or (isinstance(a, odp.Output)
           and a.port == F.OFPP_CONTROLLER) for a in mf.actions):
        tier = "slowpath"
    cookies = tuple(r.flow.cookie for r in mf.rules)
    cookie = next((c for c in reversed(cookies) if c), 0)
    tcp_mask = m("tcp_flags")
    return _Static(
        in_port=key[S["in_port"]], out_port=out, eth_type=eth_type, src=src, dst=dst,
        src_prefix=sp, dst_prefix=dp, proto=proto,
        sport=val("tp_src") if ports else 0, dport=val("tp_dst") if ports else 0,
        vlan=(tci & 0xFFF) if tci & F.VLAN_CFI else None,
        vni=val("tun_id") if m("tun_id") else None,
        # Without per-megaflow flag accumulation in the datapath, the flags known are
        # those of the packet that created the megaflow (exact when the mask has them).
        tcp_flags=(key[S["tcp_flags"]] if proto == F.IP_TCP else 0) if not tcp_mask
        else val("tcp_flags"),
        tier=tier, reason=mf.reason, cookie=cookie, cookies=cookies,
        exact=not wild and bool(tuple_slots), wildcards=wild)


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
        # With conntrack a packet crosses one megaflow per pass (recirculation);
        # records come from first passes only, so each packet counts once.
        self.all_passes = all_passes
        self.host = host
        self.active_timeout = active_timeout
        self.idle_timeout = idle_timeout
        self.max_records = max_records
        self.ports = ports or {}
        self._mfs: dict[int, object] = {}          # megaflows seen and not yet gone
        self._static: dict[int, _Static] = {}
        self._final: dict[int, tuple[int, int, float]] = {}   # from on_evict
        self._skip: set[int] = set()                 # later-pass megaflows (not metered)
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
        self.exported_by: dict[tuple[int, str, str], list[int]] = {}  # (port, tier, reason) -> [pk, by]

    # -- the switch hook --------------------------------------------------------
    def on_evict(self, mf, packets: int, nbytes: int) -> None:
        """Called by the switch as it evicts a megaflow, with its final counters."""
        self._final[mf.mf_id] = (packets, nbytes, float(self.sw.cache.used[mf.mf_id]))

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
        for i in c.flows.keys() - self._mfs.keys() - self._skip:
            mf = c.flows[i]
            if mf.key[_RECIRC] and not self.all_passes:
                self._skip.add(i)
                continue
            self._mfs[i] = mf
            self._base_pk[i] = self._base_by[i] = 0
            self._live[i] = False
            self._segments[i] = 0

    def poll(self, now: float) -> list[FlowRecord]:
        """Records that expired by `now`: megaflows gone, idle, past the active timeout, over the cap."""
        c = self.sw.cache
        self._track_new()
        out: list[FlowRecord] = []
        # Megaflows that left the cache: their final counts, then forget them.
        for i in sorted(self._mfs.keys() - c.flows.keys()):
            mf = self._mfs.pop(i)
            pk, by, used = self._final.pop(i, None) or (
                # Ids are never reused, so the arrays still hold the final counts.
                int(c.packets[i]), int(c.bytes[i]), float(c.used[i]))
            end = END_IDLE if now - used >= self.idle_timeout else END_OF_FLOW
            rec = self._record(mf, pk, by, used, end)
            if rec is not None:
                out.append(rec)
            self._static.pop(i, None)
        self._final.clear()
        self._skip.intersection_update(c.flows.keys())
        ids = np.fromiter(self._mfs.keys(), dtype=np.int64, count=len(self._mfs))
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
            for i in ids[sel].tolist():
                out.append(self._cut(i, now, end))
        n_live = int(np.count_nonzero(self._live[ids]))
        if n_live > self.max_records:
            # Over the cap: export and close the records least recently used.
            cand = ids[self._live[ids]]
            order = np.argsort(c.used[cand], kind="stable")[:n_live - self.max_records]
            for i in cand[order].tolist():
                out.append(self._cut(i, now, END_RESOURCES))
                self.evicted_for_cap += 1
        out.extend(self._malformed(now))
        for r in out:
            self._account(r)
        return out

    def flush(self, now: float) -> list[FlowRecord]:
        """Export every open record (forced end), e.g. at shutdown; counters stay exact."""
        out = self.poll(now)
        c = self.sw.cache
        for i in list(self._mfs):
            if c.packets[i] > self._base_pk[i]:
                r = self._cut(i, now, END_FORCED)
                self._account(r)
                out.append(r)
        return out

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
    def _cut(self, i: int, now: float, end: int) -> FlowRecord:
        c = self.sw.cache
        pk, by = int(c.packets[i]), int(c.bytes[i])
        rec = self._make(self._mfs[i], pk - int(self._base_pk[i]), by - int(self._base_by[i]),
                         float(self._first[i]) if self._live[i] else self._mfs[i].created,
                         float(c.used[i]), end)
        self._base_pk[i], self._base_by[i] = pk, by
        self._live[i] = False
        self._segments[i] += 1
        return rec

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
            tier=st.tier, reason=st.reason, cookie=st.cookie, cookies=st.cookies,
            exact=st.exact, wildcards=st.wildcards, end_reason=end, megaflow=mf.mf_id)

    def _malformed(self, now: float) -> list[FlowRecord]:
        cur = np.asarray(self.sw.parse_errors, dtype=np.int64)
        delta = cur - self._parse_base
        self._parse_base = cur.copy()
        out = []
        for code in np.flatnonzero(delta[1:] > 0) + 1:
            out.append(FlowRecord(
                host=self.host, in_port=0, out_port=0, direction="ingress", eth_type=0,
                src="", dst="", src_prefix=0, dst_prefix=0, proto=0, sport=0, dport=0,
                vlan=None, vni=None, project=None, neutron_port=None,
                packets=int(delta[code]), bytes=0, first=now, last=now, tcp_flags=0,
                tier="software", reason=f"malformed: {ERROR_REASONS[code]}", cookie=0,
                cookies=(), exact=False, wildcards=(), end_reason=END_FORCED))
        return out

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
        ids = np.fromiter(self._mfs.keys(), dtype=np.int64, count=len(self._mfs))
        return int(np.count_nonzero(self._live[ids])) if ids.size else 0

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
            acc = out.setdefault((st.in_port, st.tier, st.reason), [0, 0])
            acc[0] += pk
            acc[1] += int(c.bytes[i]) - int(self._base_by[i])
        delta = np.asarray(self.sw.parse_errors, dtype=np.int64) - self._parse_base
        for code in np.flatnonzero(delta[1:] > 0) + 1:
            acc = out.setdefault((0, "software", f"malformed: {ERROR_REASONS[code]}"), [0, 0])
            acc[0] += int(delta[code])
        return out
