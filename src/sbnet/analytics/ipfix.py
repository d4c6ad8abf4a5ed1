"""IPFIX (RFC 7011) export over UDP: templates, data sets built column-wise, sequence numbers, refresh."""

from __future__ import annotations

import socket
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np

from sbnet.analytics.records import FlowRecord
from sbnet.flows.fields import ETH_IP, ETH_IPV6

VERSION = 10
# Private Enterprise Number for sbnet's own elements: 32473 is IANA's number
# reserved for documentation (RFC 5612); a deployment would register its own.
PEN = 32473
MAX_MESSAGE = 1400          # bytes; keeps every message in one unfragmented UDP datagram
TEMPLATE_REFRESH = 60.0     # seconds between template resends over UDP (RFC 7011 section 8.4)
VAR = 0xFFFF                # field length meaning "variable length"

TEMPLATE_SET, OPTIONS_TEMPLATE_SET = 2, 3
T_V4, T_V6, T_L2, T_REASONS, T_SELECTOR = 256, 257, 258, 259, 260

TIER_CODE = {"software": 1, "nic": 2, "slowpath": 3}


@dataclass(frozen=True)
class IE:
    """An Information Element: IANA's number (or an enterprise's), its length and wire type."""

    name: str
    id: int
    length: int
    dtype: str               # numpy wire type
    pen: int = 0


def _ie(name, ident, length, dtype, pen=0):
    return IE(name, ident, length, dtype, pen)


# IANA "IPFIX Information Elements" registry numbers and lengths.
flowStartMilliseconds = _ie("flowStartMilliseconds", 152, 8, ">u8")
flowEndMilliseconds = _ie("flowEndMilliseconds", 153, 8, ">u8")
octetDeltaCount = _ie("octetDeltaCount", 1, 8, ">u8")
packetDeltaCount = _ie("packetDeltaCount", 2, 8, ">u8")
sourceIPv4Address = _ie("sourceIPv4Address", 8, 4, ">u4")
destinationIPv4Address = _ie("destinationIPv4Address", 12, 4, ">u4")
sourceIPv6Address = _ie("sourceIPv6Address", 27, 16, "V16")
destinationIPv6Address = _ie("destinationIPv6Address", 28, 16, "V16")
ingressInterface = _ie("ingressInterface", 10, 4, ">u4")
egressInterface = _ie("egressInterface", 14, 4, ">u4")
sourceTransportPort = _ie("sourceTransportPort", 7, 2, ">u2")
destinationTransportPort = _ie("destinationTransportPort", 11, 2, ">u2")
tcpControlBits = _ie("tcpControlBits", 6, 2, ">u2")
vlanId = _ie("vlanId", 58, 2, ">u2")
ethernetType = _ie("ethernetType", 256, 2, ">u2")
protocolIdentifier = _ie("protocolIdentifier", 4, 1, "u1")
sourceIPv4PrefixLength = _ie("sourceIPv4PrefixLength", 9, 1, "u1")
destinationIPv4PrefixLength = _ie("destinationIPv4PrefixLength", 13, 1, "u1")
sourceIPv6PrefixLength = _ie("sourceIPv6PrefixLength", 29, 1, "u1")
destinationIPv6PrefixLength = _ie("destinationIPv6PrefixLength", 30, 1, "u1")
flowDirection = _ie("flowDirection", 61, 1, "u1")
forwardingStatus = _ie("forwardingStatus", 89, 1, "u1")
flowEndReason = _ie("flowEndReason", 136, 1, "u1")
selectorId = _ie("selectorId", 302, 8, ">u8")
flowSelectorAlgorithm = _ie("flowSelectorAlgorithm", 390, 2, ">u2")
selectorIDTotalFlowsObserved = _ie("selectorIDTotalFlowsObserved", 394, 8, ">u8")
selectorIDTotalFlowsSelected = _ie("selectorIDTotalFlowsSelected", 395, 8, ">u8")
# sbnet's enterprise elements.
sbnetRuleCookie = _ie("sbnetRuleCookie", 1, 8, ">u8", PEN)
sbnetVni = _ie("sbnetVni", 2, 4, ">u4", PEN)
sbnetDropReason = _ie("sbnetDropReason", 3, 2, ">u2", PEN)
sbnetTier = _ie("sbnetTier", 4, 1, "u1", PEN)
sbnetExact = _ie("sbnetExact", 5, 1, "u1", PEN)
sbnetNeutronPort = _ie("sbnetNeutronPort", 6, 16, "V16", PEN)
sbnetProject = _ie("sbnetProject", 7, 16, "V16", PEN)
sbnetDropReasonName = _ie("sbnetDropReasonName", 8, VAR, "", PEN)

