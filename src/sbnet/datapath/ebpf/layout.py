"""Byte layouts of the kernel tier's maps (bpf/sbnet_dp.h) and the codecs from megaflows and odp actions."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from sbnet.datapath import odp
from sbnet.flows import fields as F

# The kernel key's words, in the order of enum sb_slot in bpf/sbnet_dp.h.
KEY_SLOTS: tuple[str, ...] = (
    "recirc_id", "in_port", "eth_src", "eth_dst", "eth_type", "vlan_tci", "vlan_tpid",
    "nw_src", "nw_dst", "ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi", "ipv6_dst_lo",
    "ipv6_label", "nw_proto", "nw_tos", "nw_ttl", "nw_frag", "tp_src", "tp_dst",
    "tcp_flags", "arp_sha", "arp_tha", "tun_id", "tun_src", "tun_dst", "tun_flags",
    "ct_state", "ct_zone", "ct_mark",
)
NWORDS = len(KEY_SLOTS)
_WORD_OF_SLOT = {F.SLOT_INDEX[s]: i for i, s in enumerate(KEY_SLOTS)}

MAX_MASKS, MAX_ACTS, MAX_OUT, TRACE_BYTES, UPCALL_BYTES, UPCALL_MAX = 32, 16, 16, 2048, 2048, 65536

FKEY = struct.Struct(f"<II{NWORDS}Q")          # struct sb_fkey and struct sb_mask
ACT = struct.Struct("<HHIQQ")                  # struct sb_act
FLOW_HEAD = struct.Struct("<QQQIIII")          # struct sb_flow before acts[]
FLOW_SIZE = FLOW_HEAD.size + MAX_ACTS * ACT.size
PORT = struct.Struct("<II")
PORT_SLOT = struct.Struct("<III")              # struct sb_port_slot: ifindex, then a PORT
PORT_SLOTS = 1024
CONFIG = struct.Struct("<IIII")
TRACE_HDR = struct.Struct("<IIII")
TRACE_OUT_HEAD = struct.Struct("<IIIIQIIII")
TRACE_OUT_SIZE = TRACE_OUT_HEAD.size + TRACE_BYTES
UPCALL = struct.Struct("<IIIIIIQIIII")
CT_KEY = struct.Struct("<HBBHHII")
TCP_PEER = struct.Struct("<IIIBBH")           # struct sb_tcp_peer
CT_VAL = struct.Struct("<IIQQQ" + "IIIBBH" * 2 + "IHHQQQQ")
CT6_KEY = struct.Struct("<HBBHHQQQQ")          # struct sb_ct6_key
# The same two as numpy records, to pack many entries at once.
CT_KEY_DTYPE = np.dtype([("zone", "<u2"), ("proto", "u1"), ("pad", "u1"), ("sport", "<u2"),
                         ("dport", "<u2"), ("src", "<u4"), ("dst", "<u4")])
TCP_PEER_DTYPE = np.dtype([("seqlo", "<u4"), ("seqhi", "<u4"), ("max_win", "<u4"),
                           ("wscale", "u1"), ("state", "u1"), ("pad", "<u2")])
CT6_KEY_DTYPE = np.dtype([("zone", "<u2"), ("proto", "u1"), ("pad", "u1"), ("sport", "<u2"),
                          ("dport", "<u2"), ("src", "<u8", (2,)), ("dst", "<u8", (2,))])
# struct sb_ct_nat: the tuple a NATed direction's packets leave with (IPv4 in the low words).
CT_NAT_DTYPE = np.dtype([("flags", "<u4"), ("sport", "<u2"), ("dport", "<u2"),
                         ("src", "<u8", (2,)), ("dst", "<u8", (2,))])
CT_VAL_DTYPE = np.dtype([("state", "<u4"), ("mark", "<u4"), ("packets", "<u8"),
                         ("bytes", "<u8"), ("used", "<u8"), ("tcp", TCP_PEER_DTYPE, (2,)),
                         ("nat", CT_NAT_DTYPE)])
# struct sb_ct_event: a connection event's body.
CT_EVENT_DTYPE = np.dtype([("key", CT_KEY_DTYPE), ("tcp", TCP_PEER_DTYPE, (2,))])
ZONE = struct.Struct("<IIq")                   # struct sb_zone
HOLD = struct.Struct("<QQQQIIQ8III")           # struct sb_hold
MAX_INSIDE = 4                                 # sb_hold.inside: (address, mask) pairs
HOLD_F_RELAY = 2
ICMP_PROTOS = (F.IP_ICMP, F.IP_ICMPV6)


def key_ports(proto, sport, dport):
    """A connection tuple's port words (conntrack's: an ICMP query's are id << 8 | type and
    id << 8 | its answer's type) as the connection maps key them, 16 bits each: an ICMP
    query's id, and type << 8 | answer's type; TCP and UDP ports as they are.  Ints, or
    arrays of the same length."""
    if isinstance(sport, int):
        if proto in ICMP_PROTOS:
            return sport >> 8, (sport & 0xFF) << 8 | dport & 0xFF
        return sport, dport
    sport, dport = np.asarray(sport, np.uint64), np.asarray(dport, np.uint64)
    icmp = np.isin(proto, ICMP_PROTOS)
    return (np.where(icmp, sport >> 8, sport),
            np.where(icmp, (sport & 0xFF) << 8 | dport & 0xFF, dport))


def tuple_ports(proto, sport, dport):
    """key_ports() undone: a map key's ports as conntrack's tuple words."""
    if isinstance(sport, int):
        if proto in ICMP_PROTOS:
            return sport << 8 | dport >> 8, sport << 8 | dport & 0xFF
        return sport, dport
    sport, dport = np.asarray(sport, np.uint64), np.asarray(dport, np.uint64)
    icmp = np.isin(proto, ICMP_PROTOS)
    return (np.where(icmp, sport << 8 | dport >> 8, sport),
            np.where(icmp, sport << 8 | dport & 0xFF, dport))


# struct sb_flow before acts[], as numpy records: the counters of a whole map read at once.
FLOW_HEAD_DTYPE = np.dtype([("packets", "<u8"), ("bytes", "<u8"), ("used", "<u8"),
                            ("mf_id", "<u4"), ("tcp_flags", "<u4"), ("n_acts", "<u4"),
                            ("pad", "<u4")])
METER = struct.Struct("<QQQQIIQQQQII")
U32 = struct.Struct("<I")

PORT_F_TUNNEL, PORT_F_XDP_OUT, PORT_F_PEER, PORT_F_HELD = 1, 2, 4, 8
OUT_F_PEER = 1                    # OP_OUTPUT h: the port is a PORT_F_PEER veth
UP_F_TUN, UP_F_CSUM_PARTIAL, UP_F_HELD = 1, 2, 4  # sb_upcall.flags
XDP_STATS = ("xdp_forward", "xdp_pass")        # the XDP program's own counters (sbnet_xdp.h)
CFG_F_TEST, CFG_F_KERNEL_CT, CFG_F_TCP_LIBERAL, CFG_F_HOLDS = 1, 2, 4, 8
# The connection map's state word: ct_state bits, and CS_OPENING (a TCP connection in its
# handshake, tracked by the program).
CS_OPENING = 0x10000
CT_F_COMMIT, CT_F_MARK, CT_F_NAT, CT_F_NAT_NEW = 1, 2, 4, 8
VERDICTS = {1: "forward", 2: "drop", 3: "upcall"}
STATS = ("hit", "miss", "punt_parse", "punt_action", "upcall", "upcall_lost",
         "upcall_limited", "drop", "meter_drop", "ct_miss", "output_error", "ct_commit",
         "ct_established", "ct_event_lost", "ct_handover", "ct_zone_full", "ct_nat", "ct6")
# Ring records that are connection events, not packets (their reason is this stat).
CT_COMMIT_EVENT, CT_EST_EVENT, CT_HANDOVER_EVENT = (
    STATS.index("ct_commit"), STATS.index("ct_established"), STATS.index("ct_handover"))

# enum sb_op
(OP_OUTPUT, OP_PUSH_VLAN, OP_POP_VLAN, OP_SET_ETH_SRC, OP_SET_ETH_DST, OP_SET_IP4_SRC,
 OP_SET_IP4_DST, OP_SET_IP4_TOS, OP_SET_IP4_TTL, OP_SET_IP6_SRC, OP_SET_IP6_DST,
 OP_SET_IP6_TCLASS, OP_SET_IP6_LABEL, OP_SET_IP6_HLIMIT, OP_SET_TP_SRC, OP_SET_TP_DST,
 OP_SET_MARK, OP_SET_TUNNEL, OP_METER, OP_CT, OP_RECIRC) = range(1, 22)

_M64 = (1 << 64) - 1


class NotInKernel(ValueError):
    """Why a megaflow stays in the userspace tier (the message is the reason shown)."""


@dataclass(frozen=True)
class KernelPort:
    """A switch port as the kernel sees it: its device, and for tunnels the port's settings."""

    ofport: int
    ifindex: int
    tunnel: object | None = None          # sbnet.datapath.tunnel.TunnelPort
    peer: bool = False                    # a veth whose other end is in another namespace


