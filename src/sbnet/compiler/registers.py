"""The registers and metadata the pipeline uses, each allocated here once with one meaning."""

from __future__ import annotations

from dataclasses import dataclass

from sbnet.flows import actions as A
from sbnet.flows import fields as F


@dataclass(frozen=True)
class Reg:
    """A named slice of a register: where a value lives while a packet crosses the tables."""

    name: str
    field: str
    purpose: str
    start: int = 0
    width: int = 32

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.start

    def match(self, value: int) -> tuple[int, int]:
        """(value, mask) for MatchBuilder.set(self.field, ...)."""
        return (value << self.start) & self.mask, self.mask

    def load(self, value: int) -> A.SetField:
        whole = self.mask == F.lookup(self.field).max
        return A.SetField(self.field, (value << self.start) & self.mask, None if whole else self.mask)

    @property
    def sub(self) -> A.Subfield:
        return A.Subfield(self.field, self.start, self.width)


@dataclass(frozen=True)
class Flag:
    """One bit of the FLAGS register."""

    name: str
    bit: int
    purpose: str


# Whole-register values.  metadata carries the network so that every table can key on it.
# NEXTHOP lives from l3_route to l3_neighbour only.
NEXTHOP = Reg("nexthop", "reg0", "IPv4 next hop a route chose (the destination itself when "
              "directly connected)")
NETWORK = Reg("network", "metadata", "key of the logical network the packet is in", 0, 64)
ROUTER = Reg("router", "reg11", "key of the logical router routing the packet")
NAT_ZONE = Reg("nat_zone", "reg12", "conntrack zone of the router doing SNAT/DNAT", 0, 16)
LB_ZONE = Reg("lb_zone", "reg12", "conntrack zone of the load balancers the packet's network "
              "reaches, from lb_vip to the select group's bucket", 16, 16)
LB_LISTENER = Reg("lb_listener", "reg1", "key of the listener whose VIP the packet was sent to, "
                  "from lb_vip to lb_post (a member calling its own VIP is SNATed to that VIP)",
                  0, 24)
ZONE = Reg("zone", "reg13", "conntrack zone of the network the packet is in", 0, 16)
INPORT = Reg("inport", "reg14", "key of the logical port the packet came from")
OUTPORT = Reg("outport", "reg15", "key of the logical port the packet goes to")
CHAIN = Reg("chain", "reg9", "a classified packet's chain (SPI, bits 8-31) and flow-hash bucket "
            "(bits 0-7), from the classifier's select group until NSH carries them")
FLAGS_FIELD = "reg10"

FROM_REMOTE = Flag("from_remote", 0, "arrived from another host or the physical network")
REMOTE_OUT = Flag("remote_out", 1, "the destination port is bound on another host")
COMMIT = Flag("commit", 2, "a security group accepted a new connection: commit it before it leaves")
ROUTED = Flag("routed", 3, "a router forwarded the packet (TTL was decremented)")
CHAINED = Flag("chained", 4, "a port chain's classifier has taken the packet")
HAIRPIN = Flag("hairpin", 5, "the packet goes back out of the port it came in on (responders)")
LB_UNSNAT = Flag("lb_unsnat", 6, "a packet to a VIP has passed the hairpin conntrack zone "
                 "(lb_unnat), which un-SNATs a member's reply to itself")
FLAGS = (FROM_REMOTE, REMOTE_OUT, COMMIT, ROUTED, CHAINED, HAIRPIN, LB_UNSNAT)


def flags_match(on: tuple[Flag, ...] = (), off: tuple[Flag, ...] = ()) -> tuple[int, int]:
    """(value, mask) on the FLAGS register: the `on` bits set and the `off` bits clear."""
    value = sum(1 << f.bit for f in on)
    return value, value | sum(1 << f.bit for f in off)


def set_flags(*flags: Flag) -> A.SetField:
    bits = sum(1 << f.bit for f in flags)
    return A.SetField(FLAGS_FIELD, bits, bits)


def clear_flags(*flags: Flag) -> A.SetField:
    bits = sum(1 << f.bit for f in flags)
    return A.SetField(FLAGS_FIELD, 0, bits)


def _check_disjoint() -> None:
    seen: dict[str, int] = {}
    for r in (NEXTHOP, NETWORK, ROUTER, NAT_ZONE, LB_ZONE, LB_LISTENER, ZONE, INPORT, OUTPORT,
              CHAIN):
        if seen.get(r.field, 0) & r.mask:
            raise AssertionError(f"register {r.field} allocated twice ({r.name})")
        seen[r.field] = seen.get(r.field, 0) | r.mask
    if FLAGS_FIELD in seen or len({f.bit for f in FLAGS}) != len(FLAGS):
        raise AssertionError("flag bits allocated twice")


_check_disjoint()