_COMMON_HEAD = (flowStartMilliseconds, flowEndMilliseconds, octetDeltaCount, packetDeltaCount)
_COMMON_TAIL = (ingressInterface, egressInterface, vlanId, flowDirection, forwardingStatus,
                flowEndReason, sbnetRuleCookie, sbnetVni, sbnetDropReason, sbnetTier,
                sbnetExact, sbnetNeutronPort, sbnetProject)
TEMPLATES: dict[int, tuple[IE, ...]] = {
    T_V4: _COMMON_HEAD + (sourceIPv4Address, destinationIPv4Address, sourceTransportPort,
                          destinationTransportPort, tcpControlBits, protocolIdentifier,
                          sourceIPv4PrefixLength, destinationIPv4PrefixLength) + _COMMON_TAIL,
    T_V6: _COMMON_HEAD + (sourceIPv6Address, destinationIPv6Address, sourceTransportPort,
                          destinationTransportPort, tcpControlBits, protocolIdentifier,
                          sourceIPv6PrefixLength, destinationIPv6PrefixLength) + _COMMON_TAIL,
    T_L2: _COMMON_HEAD + (ethernetType,) + _COMMON_TAIL,
}
# Options templates: (scope fields, other fields).
OPTIONS: dict[int, tuple[tuple[IE, ...], tuple[IE, ...]]] = {
    T_REASONS: ((sbnetDropReason,), (sbnetDropReasonName,)),
    T_SELECTOR: ((selectorId,), (flowSelectorAlgorithm, selectorIDTotalFlowsObserved,
                                 selectorIDTotalFlowsSelected)),
}
DTYPES = {tid: np.dtype([(ie.name, ie.dtype) for ie in fields]) for tid, fields in TEMPLATES.items()}


def forwarding_status(reason: str) -> int:
    """RFC 7270 forwardingStatus: status in the top two bits, reason code below."""
    if reason == "forwarded":
        return 64                          # forwarded, unknown reason
    if reason == "sent to controller":
        return 192                         # consumed
    if reason.startswith(("drop rule", "no matching flow", "no actions")):
        return 130                         # dropped: ACL drop
    if "TTL" in reason:
        return 137                         # dropped: bad TTL
    if reason.startswith("malformed"):
        return 136 if "ihl" in reason or "offset" in reason else 135   # bad header / total length
    return 128                             # dropped, unknown


def _field_specs(fields) -> bytes:
    out = b""
    for ie in fields:
        if ie.pen:
            out += struct.pack("!HHI", ie.id | 0x8000, ie.length, ie.pen)
        else:
            out += struct.pack("!HH", ie.id, ie.length)
    return out


def template_set() -> bytes:
    body = b"".join(struct.pack("!HH", tid, len(f)) + _field_specs(f) for tid, f in TEMPLATES.items())
    return _set(TEMPLATE_SET, body)


def options_template_set() -> bytes:
    body = b""
    for tid, (scope, rest) in OPTIONS.items():
        body += struct.pack("!HHH", tid, len(scope) + len(rest), len(scope))
        body += _field_specs(scope + rest)
    return _set(OPTIONS_TEMPLATE_SET, body)


def _set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def _uuid16(text: str | None) -> bytes:
    if not text:
        return b"\0" * 16
    hexed = text.replace("-", "")
    try:
        return bytes.fromhex(hexed)[:16].ljust(16, b"\0")
    except ValueError:
        return zlib.crc32(text.encode()).to_bytes(4, "big").ljust(16, b"\0")


