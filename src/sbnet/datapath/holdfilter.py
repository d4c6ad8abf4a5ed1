"""A kernel socket filter for an underlay port: tunnel frames addressed to a VM that has not arrived yet, or relayed late from the host it left, are dropped before the switch reads them."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from dataclasses import dataclass

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

# Classic BPF opcodes (linux/filter.h), those the program uses.
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_W_IND, _LD_H_IND, _LD_B_IND = 0x40, 0x48, 0x50
_LDX_IMM, _LDX_MSH = 0x01, 0xB1
_JA, _JEQ, _JSET = 0x05, 0x15, 0x45
_AND, _LSH, _ADD_X, _TAX = 0x54, 0x64, 0x0C, 0x07
_RET = 0x06

ACCEPT = 0x40000            # a snap length longer than any frame: the whole frame
# A conditional jump reaches 255 instructions on: the early accepts jump over every MAC's
# four, so one filter drops the frames of this many MACs at most (more pass unfiltered).
MAX_MACS = 48
ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP = 0x0800, 0x86DD, 17


@dataclass(frozen=True)
class Relay:
    """What the host a VM left still relays to it, routed, from outside its router's
    subnets (its floating IP's traffic, NATed there while the outside's switches still sent
    there): over IPv4 from tunnel endpoint `source`, from `router_mac` to `mac`, IPv4, from
    an address on none of `inside` (CIDRs).  Once the VM runs here and has announced its
    floating IP, the outside sends here, and a copy relayed late arrives behind the
    outside's own retransmission of an earlier segment: its older timestamp has the VM's
    TCP discard it (PAWS) and the stream waits for a retransmission timeout.  Dropped,
    the outside retransmits it as it does any loss."""

    source: str
    mac: str
    router_mac: str
    inside: tuple[str, ...] = ()


def program(macs: list[str], vxlan_ports: list[int], geneve_ports: list[int],
            relays: list[Relay] = ()) -> list[tuple]:
    """(code, jt, jf, k) instructions that drop a VXLAN or Geneve frame over IPv4 (not a
    fragment's tail) or IPv6 (UDP right after the fixed header) whose inner destination
    MAC is one of `macs`, or that one of `relays` describes (IPv4 underlay only), and
    accept everything else.  With X the outer IP header's length, the UDP destination port
    is at X+16 and the inner frame at X+30 (VXLAN; Geneve after its options, whose length X
    takes on).  At most MAX_MACS MACs; ValueError beyond, or when the relays make the
    program too long for its jumps."""
    if len(macs) > MAX_MACS:
        raise ValueError(f"one filter holds at most {MAX_MACS} MACs")
    code: list[list] = []                    # [op, jt label, jf label, k]; labels resolved below
    labels: dict[str, int] = {}

    def emit(op: int, k: int = 0, jt: str | None = None, jf: str | None = None) -> None:
        code.append([op, jt, jf, k])

    def label(name: str) -> None:
        labels[name] = len(code)

    emit(_LD_H_ABS, 12)
    emit(_JEQ, ETH_P_IP, jt="v4", jf="not4")
    label("not4")
    emit(_JEQ, ETH_P_IPV6, jt="v6", jf="accept")
    label("v6")
    emit(_LD_B_ABS, 20)
    emit(_JEQ, IPPROTO_UDP, jt="v6udp", jf="accept")
    label("v6udp")
    emit(_LDX_IMM, 40)
    emit(_JA, jt="udp")
    label("v4")
    emit(_LD_B_ABS, 23)
    emit(_JEQ, IPPROTO_UDP, jt="v4udp", jf="accept")
    label("v4udp")
    emit(_LD_H_ABS, 20)
    emit(_JSET, 0x1FFF, jt="accept", jf="v4head")
    label("v4head")
    emit(_LDX_MSH, 14)
    label("udp")
    emit(_LD_H_IND, 16)
    for i, p in enumerate(vxlan_ports):
        emit(_JEQ, p, jt="inner", jf=f"vx{i}")
        label(f"vx{i}")
    for i, p in enumerate(geneve_ports):
        emit(_JEQ, p, jt="geneve", jf=f"gn{i}")
        label(f"gn{i}")
    emit(_JA, jt="accept")
    label("geneve")
    emit(_LD_B_IND, 22)                     # version and option length (4-byte words)
    emit(_AND, 0x3F)
    emit(_LSH, 2)
    emit(_ADD_X)
    emit(_TAX)
    label("inner")
    for i, mac in enumerate(macs):
        b = bytes.fromhex(mac.replace(":", ""))
        emit(_LD_W_IND, 30)
        emit(_JEQ, int.from_bytes(b[:4], "big"), jt=f"lo{i}", jf=f"mac{i + 1}")
        label(f"lo{i}")
        emit(_LD_H_IND, 34)
        emit(_JEQ, int.from_bytes(b[4:], "big"), jt="drop", jf=f"mac{i + 1}")
        label(f"mac{i + 1}")
    for i, r in enumerate(relays):
        nxt = f"relay{i + 1}"
        for off, mac in ((30, r.mac), (36, r.router_mac)):
            b = bytes.fromhex(mac.replace(":", ""))
            emit(_LD_W_IND, off)
            emit(_JEQ, int.from_bytes(b[:4], "big"), jf=nxt)
            emit(_LD_H_IND, off + 4)
            emit(_JEQ, int.from_bytes(b[4:], "big"), jf=nxt)
        emit(_LD_H_IND, 42)
        emit(_JEQ, ETH_P_IP, jf=nxt)
        emit(_LD_H_ABS, 12)                 # the underlay's own header: IPv4, from the source
        emit(_JEQ, ETH_P_IP, jf=nxt)
        emit(_LD_W_ABS, 26)
        emit(_JEQ, int(ipaddress.IPv4Address(r.source)), jf=nxt)
        for net in map(ipaddress.IPv4Network, r.inside):
            emit(_LD_W_IND, 56)             # the inner IPv4 source
            emit(_AND, int(net.netmask))
            emit(_JEQ, int(net.network_address), jt=nxt)
        emit(_JA, jt="drop")
        label(nxt)
    label("accept")
    emit(_RET, ACCEPT)
    label("drop")
    emit(_RET, 0)
    out = []
    for at, (op, jt, jf, k) in enumerate(code):
        if op == _JA:                      # an unconditional jump's offset is its k
            k, jt, jf = labels[jt] - at - 1, None, None
        t = labels[jt] - at - 1 if jt else 0
        f = labels[jf] - at - 1 if jf else 0
        if not (0 <= t < 256 and 0 <= f < 256):
            raise ValueError("too many held addresses for one filter")
        out.append((op, t, f, k))
    return out


def attach(sock: socket.socket, prog: list[tuple] | None) -> None:
    """Put `prog` on the socket (replacing any filter there), or take it off (None)."""
    if prog is None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        except OSError:                    # none attached
            pass
        return
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