_CT_STATE, _NW_PROTO = F.SLOT_INDEX["ct_state"], F.SLOT_INDEX["nw_proto"]
_NEW = F.CT_STATE_BITS["new"]
_IN_PORT = F.SLOT_INDEX["in_port"]


def new_state_refusal(slots, mask, value, kernel_ct: bool) -> str | None:
    """Why a megaflow matching ct_state +new stays in software, or None: the kernel gives
    +new only to UDP connections, IPv4 ICMP queries and TCP SYNs it commits itself
    (EbpfTier kernel_ct), so one that can match none of them would never be hit there."""
    m = dict(zip(slots, zip(mask, value)))
    cm, cv = m.get(_CT_STATE, (0, 0))
    if not cm & cv & _NEW:
        return None
    if not kernel_ct:
        return "match ct_state +new: this kernel tier commits no connection itself"
    pm, pv = m.get(_NW_PROTO, (0, 0))
    if pm & pv not in (pm & F.IP_UDP, pm & F.IP_TCP, pm & F.IP_ICMP):
        return ("match ct_state +new stays in software but for UDP, TCP and ICMP (the "
                "kernel commits those only)")
    return None


def in_port_refusal(slots, mask, value, ports: dict[int, KernelPort]) -> str | None:
    """Why a megaflow stays in software because of its in_port, or None: packets of a port
    with no kernel device (a GRE or Geneve port here: the host's stack brings them to the
    slow path) never reach the program, so an entry for them would never be hit."""
    for s, sm, sv in zip(slots, mask, value):
        if s == _IN_PORT and sm and sv not in ports:
            return f"in_port {sv} has no kernel device (its packets come up through the slow path)"
    return None