class IpfixEncoder:
    """Builds IPFIX messages from flow records: one observation domain, its sequence numbers."""

    def __init__(self, domain_id: int = 1, epoch: float = 0.0, sampling: int = 1,
                 template_refresh: float = TEMPLATE_REFRESH, max_message: int = MAX_MESSAGE) -> None:
        self.domain_id = domain_id
        self.epoch = epoch                   # added to record times to make Unix time
        self.sampling = max(1, sampling)     # export 1 in N flows, chosen by a CRC of the key
        self.template_refresh = template_refresh
        self.max_message = max_message
        self.sequence = 0                    # data records sent so far (RFC 7011 section 3.1)
        self.messages = 0
        self.records = 0
        self.flows_observed = 0
        self.flows_selected = 0
        self.option_messages = 0             # messages carrying options data records
        self._templates_at: float | None = None
        self._reasons: dict[str, int] = {"forwarded": 0}
        self._reasons_sent = 1               # reason codes announced so far

    def selected(self, r: FlowRecord) -> bool:
        if self.sampling == 1:
            return True
        key = f"{r.host}|{r.in_port}|{r.src}|{r.dst}|{r.proto}|{r.sport}|{r.dport}".encode()
        return zlib.crc32(key) % self.sampling == 0

    def encode(self, records: list[FlowRecord], now: float) -> list[bytes]:
        """The messages that carry `records` (templates first when due)."""
        export_time = int(now + self.epoch)
        self.flows_observed += len(records)
        if self.sampling > 1:
            records = [r for r in records if self.selected(r)]
        self.flows_selected += len(records)
        for r in records:
            if r.reason not in self._reasons:
                self._reasons[r.reason] = len(self._reasons)
        msgs: list[bytes] = []
        control: list[bytes] = []
        due = self._templates_at is None or now - self._templates_at >= self.template_refresh
        if due:
            control += [(template_set(), 0), (options_template_set(), 0)]
            self._templates_at = now
            self._reasons_sent = 0
        if self._reasons_sent < len(self._reasons):
            control += self._reason_sets()
        if due and self.sampling > 1:
            control.append((self._selector_set(), 1))
        if control:
            msgs.extend(self._pack(control, export_time, options=True))
        by_tpl: dict[int, list[FlowRecord]] = {T_V4: [], T_V6: [], T_L2: []}
        for r in records:
            by_tpl[T_V4 if r.eth_type == ETH_IP else T_V6 if r.eth_type == ETH_IPV6 else T_L2].append(r)
        for tid, recs in by_tpl.items():
            if not recs:
                continue
            data = self._columns(tid, recs)
            size = DTYPES[tid].itemsize
            per = (self.max_message - 16 - 4) // size
            for i in range(0, len(recs), per):
                chunk = data[i:i + per]
                msgs.extend(self._pack([(_set(tid, chunk.tobytes()), len(chunk))], export_time))
        return msgs

    def _pack(self, sets: list[tuple[bytes, int]], export_time: int,
              options: bool = False) -> list[bytes]:
        """Sets (with their data record counts) packed into as few messages as fit."""
        out: list[bytes] = []
        before = self.sequence
        cur: list[bytes] = []
        size, n = 16, 0
        for s, k in sets:
            if cur and size + len(s) > self.max_message:
                out.append(self._message(cur, export_time, n))
                cur, size, n = [], 16, 0
            cur.append(s)
            size += len(s)
            n += k
        if cur:
            out.append(self._message(cur, export_time, n))
        if options and self.sequence != before:
            self.option_messages += len(out)
        return out

    def _message(self, sets: list[bytes], export_time: int, n_data: int) -> bytes:
        # The sequence number counts every data record, options data records included.
        body = b"".join(sets)
        head = struct.pack("!HHIII", VERSION, 16 + len(body), export_time & 0xFFFFFFFF,
                           self.sequence & 0xFFFFFFFF, self.domain_id)
        self.sequence += n_data
        self.records += n_data
        self.messages += 1
        return head + body

    def _reason_sets(self) -> list[tuple[bytes, int]]:
        items = list(self._reasons.items())[self._reasons_sent:]
        self._reasons_sent = len(self._reasons)
        sets, body, n = [], b"", 0
        for name, code in items:
            text = name.encode()[:254]
            rec = struct.pack("!HB", code, len(text)) + text
            if body and len(body) + len(rec) > self.max_message - 40:
                sets.append((_set(T_REASONS, body), n))
                body, n = b"", 0
            body += rec
            n += 1
        if body:
            sets.append((_set(T_REASONS, body), n))
        return sets

    def _selector_set(self) -> bytes:
        return _set(T_SELECTOR, struct.pack("!QHQQ", 1, 8, self.flows_observed, self.flows_selected))

    def _columns(self, tid: int, recs: list[FlowRecord]) -> np.ndarray:
        a = np.zeros(len(recs), dtype=DTYPES[tid])
        ep = self.epoch
        a["flowStartMilliseconds"] = [round((r.first + ep) * 1000) for r in recs]
        a["flowEndMilliseconds"] = [round((r.last + ep) * 1000) for r in recs]
        a["octetDeltaCount"] = [r.bytes for r in recs]
        a["packetDeltaCount"] = [r.packets for r in recs]
        a["ingressInterface"] = [r.in_port for r in recs]
        a["egressInterface"] = [r.out_port for r in recs]
        a["vlanId"] = [r.vlan or 0 for r in recs]
        a["flowDirection"] = 0                                    # ingress
        a["forwardingStatus"] = [forwarding_status(r.reason) for r in recs]
        a["flowEndReason"] = [r.end_reason for r in recs]
        a["sbnetRuleCookie"] = [r.cookie for r in recs]
        a["sbnetVni"] = [r.vni or 0 for r in recs]
        a["sbnetDropReason"] = [self._reasons[r.reason] for r in recs]
        a["sbnetTier"] = [TIER_CODE.get(r.tier, 0) for r in recs]
        a["sbnetExact"] = [r.exact for r in recs]
        if any(r.neutron_port for r in recs):
            a["sbnetNeutronPort"] = [_uuid16(r.neutron_port) for r in recs]
        if any(r.project for r in recs):
            a["sbnetProject"] = [_uuid16(r.project) for r in recs]
        if tid == T_L2:
            a["ethernetType"] = [r.eth_type for r in recs]
            return a
        if tid == T_V4:
            a["sourceIPv4Address"] = [r.src_int for r in recs]
            a["destinationIPv4Address"] = [r.dst_int for r in recs]
            a["sourceIPv4PrefixLength"] = [r.src_prefix for r in recs]
            a["destinationIPv4PrefixLength"] = [r.dst_prefix for r in recs]
        else:
            a["sourceIPv6Address"] = [r.src_int.to_bytes(16, "big") for r in recs]
            a["destinationIPv6Address"] = [r.dst_int.to_bytes(16, "big") for r in recs]
            a["sourceIPv6PrefixLength"] = [r.src_prefix for r in recs]
            a["destinationIPv6PrefixLength"] = [r.dst_prefix for r in recs]
        a["sourceTransportPort"] = [r.sport for r in recs]
        a["destinationTransportPort"] = [r.dport for r in recs]
        a["tcpControlBits"] = [r.tcp_flags for r in recs]
        a["protocolIdentifier"] = [r.proto for r in recs]
        return a


