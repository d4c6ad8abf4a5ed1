"""What a running agent's kernel tier holds, read from its pinned maps by another process: megaflow entries with counters and actions, connections, the program's counters (sbnet dpctl --host)."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import numpy as np

from sbnet.datapath.ebpf import layout as L
from sbnet.datapath.ebpf.libbpf import Map
from sbnet.datapath.ebpf.pins import open_pinned, pin_dir
from sbnet.datapath.format import megaflow_text
from sbnet.flows import fields as F

_OPS = {getattr(L, n): n[3:].lower() for n in dir(L) if n.startswith("OP_")}


class Pinned:
    """The pinned maps of the switch named `name` (an agent's host name), opened read-only
    in spirit: nothing here writes to them."""

    def __init__(self, name: str, netns: str | None = None) -> None:
        fds = open_pinned(pin_dir(name))
        if fds is None:
            raise FileNotFoundError(f"no kernel tier is pinned as {name!r} "
                                    f"(under {pin_dir(name)})")
        self.fds, self.netns = fds, netns
        self.flows = Map(fds["flows"], L.FKEY.size, L.FLOW_SIZE, "flows")
        self.masks = Map(fds["masks"], 4, L.FKEY.size, "masks")
        self.ports = Map(fds["ports"], 4, L.PORT.size, "ports")
        self.conns = Map(fds["conns"], L.CT_KEY.size, L.CT_VAL.size, "conns")
        self.conns6 = Map(fds["conns6"], L.CT6_KEY.size, L.CT_VAL.size, "conns6")
        self.config = Map(fds["config"], 4, L.CONFIG.size, "config")
        self.stats_map = fds["stats"]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)

    def __enter__(self) -> Pinned:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _devices(self) -> dict[int, str]:
        """ifindex -> 'name(ofport)' for the switch's ports."""
        from sbnet.datapath.afpacket import in_netns
        out = {}
        with in_netns(self.netns):
            for key in self.ports.keys():
                ifindex = L.U32.unpack(key)[0]
                raw = self.ports.lookup(key)
                name = str(ifindex)
                with contextlib.suppress(OSError):
                    name = socket.if_indextoname(ifindex)
                out[ifindex] = f"{name}({L.PORT.unpack(raw)[0]})" if raw else name
        return out

    def dump_flows(self) -> list[str]:
        """One line per kernel megaflow entry, as `ovs-dpctl dump-flows` prints them:
        match, packets, bytes, used, actions (outputs by device and port)."""
        n_masks = L.CONFIG.unpack(self.config.lookup(L.U32.pack(0)))[0]
        masks = {}
        for pos in range(n_masks):
            raw = self.masks.lookup(L.U32.pack(pos))
            if raw:
                mid, _, *words = L.FKEY.unpack(raw)
                masks[mid] = words
        keys, vals = self.flows.items()
        devices = self._devices()
        now = time.monotonic()
        lines = []
        n = len(keys) // L.FKEY.size
        heads = np.frombuffer(b"".join(vals[i * L.FLOW_SIZE:i * L.FLOW_SIZE + L.FLOW_HEAD.size]
                                       for i in range(n)), dtype=L.FLOW_HEAD_DTYPE)
        for i in range(n):
            mid, _, *words = L.FKEY.unpack_from(keys, i * L.FKEY.size)
            mask = masks.get(mid)
            if mask is None:
                continue
            key, wc = [0] * F.N_SLOTS, [0] * F.N_SLOTS
            for slot, v, m in zip(L.KEY_SLOTS, words, mask):
                key[F.SLOT_INDEX[slot]], wc[F.SLOT_INDEX[slot]] = v, m
            h = heads[i]
            used = f"{now - int(h['used']) / 1e9:.3f}s" if h["used"] else "never"
            acts = [L.ACT.unpack_from(vals, i * L.FLOW_SIZE + L.FLOW_HEAD.size + j * L.ACT.size)
                    for j in range(int(h["n_acts"]))]
            lines.append(f"{megaflow_text(key, wc)}, packets:{int(h['packets'])}, "
                         f"bytes:{int(h['bytes'])}, used:{used}, actions:"
                         f"{','.join(_action(a, devices) for a in acts) or 'drop'}")
        return sorted(lines)

    def show(self) -> dict[str, int]:
        """The program's counters (summed over CPUs) with the entries in each map."""
        from sbnet.datapath.ebpf.tier import _possible_cpus
        ncpu = _possible_cpus()
        stats = Map(self.stats_map, 4, 8 * ncpu, "stats")
        out = {"flows": len(self.flows.keys()),
               "masks": L.CONFIG.unpack(self.config.lookup(L.U32.pack(0)))[0],
               "ports": len(self.ports.keys()), "connections": len(self.conns.keys()) // 2,
               "connections6": len(self.conns6.keys()) // 2}
        for i, name in enumerate(L.STATS):
            raw = stats.lookup(L.U32.pack(i)) or bytes(8 * ncpu)
            out[name] = sum(int.from_bytes(raw[j:j + 8], "little") for j in range(0, len(raw), 8))
        return out


def _action(a: tuple, devices: dict[int, str]) -> str:
    op, h, w, x, y = a
    name = _OPS.get(op, f"op{op}")
    if op == L.OP_OUTPUT:
        return devices.get(w, str(w))
    if op in (L.OP_SET_ETH_SRC, L.OP_SET_ETH_DST):
        return f"{name}({':'.join(f'{b:02x}' for b in x.to_bytes(6, 'big'))})"
    if op in (L.OP_SET_IP4_SRC, L.OP_SET_IP4_DST):
        return f"{name}({socket.inet_ntoa(w.to_bytes(4, 'big'))})"
    if op == L.OP_SET_TUNNEL:
        return (f"set_tunnel(tun_id={x:#x},dst={socket.inet_ntoa(w.to_bytes(4, 'big'))},"
                f"src={socket.inet_ntoa(y.to_bytes(4, 'big'))})")
    if op == L.OP_CT:
        return (f"ct(zone={h}{',commit' if w & L.CT_F_COMMIT else ''}"
                f"{',nat' if w & L.CT_F_NAT else ''})")
    if op in (L.OP_RECIRC, L.OP_METER, L.OP_SET_MARK, L.OP_SET_IP6_LABEL):
        return f"{name}({w:#x})"
    if op == L.OP_PUSH_VLAN:
        return f"push_vlan(tpid={w:#x},tci={h:#x})"
    if op == L.OP_POP_VLAN:
        return "pop_vlan"
    return f"{name}({h:#x})"