def key_words(slots, mask, value) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A megaflow's (mask words, value words) over KEY_SLOTS; NotInKernel when it needs more."""
    m = [0] * NWORDS
    v = [0] * NWORDS
    for s, sm, sv in zip(slots, mask, value):
        w = _WORD_OF_SLOT.get(s)
        if w is None:
            # Slots the kernel key leaves out are 0 in every packet the program handles
            # itself (it hands the others up): a match on 0 there always holds.
            if sv & sm:
                raise NotInKernel(f"match on {F.SLOTS[s]}={sv:#x} is not in the kernel key")
            continue
        m[w], v[w] = sm & _M64, sv & sm & _M64
    return tuple(m), tuple(v)


def key_words_many(slots, mask, values: np.ndarray) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """key_words() of megaflows of one mask (values: a row of slot values each): the mask
    words, the value words (a row each) and which rows need more than the kernel key."""
    m = [0] * NWORDS
    words = np.zeros((values.shape[0], NWORDS), dtype=np.uint64)
    bad = np.zeros(values.shape[0], dtype=bool)
    for j, (s, sm) in enumerate(zip(slots, mask)):
        w = _WORD_OF_SLOT.get(s)
        if w is None:
            bad |= (values[:, j] & np.uint64(sm & _M64)) != 0
            continue
        m[w] = sm & _M64
        words[:, w] = values[:, j] & np.uint64(m[w])
    return tuple(m), words, bad


FKEY_DTYPE = np.dtype([("mask_id", "<u4"), ("pad", "<u4"), ("words", "<u8", (NWORDS,))])


def pack_fkeys(mask_id: int, words: np.ndarray) -> bytes:
    """pack_fkey() of many entries of one mask: their keys, back to back."""
    rec = np.zeros(words.shape[0], dtype=FKEY_DTYPE)
    rec["mask_id"] = mask_id
    rec["words"] = words
    return rec.tobytes()


