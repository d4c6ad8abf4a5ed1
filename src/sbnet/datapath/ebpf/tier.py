"""The kernel tier: megaflows and established connections in the BPF program's maps, per-entry counters back."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from sbnet.datapath.ebpf import build, layout as L, pins
from sbnet.datapath.ebpf.libbpf import (BPF_NOEXIST, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_PASS,
                                        XDP_REDIRECT, BpfError, Map, Object, test_run,
                                        xdp_test_run)
from sbnet.flows import fields as F
from sbnet.offload.placement import Placement, place
from sbnet.offload.profile import Profile, load_profile

PROFILE_FILE = Path(__file__).parent / "ebpf.yaml"
_RECIRC = F.SLOT_INDEX["recirc_id"]
# Slots whose value (not mask) placement never reads: no prerequisite, ct_state list,
# VLAN present bit, refuse_when or exact_zero policy of the ebpf profile looks at them.
# Megaflows differing only there share one placement (the kernel key codec still checks
# each megaflow itself).
_FREE_VALUES = frozenset(F.SLOT_INDEX[s] for s in (
    "in_port", "eth_src", "eth_dst", "nw_src", "nw_dst", "ipv6_src_hi", "ipv6_src_lo",
    "ipv6_dst_hi", "ipv6_dst_lo", "ipv6_label", "nw_tos", "nw_ttl", "tp_dst", "tcp_flags",
    "arp_sha", "arp_tha", "tun_id", "tun_src", "tun_dst", "ct_mark", "ct_zone"))
# On TCP, UDP and SCTP megaflows tp_src is a port, which nothing in placement reads
# (on ICMP it is the type, a prerequisite of the ND fields).
_PROTO = F.SLOT_INDEX["nw_proto"]
_L4_PROTOS = frozenset((0xFF, p) for p in (F.IP_TCP, F.IP_UDP, F.IP_SCTP))
_FREE_VALUES_L4 = _FREE_VALUES | {F.SLOT_INDEX["tp_src"]}
_TP_SRC = F.SLOT_INDEX["tp_src"]
_IN_PORT = F.SLOT_INDEX["in_port"]
_PLACEMENTS = 4096             # placements remembered
_RUN = 8                       # megaflows of one translation put together from this many
_NO_PEERS = (0,) * 12          # sb_ct_val.tcp of a connection the program does not track
_NO_NAT = (0,) * 7             # sb_ct_val.nat of a connection without NAT


@cache
def profile() -> Profile:
    """What the kernel tier takes: fields, masks and actions (placement's ebpf profile)."""
    return load_profile(PROFILE_FILE)


@dataclass(frozen=True)
class Counters:
    """Kernel counts of one megaflow not yet folded into the switch."""

    packets: int
    bytes: int
    used: float               # CLOCK_MONOTONIC seconds of the last packet (0: never)
    tcp_flags: int = 0


@dataclass
class Output:
    """One copy of a packet the program sent (test mode)."""

    ofport: int
    data: bytes               # the frame as it leaves (an accelerated VLAN tag put back in)
    tunnel: tuple[int, int, int] | None = None   # (tun_id, remote, local) when tunnelled
    mark: int = 0


@dataclass
class RunResult:
    """What BPF_PROG_RUN made of one packet."""

    verdict: str              # "forward", "drop" or "upcall"
    retval: int
    outputs: list[Output] = field(default_factory=list)
    mf_id: int | None = None
    passes: int = 0
    upcalled: bytes | None = None   # the frame that went up (an accelerated VLAN tag put back in)


def _possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _with_vlan(data: bytes, vlan: int) -> bytes:
    """The frame with an accelerated tag (tpid << 16 | tci, 0 for none) back in its bytes."""
    if not vlan:
        return data
    return data[:12] + vlan.to_bytes(4, "big") + data[12:]


class EbpfTier:
    """The BPF program and its maps, for one switch.  put() places a megaflow (installed,
    or the reason it stays in software), remove() takes it out with its last counts,
    take_counters() hands over what the kernel counted since the last take."""

    def __init__(self, capacity: int = 65536, conn_capacity: int = 65536, test: bool = False,
                 pin: str | None = None, kernel_ct: bool = False,
                 tcp_liberal: bool = False, xdp: bool = False) -> None:
        """pin: keep the maps pinned under this name (pins.pin_dir); when a previous tier
        left them there, they are taken up, with the megaflows in them as kept() entries.
        kernel_ct: new UDP connections and IPv4 ICMP queries are committed and established
        in the kernel (CFG_F_KERNEL_CT), which tells the slow path through connection
        events; whoever sets it hands down every such connection its conntrack holds in
        the kernel's zones.
        With kernel_ct TCP connections are committed on their SYN and tracked through
        their handshake here too; tcp_liberal: as a conntrack that is liberal about TCP
        windows (the slow path's, which the kernel's established segments bypass).
        xdp: load the XDP program too (bpf/sbnet_xdp.h; its verification costs about
        0.15 s, so it is loaded only when asked)."""
        profile()             # parsed now (once a process), not by the first upcall's placement
        self.test = test
        self.kernel_ct = kernel_ct
        self.tcp_liberal = tcp_liberal
        self.capacity = capacity
        self.pin = pins.pin_dir(pin) if pin else None
        reuse = pins.open_pinned(self.pin) if self.pin else None
        self.reopened = reuse is not None
        try:
            self.obj = Object(str(build.object_path()),
                              max_entries={"flows": capacity, "conns": conn_capacity,
                                           "conns6": conn_capacity},
                              reuse=reuse, skip=() if xdp else ("sbnet_xdp",))
        finally:
            for fd in (reuse or {}).values():
                os.close(fd)            # libbpf holds its own copies
        try:
            self.prog_fd = self.obj.prog_fd("sbnet_ingress")
            fd = self.obj.map_fd
            self.m_flows = Map(fd("flows"), L.FKEY.size, L.FLOW_SIZE, "flows")
            self.m_masks = Map(fd("masks"), 4, L.FKEY.size, "masks")
            self.m_config = Map(fd("config"), 4, L.CONFIG.size, "config")
            self.m_ports = Map(fd("ports"), 4, L.PORT.size, "ports")
            self.m_port_slots = Map(fd("port_slots"), 4, L.PORT_SLOT.size, "port_slots")
            self.m_conns = Map(fd("conns"), L.CT_KEY.size, L.CT_VAL.size, "conns")
            self.m_conns6 = Map(fd("conns6"), L.CT6_KEY.size, L.CT_VAL.size, "conns6")
            self.m_meters = Map(fd("meters"), 4, L.METER.size, "meters")
            self.m_zone_limits = Map(fd("zone_limits"), 4, L.ZONE.size, "zone_limits")
            self.m_zone_commits = Map(fd("zone_commits"), 4, 8, "zone_commits")
            self.m_holds = Map(fd("holds"), 4, L.HOLD.size, "holds")
            self.m_held_macs = Map(fd("held_macs"), 8, 4, "held_macs")
            self.m_trace_hdr = Map(fd("trace_hdr"), 4, L.TRACE_HDR.size, "trace_hdr")
            self.m_trace_out = Map(fd("trace_out"), 4, L.TRACE_OUT_SIZE, "trace_out")
            self._ncpu = _possible_cpus()
            self.m_stats = Map(fd("stats"), 4, 8 * self._ncpu, "stats")
            self.xdp_prog_fd = self.obj.prog_fd("sbnet_xdp") if xdp else -1
            self.m_xdp_stats = Map(fd("xdp_stats"), 4, 8 * self._ncpu, "xdp_stats")
            self.m_xdp_test_in = Map(fd("xdp_test_in"), 4, 4, "xdp_test_in")
            self.upcalls_fd = fd("upcalls")
            self.upcalls_size = self.obj.map_max_entries("upcalls")
            for m in (self.m_flows, self.m_masks, self.m_config, self.m_ports,
                      self.m_port_slots, self.m_conns,
                      self.m_conns6,
                      self.m_meters, self.m_trace_hdr, self.m_trace_out, self.m_zone_limits,
                      self.m_zone_commits, self.m_holds, self.m_held_macs):
                if self.obj.map_sizes(m.name) != (m.key_size, m.value_size):
                    raise BpfError(22, f"map {m.name}: the program's layout "
                                       f"{self.obj.map_sizes(m.name)} is not layout.py's "
                                       f"{(m.key_size, m.value_size)}")
            if self.pin is not None and not self.reopened:
                pins.pin_maps({n: fd(n) for n in pins.PINNED}, self.pin)
        except BaseException:
            self.obj.close()
            raise
        self.ports: dict[int, L.KernelPort] = {}
        self._ofport_of: dict[int, int] = {}           # ifindex -> ofport
        # port_slots (not pinned: a reopened tier's program finds kept ports in `ports`):
        # slot -> the ifindex whose copy it holds
        self._slot_of: dict[int, int] = {}
        self.meters: set[int] = set()
        self._masks: list[tuple] = []                  # mask words by position
        self._mask_ids: dict[tuple, int] = {}
        self._mask_users: dict[tuple, int] = {}
        self._next_mask_id = 1
        self._entries: dict[int, tuple[tuple, bytes]] = {}    # mf_id -> (mask, fkey)
        self._seen: dict[int, tuple[int, int]] = {}          # mf_id -> (packets, bytes) taken
        self._placements: dict[int, Placement] = {}
        self._place_cache: dict[tuple, Placement] = {}
        self._upcall_limit = (0, 0)
        self._kept: dict[bytes, tuple] = {}           # fkey -> mask of entries left to us
        self.kept_ports: dict[int, int] = {}          # ifindex -> ofport left to us
        self.held: dict[int, int] = {}                # ofport -> MAC held for it (hold())
        if self.reopened:
            self._take_up()
        self._write_config()

    def _take_up(self) -> None:
        """The state a previous tier left in the pinned maps: mask list, ports, megaflows."""
        n_masks, _, rate, burst = L.CONFIG.unpack(self.m_config.lookup(L.U32.pack(0)))
        self._upcall_limit = (rate, burst)
        by_id = {}
        for pos in range(n_masks):
            mid, _, *words = L.FKEY.unpack(self.m_masks.lookup(L.U32.pack(pos)))
            mask = tuple(words)
            self._masks.append(mask)
            self._mask_ids[mask], self._mask_users[mask], by_id[mid] = mid, 0, mask
            self._next_mask_id = max(self._next_mask_id, mid + 1)
        keys, _ = self.m_flows.items()
        for at in range(0, len(keys), L.FKEY.size):
            fkey = keys[at:at + L.FKEY.size]
            mask = by_id.get(L.U32.unpack_from(fkey)[0])
            if mask is None:
                self.m_flows.delete(fkey)     # under no mask of the list: never matched
                continue
            self._kept[fkey] = mask
            self._mask_users[mask] += 1
        for key in self.m_ports.keys():
            raw = self.m_ports.lookup(key)
            if raw is not None:
                self.kept_ports[L.U32.unpack(key)[0]] = L.PORT.unpack(raw)[0]

    def kept(self) -> list[tuple[bytes, list[int]]]:
        """Megaflow entries a previous tier left in the pinned maps: (entry key, the flow key
        they match, a value per sbnet.flows.fields slot, unmatched bits 0)."""
        out = []
        for fkey in self._kept:
            key = [0] * F.N_SLOTS
            for slot, v in zip(L.KEY_SLOTS, L.FKEY.unpack(fkey)[2:]):
                key[F.SLOT_INDEX[slot]] = v
            out.append((fkey, key))
        return out

    def drop_kept(self, fkey: bytes) -> None:
        """A kept entry goes (unless a megaflow installed since took its very key)."""
        mask = self._kept.pop(fkey, None)
        if mask is None:
            return
        if all(fk != fkey for _, fk in self._entries.values()):
            self.m_flows.delete(fkey)
        self._mask_users[mask] -= 1
        if not self._mask_users[mask]:
            self._drop_mask(mask)

    def conns_kept(self) -> list[tuple]:
        """The connection map's entries: (zone, proto, src, dst, sport, dport, state, mark),
        ports as conntrack's tuple words."""
        keys, vals = self.m_conns.items()
        k = np.frombuffer(keys, dtype=L.CT_KEY_DTYPE)
        v = np.frombuffer(vals, dtype=L.CT_VAL_DTYPE)
        return [(z, p, src, dst, *L.tuple_ports(p, sp, dp), st, mark) for z, p, src, dst, sp, dp, st, mark
                in zip(k["zone"].tolist(), k["proto"].tolist(), k["src"].tolist(),
                       k["dst"].tolist(), k["sport"].tolist(), k["dport"].tolist(),
                       v["state"].tolist(), v["mark"].tolist())]

    # -- configuration ----------------------------------------------------------------
    def _write_config(self) -> None:
        flags = (L.CFG_F_TEST if self.test else 0) | (L.CFG_F_KERNEL_CT if self.kernel_ct else 0) \
            | (L.CFG_F_TCP_LIBERAL if self.tcp_liberal else 0) | (L.CFG_F_HOLDS if self.held else 0)
        self.m_config.update(L.U32.pack(0), L.CONFIG.pack(len(self._masks), flags,
                                                          *self._upcall_limit))

    def set_tcp_liberal(self, liberal: bool) -> None:
        """Whether the TCP state machine of handshakes in the kernel is liberal about
        windows (as the slow path's conntrack must be then)."""
        self.tcp_liberal = liberal
        self._write_config()

    def set_kernel_ct(self, on: bool) -> None:
        """Whether the program commits new IPv4 UDP connections and TCP SYNs itself."""
        self.kernel_ct = on
        self._write_config()

    def set_upcall_limit(self, rate: int, burst: int) -> None:
        """Upcalls per second (and burst) each port may send up; 0 turns the limit off."""
        self._upcall_limit = (rate, burst)
        self._write_config()

    def add_port(self, ofport: int, ifindex: int, tunnel=None, xdp_out: bool = False,
                 peer: bool = False) -> None:
        """Switch port `ofport` is the kernel device `ifindex` (tunnel: its TunnelPort);
        xdp_out: the XDP program may redirect frames to it; peer: a veth whose other end
        is in another namespace (a packet's last output enters that end directly)."""
        flags = ((L.PORT_F_TUNNEL if tunnel is not None else 0) | (L.PORT_F_XDP_OUT if xdp_out else 0)
                 | (L.PORT_F_PEER if peer else 0))
        self.release(ofport)
        self.m_ports.update(L.U32.pack(ifindex), L.PORT.pack(ofport, flags))
        self.ports[ofport] = L.KernelPort(ofport, ifindex, tunnel, peer)
        self._ofport_of[ifindex] = ofport
        self._slot_put(ifindex, ofport, flags)

    def remove_port(self, ofport: int) -> None:
        self.release(ofport)
        kp = self.ports.pop(ofport, None)
        if kp is not None:
            self.m_ports.delete(L.U32.pack(kp.ifindex))
            self._ofport_of.pop(kp.ifindex, None)
            self._slot_drop(kp.ifindex)

    def _slot_put(self, ifindex: int, ofport: int, flags: int) -> None:
        """The port's copy in port_slots, unless another port holds its slot.  The ifindex
        goes in last: a packet reading the slot meanwhile never takes another port's number
        or flags for this one (an array update is not atomic to the program)."""
        at = ifindex % L.PORT_SLOTS
        if self._slot_of.setdefault(at, ifindex) != ifindex:
            return
        key = L.U32.pack(at)
        self.m_port_slots.update(key, L.PORT_SLOT.pack(0, ofport, flags))
        self.m_port_slots.update(key, L.PORT_SLOT.pack(ifindex, ofport, flags))

    def _slot_drop(self, ifindex: int) -> None:
        """A removed port's slot emptied, then given to another port of that slot."""
        at = ifindex % L.PORT_SLOTS
        if self._slot_of.get(at) != ifindex:
            return
        del self._slot_of[at]
        self.m_port_slots.update(L.U32.pack(at), L.PORT_SLOT.pack(0, 0, 0))
        for kp in self.ports.values():
            if kp.ifindex % L.PORT_SLOTS == at:
                raw = self.m_ports.lookup(L.U32.pack(kp.ifindex))
                if raw is not None:
                    self._slot_put(kp.ifindex, *L.PORT.unpack(raw))
                break

    # -- a VM arriving by live migration (bpf/sbnet_hold.h) ---------------------------------
    def hold(self, ofport: int, mac: int) -> None:
        """Keep what tunnels bring for `mac` (48-bit int) from VIF `ofport` until it sends its
        first frame, which releases the hold in the kernel (hold_state() then says when)."""
        kp = self.ports[ofport]
        self.release(ofport)
        key = L.U32.pack(kp.ifindex)
        self.m_holds.update(key, L.HOLD.pack(mac, time.monotonic_ns(), 0, 0, 0, 0, 0,
                                             *(0,) * (2 * L.MAX_INSIDE), 0, 0))
        self.m_held_macs.update(mac.to_bytes(8, "little"), key)
        self.held[ofport] = mac
        self._write_config()
        self._port_flags(kp, set_=L.PORT_F_HELD)

    def keep_relay(self, ofport: int, relay: tuple) -> None:
        """Once VIF `ofport`'s VM runs here and is announced: until release() what the host
        it left relays of its floating IP's traffic is kept from the VIF (relay: that
        host's tunnel endpoint, its router's MAC, [(address, mask), ...] of the router's
        subnets; ints).  No-op unless the VIF is held (released or not)."""
        kp = self.ports.get(ofport)
        raw = self.m_holds.lookup(L.U32.pack(kp.ifindex)) if kp and ofport in self.held else None
        if raw is None:
            return
        mac, since, released, dropped, *_ = L.HOLD.unpack(raw)
        src, router, inside = relay
        inside = list(inside)[:L.MAX_INSIDE]
        words = [w for pair in inside for w in pair] + [0] * (2 * (L.MAX_INSIDE - len(inside)))
        self.m_holds.update(L.U32.pack(kp.ifindex), L.HOLD.pack(
            mac, since, released, dropped, L.HOLD_F_RELAY, src, router, *words, len(inside), 0))

    def hold_state(self, ofport: int) -> tuple[float, float, int] | None:
        """(held since, released at or 0.0, tunnel frames dropped) in time.monotonic()
        seconds, None when `ofport` is not held."""
        kp = self.ports.get(ofport)
        raw = self.m_holds.lookup(L.U32.pack(kp.ifindex)) if kp and ofport in self.held else None
        if raw is None:
            return None
        _, since, released, dropped, *_ = L.HOLD.unpack(raw)
        return since / 1e9, released / 1e9, dropped

    def release(self, ofport: int) -> None:
        """Take the hold off (no-op if none): the VM's traffic is delivered again."""
        mac = self.held.pop(ofport, None)
        kp = self.ports.get(ofport)
        if mac is None or kp is None:
            return
        self._port_flags(kp, clear=L.PORT_F_HELD)
        self.m_held_macs.delete(mac.to_bytes(8, "little"))
        self.m_holds.delete(L.U32.pack(kp.ifindex))
        self._write_config()

    def _port_flags(self, kp: L.KernelPort, set_: int = 0, clear: int = 0) -> None:
        key = L.U32.pack(kp.ifindex)
        raw = self.m_ports.lookup(key)
        if raw is not None:
            ofport, flags = L.PORT.unpack(raw)
            flags = (flags | set_) & ~clear
            self.m_ports.update(key, L.PORT.pack(ofport, flags))
            self._slot_put(kp.ifindex, ofport, flags)

    # -- megaflows -----------------------------------------------------------------
    def placement(self, mf_id: int) -> Placement | None:
        return self._placements.get(mf_id)

    def installed(self, mf_id: int) -> bool:
        return mf_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, mf, pending: list | None = None) -> Placement:
        """Install a megaflow in the kernel if this tier can run it; the placement says why not.
        pending: a list to append the (key, value) entry to instead of writing it now."""
        p = self._place(mf)
        if p.tier == "nic":
            try:
                why = (L.in_port_refusal(mf.slots, mf.mask, mf.value, self.ports)
                       or L.new_state_refusal(mf.slots, mf.mask, mf.value, self.kernel_ct))
                if why:
                    raise L.NotInKernel(why)
                mask, value = L.key_words(mf.slots, mf.mask, mf.value)
                acts = L.encode_actions(mf.actions, self.ports, self.meters)
                if mask not in self._mask_ids and len(self._masks) >= L.MAX_MASKS:
                    raise L.NotInKernel(f"the kernel mask list is full ({L.MAX_MASKS} masks)")
                if len(self._entries) >= self.capacity and mf.mf_id not in self._entries:
                    raise L.NotInKernel(f"the kernel flow table is full ({self.capacity} entries)")
            except L.NotInKernel as exc:
                p = Placement("software", f"ebpf: {exc}")
            else:
                self._install(mf.mf_id, mask, value, acts, pending)
                p = Placement("ebpf", p.reason.replace("offloadable to", "in the kernel tier:"),
                              p.needs_ct)
        self._placements[mf.mf_id] = p
        return p

    def _place(self, mf) -> Placement:
        """place() with the ebpf profile, remembered for megaflows that differ only in the
        values of _FREE_VALUES slots (placement is most of an install's cost)."""
        free = _FREE_VALUES
        if dict(zip(mf.slots, zip(mf.mask, mf.value))).get(_PROTO, (0, 0)) in _L4_PROTOS:
            free = _FREE_VALUES_L4
        key = (mf.slots, mf.mask, mf.actions,
               tuple(None if s in free else (v != 0 if s == _RECIRC else v)
                     for s, v in zip(mf.slots, mf.value)))
        p = self._place_cache.get(key)
        if p is None:
            if len(self._place_cache) >= _PLACEMENTS:
                self._place_cache.clear()
            p = self._place_cache[key] = place(profile(), mf)
        return p

    def put_many(self, mfs) -> list[Placement]:
        """put() of several megaflows, their kernel entries written in one system call.
        A run of megaflows of one translation (the very same mask and actions, as
        Bridge.upcall_same makes them) is placed once per distinct value placement reads,
        its actions encoded once and its entries packed together."""
        pending: list[tuple[bytes, bytes]] = []
        out: list[Placement] = []
        i, n = 0, len(mfs)
        while i < n:
            mf = mfs[i]
            j = i + 1
            while j < n and mfs[j].slots is mf.slots and mfs[j].mask is mf.mask \
                    and mfs[j].actions is mf.actions:
                j += 1
            got = self._put_run(mfs[i:j], pending) if j - i >= _RUN else None
            out += got if got is not None else [self.put(m, pending) for m in mfs[i:j]]
            i = j
        if pending:
            self.m_flows.update_batch(b"".join(k for k, _ in pending),
                                      b"".join(v for _, v in pending))
        return out

    def _put_run(self, run: list, pending: list) -> list[Placement] | None:
        """put() of megaflows of one mask and actions, each placed as put() would place it;
        None (nothing done) when any would not go in as put() puts one: the caller then
        puts them one by one, which says why."""
        mf0 = run[0]
        if any(mf.mf_id in self._entries for mf in run):
            return None
        values = np.array([mf.value for mf in run], dtype=np.uint64).reshape(len(run), -1)
        if _IN_PORT in mf0.slots and not np.isin(values[:, mf0.slots.index(_IN_PORT)],
                                                 list(self.ports)).all():
            return None
        cols = [j for j, s in enumerate(mf0.slots) if s not in _FREE_VALUES_L4]
        if _TP_SRC in mf0.slots and not self._l4_only(mf0, values):
            cols.append(mf0.slots.index(_TP_SRC))
        _, first, which = np.unique(values[:, cols], axis=0, return_index=True,
                                    return_inverse=True)
        placed = []
        for f in first.tolist():
            p = self._place(run[f])
            if p.tier != "nic" or L.new_state_refusal(mf0.slots, mf0.mask, run[f].value,
                                                      self.kernel_ct):
                return None
            placed.append(Placement("ebpf", p.reason.replace("offloadable to",
                                                             "in the kernel tier:"), p.needs_ct))
        try:
            mask, words, bad = L.key_words_many(mf0.slots, mf0.mask, values)
            acts = L.encode_actions(mf0.actions, self.ports, self.meters)
        except L.NotInKernel:
            return None
        if bad.any() or (mask not in self._mask_ids and len(self._masks) >= L.MAX_MASKS) \
                or len(self._entries) + len(run) > self.capacity:
            return None
        mid = self._mask_id(mask)
        ids = np.array([mf.mf_id for mf in run], dtype=np.int64)
        keys = L.pack_fkeys(mid, words)
        pending.append((keys, L.pack_flows(ids, acts)))
        size = L.FKEY.size
        self._mask_users[mask] += len(run)
        for k, mf_id in enumerate(ids.tolist()):
            self._entries[mf_id] = (mask, keys[k * size:(k + 1) * size])
            self._seen[mf_id] = (0, 0)
        out = [placed[w] for w in which.reshape(-1).tolist()]
        self._placements.update(zip(ids.tolist(), out))
        return out

    @staticmethod
    def _l4_only(mf, values: np.ndarray) -> bool:
        """Whether every megaflow of a run matches TCP, UDP or SCTP exactly (tp_src a port)."""
        if _PROTO not in mf.slots:
            return False
        j = mf.slots.index(_PROTO)
        protos = {(mf.mask[j], int(v)) for v in np.unique(values[:, j]).tolist()}
        return protos <= _L4_PROTOS

    def _mask_id(self, mask: tuple) -> int:
        """The id of a mask in the kernel's mask list, added to it when new."""
        mid = self._mask_ids.get(mask)
        if mid is None:
            mid = self._mask_ids[mask] = self._next_mask_id
            self._next_mask_id += 1
            self._masks.append(mask)
            self._mask_users[mask] = 0
            self.m_masks.update(L.U32.pack(len(self._masks) - 1), L.FKEY.pack(mid, 0, *mask))
            self._write_config()
        return mid

    def _install(self, mf_id: int, mask: tuple, value: tuple, acts: list,
                 pending: list | None = None) -> None:
        if mf_id in self._entries:
            self.remove(mf_id)
        mid = self._mask_id(mask)
        fkey = L.pack_fkey(mid, value)
        if pending is None:
            self.m_flows.update(fkey, L.pack_flow(mf_id, acts))
        else:
            pending.append((fkey, L.pack_flow(mf_id, acts)))
        self._mask_users[mask] += 1
        self._entries[mf_id] = (mask, fkey)
        self._seen[mf_id] = (0, 0)

    def remove(self, mf_id: int) -> Counters:
        """Take a megaflow out of the kernel; returns its counts not yet taken."""
        self._placements.pop(mf_id, None)
        entry = self._entries.pop(mf_id, None)
        if entry is None:
            return Counters(0, 0, 0.0)
        mask, fkey = entry
        raw = self.m_flows.lookup(fkey)
        self.m_flows.delete(fkey)
        c = self._delta(mf_id, raw)
        self._seen.pop(mf_id, None)
        self._mask_users[mask] -= 1
        if not self._mask_users[mask]:
            self._drop_mask(mask)
        return c

    def _drop_mask(self, mask: tuple) -> None:
        del self._mask_users[mask], self._mask_ids[mask]
        pos = self._masks.index(mask)
        last = self._masks.pop()
        if pos < len(self._masks):
            # The last mask moves into the hole before the list shrinks: a packet in flight
            # may miss once (and go up), never match a wrong entry.
            self._masks[pos] = last
            self.m_masks.update(L.U32.pack(pos), L.FKEY.pack(self._mask_ids[last], 0, *last))
        self._write_config()

    def _delta(self, mf_id: int, raw: bytes | None) -> Counters:
        if raw is None:
            return Counters(0, 0, 0.0)
        pk, by, used, _, flags, _, _ = L.FLOW_HEAD.unpack_from(raw)
        seen_pk, seen_by = self._seen.get(mf_id, (0, 0))
        self._seen[mf_id] = (pk, by)
        return Counters(pk - seen_pk, by - seen_by, used / 1e9, flags)

    def take_counters(self) -> dict[int, Counters]:
        """Kernel counts since the last take, by megaflow id (only those that moved)."""
        out = {}
        for mf_id, (_, fkey) in self._entries.items():
            c = self._delta(mf_id, self.m_flows.lookup(fkey))
            if c.packets:
                out[mf_id] = c
        return out

    def flush(self) -> None:
        for mf_id in list(self._entries):
            self.remove(mf_id)

    # -- connections and meters ----------------------------------------------------------
    def add_conn(self, zone: int, proto: int, src: int, dst: int, sport: int, dport: int,
                 state: int, mark: int = 0) -> None:
        """One direction of an established connection the slow path committed."""
        self.m_conns.update(_ct_key(zone, proto, src, dst, sport, dport),
                            L.CT_VAL.pack(state, mark, 0, 0, 0, *_NO_PEERS, *_NO_NAT))

    def add_conn_if_absent(self, zone: int, proto: int, src: int, dst: int, sport: int,
                           dport: int, state: int) -> bool:
        """One direction, unless the map holds that key already; whether it was added."""
        try:
            self.m_conns.update(_ct_key(zone, proto, src, dst, sport, dport),
                                L.CT_VAL.pack(state, 0, 0, 0, 0, *_NO_PEERS, *_NO_NAT),
                                BPF_NOEXIST)
        except BpfError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        return True

    def add_conns(self, keys: bytes, values: bytes) -> None:
        """Directions of established connections, packed (layout.CT_KEY_DTYPE and
        CT_VAL_DTYPE records), in one system call."""
        self.m_conns.update_batch(keys, values)

    def remove_conn(self, zone: int, proto: int, src: int, dst: int, sport: int, dport: int) -> None:
        self.m_conns.delete(_ct_key(zone, proto, src, dst, sport, dport))

    def add_conns6(self, keys: bytes, values: bytes) -> None:
        """Directions of established IPv6 connections (layout.CT6_KEY_DTYPE and
        CT_VAL_DTYPE records), in one system call."""
        self.m_conns6.update_batch(keys, values)

    def remove_conn6(self, zone: int, proto: int, src: int, dst: int, sport: int,
                     dport: int) -> None:
        """One direction of an IPv6 connection (src, dst: 128-bit ints)."""
        m = (1 << 64) - 1
        self.m_conns6.delete(L.CT6_KEY.pack(zone, proto, 0, *L.key_ports(proto, sport, dport),
                                            src >> 64, src & m, dst >> 64, dst & m))

    def conn_used(self, zone: int, proto: int, src: int, dst: int, sport: int,
                  dport: int) -> tuple[int, int, float] | None:
        """(packets, bytes, last used) the kernel counted for one direction of a connection."""
        raw = self.m_conns.lookup(_ct_key(zone, proto, src, dst, sport, dport))
        if raw is None:
            return None
        _, _, pk, by, used = L.CT_VAL.unpack(raw)[:5]
        return pk, by, used / 1e9

    def set_zone_limit(self, zone: int, limit: int, base: int) -> None:
        """Zone `zone` may hold `limit` connections (0: no limit), `base` of them held already
        besides those the program committed and the slow path has not taken up."""
        self.m_zone_limits.update(L.U32.pack(zone), L.ZONE.pack(limit, 0, base))

    def zone_commits(self) -> dict[int, int]:
        """Connections the program has committed in each zone since its maps were made
        (zones with none left out)."""
        keys, vals = self.m_zone_commits.items()
        z = np.frombuffer(keys, dtype="<u4")
        n = np.frombuffer(vals, dtype="<u8")
        return dict(zip(z[n > 0].tolist(), n[n > 0].tolist()))

    def set_meter(self, dp_id: int, rate: int, burst: int, packets: bool) -> None:
        """A drop-band meter: `rate` kbit/s (or packets/s), `burst` kbit (or packets); full bucket."""
        tokens_rate = rate if packets else rate * 1000 // 8          # packets or bytes per second
        cap = burst if packets else burst * 1000 // 8
        self.m_meters.update(L.U32.pack(dp_id), L.METER.pack(
            tokens_rate, cap, cap * 10**9, time.monotonic_ns(), 1 if packets else 0, 0, 0, 0, 0, 0,
            0, 0))
        self.meters.add(dp_id)

    def remove_meter(self, dp_id: int) -> None:
        self.meters.discard(dp_id)
        self.m_meters.delete(L.U32.pack(dp_id))

    def meter_counts(self, dp_id: int) -> tuple[int, int]:
        """(passed, dropped) packets of a kernel meter."""
        return self.meter_totals(dp_id)[:2]

    def meter_totals(self, dp_id: int) -> tuple[int, int, int, int]:
        """(passed, dropped) packets then (passed, dropped) bytes of a kernel meter."""
        raw = self.m_meters.lookup(L.U32.pack(dp_id))
        if raw is None:
            return 0, 0, 0, 0
        v = L.METER.unpack(raw)
        return v[6], v[7], v[8], v[9]

    def stats(self) -> dict[str, int]:
        """The program's counters (L.STATS), and the XDP program's (L.XDP_STATS)."""
        out = {}
        for m, names in ((self.m_stats, L.STATS), (self.m_xdp_stats, L.XDP_STATS)):
            for i, name in enumerate(names):
                raw = m.lookup(L.U32.pack(i)) or bytes(8 * self._ncpu)
                out[name] = sum(int.from_bytes(raw[j:j + 8], "little") for j in range(0, len(raw), 8))
        return out

    # -- BPF_PROG_RUN --------------------------------------------------------------------
    def run(self, frame: bytes, in_port: int, tun: tuple[int, int, int] | None = None,
            repeat: int = 1) -> RunResult:
        """Run one frame through the loaded program as if it arrived on `in_port`
        (tun: (tun_id, tun_src, tun_dst) it arrived with); test mode only."""
        if not self.test:
            raise BpfError(22, "run() needs the tier in test mode (EbpfTier(test=True))")
        kp = self.ports.get(in_port)
        if kp is None:
            raise ValueError(f"port {in_port} has no kernel device")
        t = tun or (0, 0, 0)
        res = test_run(self.prog_fd, frame, cb=(kp.ifindex, t[0], t[1], t[2]), repeat=repeat)
        n_out, verdict, mf_id, passes = L.TRACE_HDR.unpack(self.m_trace_hdr.lookup(L.U32.pack(0)))
        outs = []
        name = L.VERDICTS.get(verdict, "none")
        # An upcall leaves the frame it sent up in the first slot.
        for i in range(1 if name == "upcall" else min(n_out, L.MAX_OUT)):
            raw = self.m_trace_out.lookup(L.U32.pack(i))
            ifindex, ln, vlan, tunset, tun_id, tun_dst, tun_src, mark, _ = \
                L.TRACE_OUT_HEAD.unpack_from(raw)
            data = raw[L.TRACE_OUT_HEAD.size:L.TRACE_OUT_HEAD.size + ln]
            outs.append(Output(self._ofport_of.get(ifindex, -1), _with_vlan(data, vlan),
                               (tun_id, tun_dst, tun_src) if tunset else None, mark))
        upcalled = outs.pop().data if name == "upcall" else None
        if name == "forward" and res.retval != TC_ACT_REDIRECT:
            raise AssertionError(f"forward verdict with TC return code {res.retval}")
        if name in ("drop", "upcall") and res.retval != TC_ACT_SHOT:
            raise AssertionError(f"{name} verdict with TC return code {res.retval}")
        return RunResult(name, res.retval, outs, mf_id if passes else None, passes, upcalled)

    def run_xdp(self, frame: bytes, in_port: int) -> RunResult:
        """Run one frame through the XDP program as if it arrived on `in_port` (test mode):
        "forward" with its one output, or "pass" (to the TC program)."""
        if not self.test or self.xdp_prog_fd < 0:
            raise BpfError(22, "run_xdp() needs the tier in test mode with XDP "
                               "(EbpfTier(test=True, xdp=True))")
        self.m_xdp_test_in.update(L.U32.pack(0), L.U32.pack(self.ports[in_port].ifindex))
        res = xdp_test_run(self.xdp_prog_fd, frame)
        n_out, verdict, mf_id, passes = L.TRACE_HDR.unpack(self.m_trace_hdr.lookup(L.U32.pack(0)))
        if res.retval == XDP_PASS and not verdict:
            return RunResult("pass", res.retval, [], None, 0, None)
        if res.retval != XDP_REDIRECT or L.VERDICTS.get(verdict) != "forward":
            raise AssertionError(f"XDP return code {res.retval} with verdict {verdict}")
        ifindex = L.TRACE_OUT_HEAD.unpack_from(self.m_trace_out.lookup(L.U32.pack(0)))[0]
        out = Output(self._ofport_of.get(ifindex, -1), res.data, None, 0)
        return RunResult("forward", res.retval, [out], mf_id, passes, None)

    def bench(self, frame: bytes, in_port: int, repeat: int) -> int:
        """Average ns per run of `frame` over `repeat` runs in the kernel (BPF_PROG_RUN)."""
        kp = self.ports[in_port]
        res = test_run(self.prog_fd, frame, cb=(kp.ifindex,), repeat=repeat, ifindex=kp.ifindex)
        if res.retval not in (TC_ACT_REDIRECT, TC_ACT_SHOT):
            raise BpfError(22, f"the program did not take the packet (TC return code {res.retval})")
        return res.duration_ns

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> EbpfTier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@cache
def available() -> str | None:
    """None when this process can load BPF programs here, else the reason it cannot (asked
    once a process: every kernel-tier test asks)."""
    if os.geteuid() != 0:
        return "the kernel tier needs root (CAP_BPF and CAP_NET_ADMIN)"
    try:
        EbpfTier(capacity=16, conn_capacity=16).close()
    except (BpfError, OSError) as exc:
        return str(exc)
    return None


def _ct_key(zone: int, proto: int, src: int, dst: int, sport: int, dport: int) -> bytes:
    """An IPv4 connection map key; ports as conntrack's tuple words (layout.key_ports)."""
    return L.CT_KEY.pack(zone, proto, 0, *L.key_ports(proto, sport, dport), src, dst)