class IpfixExporter:
    """Sends IPFIX messages to one collector over UDP."""

    def __init__(self, host: str, port: int = 4739, **encoder_args) -> None:
        self.addr = (host, port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.encoder = IpfixEncoder(**encoder_args)
        self.bytes_sent = 0

    def export(self, records: list[FlowRecord], now: float) -> int:
        msgs = self.encoder.encode(records, now)
        for m in msgs:
            self.sock.sendto(m, self.addr)
            self.bytes_sent += len(m)
        return len(msgs)

    def close(self) -> None:
        self.sock.close()


def wall_epoch() -> float:
    """Offset from time.monotonic() to Unix time, for switches on the monotonic clock."""
    return time.time() - time.monotonic()


def decode(msg: bytes, templates: dict | None = None) -> tuple[dict, list[tuple[int, dict]]]:
    """Decode one message: (header, [(template id, {element name: value})]); `templates` persists."""
    templates = {} if templates is None else templates
    names = {(ie.pen, ie.id): ie for f in TEMPLATES.values() for ie in f}
    for scope, rest in OPTIONS.values():
        names.update({(ie.pen, ie.id): ie for ie in scope + rest})
    ver, length, t, seq, dom = struct.unpack_from("!HHIII", msg)
    if ver != VERSION or length != len(msg):
        raise ValueError(f"bad IPFIX header: version {ver}, length {length} of {len(msg)}")
    out: list[tuple[int, dict]] = []
    off = 16
    while off < length:
        sid, slen = struct.unpack_from("!HH", msg, off)
        body, end = off + 4, off + slen
        if slen < 4 or end > length:
            raise ValueError(f"bad set length {slen} at {off}")
        if sid in (TEMPLATE_SET, OPTIONS_TEMPLATE_SET):
            p = body
            while p + 4 <= end:
                if sid == TEMPLATE_SET:
                    tid, count = struct.unpack_from("!HH", msg, p)
                    p += 4
                else:
                    tid, count, _scope = struct.unpack_from("!HHH", msg, p)
                    p += 6
                fields = []
                for _ in range(count):
                    fid, flen = struct.unpack_from("!HH", msg, p)
                    p += 4
                    pen = 0
                    if fid & 0x8000:
                        pen, = struct.unpack_from("!I", msg, p)
                        p += 4
                        fid &= 0x7FFF
                    ie = names.get((pen, fid))
                    fields.append((ie.name if ie else f"{pen}:{fid}", flen))
                templates[tid] = fields
        else:
            fields = templates.get(sid)
            if fields is None:
                raise ValueError(f"data set {sid} before its template")
            p = body
            while p < end:
                rec = {}
                for name, flen in fields:
                    if flen == VAR:
                        flen = msg[p]
                        p += 1
                        if flen == 255:
                            flen, = struct.unpack_from("!H", msg, p)
                            p += 2
                    raw = msg[p:p + flen]
                    p += flen
                    rec[name] = (raw.decode() if name.endswith("Name") else
                                 int.from_bytes(raw, "big") if flen <= 8 else raw)
                out.append((sid, rec))
                if end - p < max(1, sum(f for _, f in fields if f != VAR)):
                    break                  # what is left is padding
        off = end
    return {"version": ver, "length": length, "export_time": t, "sequence": seq,
            "domain": dom}, out