def pack_flows(mf_ids: np.ndarray, acts: list[tuple]) -> bytes:
    """pack_flow() of many entries with the same actions: their values, back to back."""
    one = np.frombuffer(pack_flow(0, acts), dtype=np.uint8)
    out = np.tile(one, (mf_ids.size, 1))
    out[:, 24:28] = (mf_ids & 0xFFFFFFFF).astype("<u4")[:, None].view(np.uint8)
    return out.tobytes()


def pack_fkey(mask_id: int, words: tuple[int, ...]) -> bytes:
    return FKEY.pack(mask_id, 0, *words)


def pack_flow(mf_id: int, acts: list[tuple]) -> bytes:
    body = b"".join(ACT.pack(*a) for a in acts) + bytes(ACT.size * (MAX_ACTS - len(acts)))
    return FLOW_HEAD.pack(0, 0, 0, mf_id & 0xFFFFFFFF, 0, len(acts), 0) + body


def _port(ports: dict[int, KernelPort], ofport: int) -> KernelPort:
    p = ports.get(ofport)
    if p is None:
        raise NotInKernel(f"output to port {ofport}, which has no kernel device")
    return p


def _set(header: str, fields: dict[str, int]) -> list[tuple]:
    out = []
    for name, v in sorted(fields.items()):
        if header == "eth" and name in ("eth_src", "eth_dst"):
            out.append((OP_SET_ETH_SRC if name == "eth_src" else OP_SET_ETH_DST, 0, 0, v, 0))
        elif header == "ipv4" and name in ("ip_src", "ip_dst"):
            out.append((OP_SET_IP4_SRC if name == "ip_src" else OP_SET_IP4_DST, 0, v, 0, 0))
        elif header in ("ipv4", "ipv6") and name in ("nw_tos", "ip_dscp", "ip_ecn"):
            tos, bits = {"nw_tos": (v & 0xFF, 0xFF), "ip_dscp": ((v << 2) & 0xFC, 0xFC),
                         "ip_ecn": (v & 3, 3)}[name]
            out.append((OP_SET_IP4_TOS if header == "ipv4" else OP_SET_IP6_TCLASS, tos, bits, 0, 0))
        elif header == "ipv4" and name == "ip_ttl":
            out.append((OP_SET_IP4_TTL, v & 0xFF, 0, 0, 0))
        elif header == "ipv6" and name in ("ipv6_src", "ipv6_dst"):
            out.append((OP_SET_IP6_SRC if name == "ipv6_src" else OP_SET_IP6_DST, 0, 0,
                        v >> 64, v & _M64))
        elif header == "ipv6" and name == "ipv6_label":
            out.append((OP_SET_IP6_LABEL, 0, v & 0xFFFFF, 0, 0))
        elif header == "ipv6" and name == "ip_ttl":
            out.append((OP_SET_IP6_HLIMIT, v & 0xFF, 0, 0, 0))
        elif header in ("tcp", "udp") and name in (f"{header}_src", f"{header}_dst"):
            out.append((OP_SET_TP_SRC if name.endswith("_src") else OP_SET_TP_DST, v & 0xFFFF, 0, 0, 0))
        elif header == "skb_mark" and name == "pkt_mark":
            out.append((OP_SET_MARK, 0, v & 0xFFFFFFFF, 0, 0))
        else:
            raise NotInKernel(f"set({header}) of {name} is not done by the kernel tier")
    return out


def _tunnel(push: odp.TunnelPush, ports: dict[int, KernelPort]) -> list[tuple]:
    kp = ports.get(push.ofport)
    tp = kp.tunnel if kp is not None else None
    if tp is None:
        raise NotInKernel(f"tunnel port {push.ofport} has no kernel tunnel device")
    if tp.kind != "vxlan":
        raise NotInKernel(f"{tp.kind} tunnels stay in software (the kernel has no {tp.kind} device here)")
    tun = dict(push.tun)
    if any(v for n, v in tun.items() if n.startswith(("tun_ipv6", "tun_metadata"))) or \
            (tp.remote and tp.remote[0] == 6) or (tp.local and tp.local[0] == 6):
        raise NotInKernel("IPv6 underlay tunnels stay in software")
    if tp.tos != 0 or tp.ttl != 64 or tp.csum:
        raise NotInKernel("a tunnel port with its own tos, ttl or checksum setting stays in software")
    key = tun.get("tun_id", tp.key if isinstance(tp.key, int) else 0 if tp.key is None else None)
    remote = tun.get("tun_dst", tp.remote[1] if tp.remote else None)
    local = tun.get("tun_src", tp.local[1] if tp.local else 0)
    if key is None or remote is None:
        raise NotInKernel("tunnel key or remote taken from a flow field the megaflow lacks")
    if key >> 24:
        raise NotInKernel(f"VXLAN key {key:#x} is wider than 24 bits")
    return [(OP_SET_TUNNEL, 0, remote, key, local), (OP_OUTPUT, 0, kp.ifindex, 0, 0)]


