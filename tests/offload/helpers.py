"""Megaflows built by hand for offload tests: fields by registry name (or key slot), actions as odp objects."""

from __future__ import annotations

from dataclasses import dataclass

from sbnet.datapath import odp
from sbnet.datapath.dpif.megaflow import Megaflow
from sbnet.flows import fields as F

_ids = iter(range(10**9))


def megaflow(match: dict, actions: tuple = (odp.Output(2),), mf_id: int | None = None) -> Megaflow:
    """match: name -> value or (value, mask); names are registry fields or key slots."""
    key = [0] * F.N_SLOTS
    wc = [0] * F.N_SLOTS
    base = {"recirc_id": 0, "in_port": 1}
    for name, spec in {**base, **match}.items():
        value, mask = spec if isinstance(spec, tuple) else (spec, None)
        if name in F.SLOT_INDEX and not F.exists(name):
            s = F.SLOT_INDEX[name]
            wc[s] |= (1 << 64) - 1 if mask is None else mask
            key[s] |= value
            continue
        fld = F.lookup(name)
        mask = fld.max if mask is None else mask
        for (s, m), (_, v) in zip(fld.slot_masks(mask), fld.slot_values(value & mask)):
            wc[s] |= m
            key[s] |= v
    slots = tuple(i for i in range(F.N_SLOTS) if wc[i])
    return Megaflow(next(_ids) if mf_id is None else mf_id, slots, tuple(wc[i] for i in slots),
                    tuple(key[i] & wc[i] for i in slots), tuple(actions), 0, [], "forwarded",
                    tuple(key), 0)


def tcp_flow(**extra) -> dict:
    return {"eth_type": F.ETH_IP, "ip_proto": F.IP_TCP, "ip_frag": (0, 3), **extra}


# Datapath actions another engineer will add: a profile names them, placement needs no code.
@dataclass(frozen=True)
class PushNsh:
    spi: int = 1
    si: int = 255


@dataclass(frozen=True)
class TunnelPush:               # snake_case tunnel_push -> OVS's tnl_push
    port: int = 4789


@dataclass(frozen=True)
class CtAlg(odp.Ct):
    """ct() with a helper, as OVS's ct(alg=ftp)."""

    odp_name = "ct"
    alg: str = "ftp"


@dataclass(frozen=True)
class Frobnicate:
    pass