# Sets the program writes into its key as well (sbnet_dp.bpf.c do_action): a ct() and the
# next pass may follow them.
_KEY_SETS = {"eth": {"eth_src", "eth_dst"},
             "ipv4": {"ip_src", "ip_dst", "ip_ttl", "nw_tos", "ip_dscp", "ip_ecn"},
             "ipv6": {"ipv6_src", "ipv6_dst", "ip_ttl", "ipv6_label", "nw_tos", "ip_dscp",
                      "ip_ecn"},
             "tcp": {"tcp_src", "tcp_dst"}, "udp": {"udp_src", "udp_dst"}}


def _keeps_key(s: odp.SetFields) -> bool:
    return all(name in _KEY_SETS.get(s.header, ()) for name, _ in s.fields)


def encode_actions(actions: tuple, ports: dict[int, KernelPort],
                   meters: set[int] = frozenset()) -> list[tuple]:
    """odp actions as kernel ops (op, h, w, a, b); NotInKernel with the reason otherwise."""
    out: list[tuple] = []
    for i, a in enumerate(actions):
        match a:
            case odp.Output(port):
                kp = _port(ports, port)
                out.append((OP_OUTPUT, OUT_F_PEER if kp.peer else 0, kp.ifindex, 0, 0))
            case odp.SetFields(header, fields):
                out += _set(header, dict(fields))
            case odp.PushVlan(tpid, tci):
                out.append((OP_PUSH_VLAN, tci & 0xEFFF, tpid, 0, 0))
            case odp.PopVlan():
                out.append((OP_POP_VLAN, 0, 0, 0, 0))
            case odp.Meter(meter_id):
                if meter_id not in meters:
                    raise NotInKernel(f"meter {meter_id} is not in the kernel meter table")
                out.append((OP_METER, 0, meter_id, 0, 0))
            case odp.Ct(zone, commit, nat, mark, label, force):
                if label is not None or force:
                    raise NotInKernel("ct() with label or force stays in software")
                if any(isinstance(b, (odp.Output, odp.TunnelPush)) for b in actions[:i]):
                    raise NotInKernel("an output before ct(): a connection the kernel does "
                                      "not hold would be sent up after part of its actions")
                if any(isinstance(b, (odp.PushVlan, odp.PopVlan)) or (
                        isinstance(b, odp.SetFields) and not _keeps_key(b)) for b in actions[:i]):
                    raise NotInKernel("a header edit before ct(): the kernel tier does not "
                                      "parse the packet again for the next pass")
                # ct(nat) translates the packets of a NATed connection the map holds; a new
                # connection given a translation (nat(src=...), nat(dst=...)) goes up.
                flags = (CT_F_COMMIT if commit else 0) | (CT_F_MARK if mark else 0) \
                    | (CT_F_NAT if nat is not None else 0) \
                    | (CT_F_NAT_NEW if nat is not None and nat.kind else 0)
                mv, mm = mark or (0, 0)
                out.append((OP_CT, zone & 0xFFFF, flags, mv, mm))
            case odp.Recirc(recirc_id):
                if i != len(actions) - 1:
                    # Two copies that each pass conntrack (a migrating port's, one for its
                    # VIF here and one for its other host): the program's next pass is the
                    # first copy's, and the second would be lost.
                    raise NotInKernel("actions after a recirculation: the kernel tier "
                                      "resumes one pass per packet")
                out.append((OP_RECIRC, 0, recirc_id, 0, 0))
            case odp.TunnelPush():
                out += _tunnel(a, ports)
            case _:
                raise NotInKernel(f"action {odp.format_actions((a,))} is not done by the kernel tier")
    if len(out) > MAX_ACTS:
        raise NotInKernel(f"{len(out)} kernel actions, more than the {MAX_ACTS} an entry holds")
    return out
