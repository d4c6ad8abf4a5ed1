"""The slow path: run a packet's key through the OpenFlow tables, yielding datapath actions and a megaflow mask."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from sbnet.datapath import odp
from sbnet.datapath.ofproto.classifier import Rule, Table
from sbnet.flows import actions as A
from sbnet.flows import fields as F

S = F.SLOT_INDEX
_FULL64 = 0xFFFFFFFFFFFFFFFF
MAX_DEPTH = 64          # OVS's limit on nested resubmits/goto
MAX_RESUBMITS = 4096    # OVS's limit on resubmits per translation

# Slots that never reach the datapath key: registers and metadata start at 0
# for every packet, so OVS drops them from megaflow masks.
_NON_HEADER = [S[f"reg{i}"] for i in range(16)] + [S["metadata"], S["conj_id"]]
_VLAN = ((S["vlan_tci"], S["vlan_tpid"]), (S["vlan_tci2"], S["vlan_tpid2"]))
_MPLS = (S["mpls_lse0"], S["mpls_lse1"], S["mpls_lse2"])
_CT_SLOTS = list(range(S["ct_state"], S["ct_tp_dst"] + 1))
_TUN_ENDPOINTS = ("tun_src", "tun_dst", "tun_ipv6_src_hi", "tun_ipv6_src_lo",
                  "tun_ipv6_dst_hi", "tun_ipv6_dst_lo")
_TUN_METADATA = tuple(f"tun_metadata{i}" for i in range(8))
_TUN_SLOTS = ("tun_id",) + _TUN_ENDPOINTS + ("tun_flags",) + _TUN_METADATA
_REGS = [S[f"reg{i}"] for i in range(16)]
# Frozen with the registers (OVS's frozen metadata holds the tunnel too): a copy aimed at
# another host (tun_dst, tun_id set) that passes conntrack on its way out keeps its aim.
_TUN_STATE = [S[n] for n in _TUN_SLOTS]
# What every translation sets or reads, as slot indices computed once (run is per upcall).
_ALWAYS = tuple((S[n], F.lookup(n).max) for n in ("recirc_id", "in_port", "eth_type"))
_S_ETH_TYPE, _S_NW_FRAG, _S_IN_PORT = S["eth_type"], S["nw_frag"], S["in_port"]
_TUN_ENDPOINT_SLOTS = tuple(S[n] for n in _TUN_ENDPOINTS)
_TUN_WC = tuple((S[n], F.lookup(n).max if n in ("tun_id", "tun_src", "tun_dst")
                 else (1 << 64) - 1) for n in _TUN_SLOTS)
_TUN_METADATA_SLOTS = tuple(S[n] for n in _TUN_METADATA)
_L3_SLOTS = [S[n] for n in (
    "nw_src", "nw_dst", "ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi", "ipv6_dst_lo",
    "ipv6_label", "nw_proto", "nw_tos", "nw_ttl", "nw_frag", "tp_src", "tp_dst",
    "tcp_flags", "arp_sha", "arp_tha", "nd_target_hi", "nd_target_lo")]


class XlateError(Exception):
    """Translation aborted (as OVS's xlate errors): the packet is dropped."""


@dataclass
class XlateResult:
    actions: tuple                     # odp actions; () = drop
    wc: list[int]                      # megaflow mask, one word per slot
    rules: list[Rule]                  # every rule whose actions ran (for counters)
    modified: int                      # bitmask of slots the actions changed
    reason: str                        # why the packet was dropped, or "forwarded"
    trace: list[str] | None = None
    # With run(record=True): the subtables the lookups visited (Table.lookup's probes)
    # and the mask bits the translation set itself, outside table lookups
    # (sbnet.datapath.ofproto.replay).
    probes: list | None = None
    direct: list[int] | None = None


class Xlate:
    """Translation over one switch's tables, groups and ports."""

    def __init__(self, tables: dict[int, Table], groups: dict[int, A.GroupMod],
                 ports: set[int], tunnels: dict | None = None) -> None:
        self.tables, self.groups, self.ports = tables, groups, ports
        self.tunnels = tunnels if tunnels is not None else {}   # ofport -> TunnelPort
        self.tlv_fields: set[str] = set()      # tun_metadataN fields the TLV map defines
        self.meters: dict[int, int] = {}       # OpenFlow meter id -> datapath meter id
        # Tests force a select-group bucket to compare with OVS, whose hash differs.
        self.select_override: int | None = None
        # Recirculation: a recirc_id names a frozen translation state (the table
        # to resume in and the registers and metadata at that point), as in OVS.
        self.frozen: dict[int, tuple] = {}
        self._frozen_ids: dict[tuple, int] = {}

    def freeze(self, table: int | None, flow: list[int], rest: tuple = ()) -> int:
        """A recirc_id for resuming in `table`, or with the actions `rest` when table is None."""
        state = (table, tuple(flow[r] for r in _REGS), flow[S["metadata"]], rest,
                 tuple(flow[t] for t in _TUN_STATE))
        rid = self._frozen_ids.get(state)
        if rid is None:
            rid = self._frozen_ids[state] = len(self._frozen_ids) + 1
            self.frozen[rid] = state
        return rid

    def run(self, key, trace: bool = False, record: bool = False) -> XlateResult:
        """record: keep what the result's path depends on (XlateResult.probes, .direct)."""
        ctx = _Ctx(self, key.tolist() if hasattr(key, "tolist") else list(key), trace, record)
        flow = ctx.flow
        ctx.base_in_port = flow[_S_IN_PORT]
        wc = ctx.wc
        for slot, full in _ALWAYS:
            wc[slot] = full
        if flow[_S_ETH_TYPE] in (F.ETH_IP, F.ETH_IPV6):
            wc[_S_NW_FRAG] = 3
        for slot in _TUN_ENDPOINT_SLOTS:
            if flow[slot]:
                # Came in through a tunnel: the megaflow matches its metadata exactly (OVS tnl_wc_init).
                for t, full in _TUN_WC:
                    wc[t] = full
                break
        try:
            rid = ctx.flow[S["recirc_id"]]
            if rid:
                state = self.frozen.get(rid)
                if state is None:
                    raise XlateError(f"unknown recirculation id {rid:#x}")
                table, regs, metadata, rest, tun = state
                for r, v in zip(_REGS + _TUN_STATE, regs + tun):
                    ctx.flow[r] = v
                ctx.flow[S["metadata"]] = metadata
                ctx.base = list(ctx.flow)
                if table is None:
                    ctx.log("thaw: resuming the frozen actions")
                    ctx.actions(rest)
                else:
                    ctx.conntracked = True
                    ctx.log(f"thaw: resuming from table {table}")
                    ctx.table(table, goto=True)
            else:
                ctx.table(0, goto=True)
        except XlateError as exc:
            ctx.odp.clear()
            ctx.reason = str(exc)
            ctx.log(f"Translation failed ({exc}), packet is dropped.")
        direct = None
        if record:
            direct = list(wc)
            wc[:] = map(int.__or__, wc, ctx.cwc)
        for s in _NON_HEADER:
            wc[s] = 0
        tp = self.tunnels.get(ctx.base_in_port)
        if tp is None or tp.kind != "geneve":
            # Only Geneve packets carry options: from any other port tun_metadata is
            # always absent, and OVS's datapath key has no option attribute to mask.
            for t in _TUN_METADATA_SLOTS:
                wc[t] = 0
        kinds = {type(a) for a in ctx.odp}       # (no action type has subclasses)
        sent = odp.Output in kinds or odp.TunnelPush in kinds
        # A recirculated packet's fate is decided by its next pass, not this one.
        again = odp.Recirc in kinds
        reason = "forwarded" if sent else "recirculated" if again else ctx.reason
        return XlateResult(tuple(ctx.odp), wc, ctx.rules, ctx.modified, reason,
                           ctx.lines if trace else None, ctx.probes, direct)


class _Ctx:
    def __init__(self, x: Xlate, key: list[int], trace: bool, record: bool = False) -> None:
        self.x = x
        self.flow = key
        self.base = list(key)
        self.wc = [0] * F.N_SLOTS
        # Recording, table lookups widen a mask of their own (cwc), merged into wc at the
        # end, so what the translation consulted outside them stays known.
        self.cwc = [0] * F.N_SLOTS if record else self.wc
        self.probes: list | None = [] if record else None
        self.odp: list = []
        self.rules: list[Rule] = []
        self.modified = 0
        self.depth = 0
        self.resubmits = 0
        self.table_id = 0
        self.stopped = False
        self.conntracked = False      # a ct() ran on this packet (ct_clear has work to do)
        # Packet type as OVS tracks it: "eth", or "nsh" between encap(nsh) and encap(ethernet)
        # (or after decapsulating the Ethernet header of an NSH packet).
        self.ptype = "eth"
        self.pending_nsh: int | None = None   # md_type of an NSH header to push at commit
        self.pending_eth = False               # an Ethernet header to push at commit
        self.rest: tuple = ()                  # the actions after the one running
        self.reason = "no actions (drop)"
        self.lines: list[str] = [] if trace else None

    def log(self, text: str) -> None:
        if self.lines is not None:
            self.lines.append("    " * self.depth + text)

    # -- key access -------------------------------------------------------
    def write(self, fld: F.Field, value: int, mask: int | None = None) -> None:
        m = fld.max if mask is None else mask
        old = fld.read(self.flow)
        fld.write(self.flow, (old & ~m) | (value & m))
        for si, sm in fld.slot_masks(m):
            self.wc[si] |= sm
            self.modified |= 1 << si

    def read(self, fld: F.Field, mask: int | None = None) -> int:
        m = fld.max if mask is None else mask
        for si, sm in fld.slot_masks(m):
            self.wc[si] |= sm
        return fld.read(self.flow) & m

    def set_slot(self, slot: int, value: int) -> None:
        self.flow[slot] = value
        self.modified |= 1 << slot

    def prereqs_ok(self, fld: F.Field) -> bool:
        for pre in fld.prereqs:
            pf = F.lookup(pre.field)
            if self.read(pf) not in pre.values:
                return False
        return True

    # -- tables ---------------------------------------------------------
    def table(self, table_id: int, goto: bool, in_port: int | None = None) -> None:
        if self.depth >= MAX_DEPTH:
            raise XlateError("Recursion too deep")
        tbl = self.x.tables.get(table_id)
        saved_port = self.flow[S["in_port"]]
        if in_port is not None and in_port != F.OFPP_IN_PORT:
            self.flow[S["in_port"]] = in_port
            self.modified |= 1 << S["in_port"]   # the lookup saw another in_port
        rule = tbl.lookup(self.flow, self.cwc, probes=self.probes) if tbl is not None else None
        self.flow[S["in_port"]] = saved_port
        if self.lines is not None:
            self.log(f"{table_id}. " + (str(rule.flow).split(" actions=")[0].replace(
                f"table={table_id},", "") if rule else "No match."))
        if rule is None:
            if goto:
                self.reason = f"no matching flow in table {table_id}"
            return
        self.rules.append(rule)
        if not rule.flow.actions:
            m = str(rule.flow.match) or "*"
            self.reason = f"drop rule: table={table_id},priority={rule.priority},{m}"
        saved_table = self.table_id
        self.table_id = table_id
        self.depth += 1
        try:
            self.actions(rule.flow.actions)
        finally:
            self.depth -= 1
            self.table_id = saved_table

    # -- actions --------------------------------------------------------
    def actions(self, acts: tuple) -> None:
        if not acts:
            self.log("drop")
        for i, a in enumerate(acts):
            if self.stopped:
                return
            if self.lines is not None:
                self.log(str(a))
            self.rest = acts[i + 1:]
            self.action(a)

    def action(self, a) -> None:
        match a:
            case A.Output(port):
                self.output(port)
            case A.OutputReg(src):
                port = self.read(F.lookup(src.field), src.mask) >> src.start
                self.output(port)
            case A.Controller():
                self.output(F.OFPP_CONTROLLER)
            case A.Resubmit(port, table):
                self.resubmits += 1
                if self.resubmits > MAX_RESUBMITS:
                    raise XlateError("Too many resubmits")
                self.table(self.table_id if table is None else table, goto=False, in_port=port)
            case A.GotoTable(table):
                self.table(table, goto=True)
            case A.SetField(name, value, mask):
                self.set_field(F.lookup(name), value, mask)
            case A.Load(value, dst):
                self.set_field(F.lookup(dst.field), value << dst.start, dst.mask)
            case A.Move(src, dst):
                v = (self.read(F.lookup(src.field), src.mask) >> src.start) << dst.start
                fld = F.lookup(dst.field)
                self.read(fld, dst.mask)
                self.write(fld, v, dst.mask)
            case A.PushVlan(tpid):
                self.push_vlan(tpid)
            case A.PopVlan():
                self.pop_vlan()
            case A.ModVlanVid(vid):
                self.set_field(F.lookup("vlan_vid"), F.VLAN_CFI | vid, 0xFFF)
            case A.ModVlanPcp(pcp):
                self.set_field(F.lookup("vlan_pcp"), pcp, None)
            case A.DecTtl():
                self.dec_ttl()
            case A.PushMpls(ethertype):
                self.push_mpls(ethertype)
            case A.PopMpls(ethertype):
                self.pop_mpls(ethertype)
            case A.SetMplsLabel(label):
                self.set_mpls("mpls_label", label)
            case A.SetMplsTc(tc):
                self.set_mpls("mpls_tc", tc)
            case A.SetMplsTtl(ttl):
                self.set_mpls("mpls_ttl", ttl)
            case A.DecMplsTtl():
                self.dec_mpls_ttl()
            case A.Group(gid):
                self.group(gid)
            case A.Meter(mid):
                # Not a commit point: pending sets stay pending, as in OVS's xlate_meter_action.
                if mid in self.x.meters:
                    self.odp.append(odp.Meter(self.x.meters[mid]))
            case A.Conjunction():
                pass    # only meaningful to the classifier
            case A.Ct():
                self.ct(a)
            case A.EncapNsh(md_type):
                self.encap_nsh(md_type)
            case A.Encap("ethernet"):
                if self.ptype == "nsh":
                    self.commit()   # OVS pushes a pending NSH header here, Ethernet at output
                    self.pending_eth = True
                    self.ptype = "eth"
                    self.set_slot(S["eth_src"], 0)
                    self.set_slot(S["eth_dst"], 0)
            case A.Decap():
                self.decap()
            case A.DecNshTtl():
                self.dec_nsh_ttl()
            case A.CtClear():
                if self.conntracked:
                    self.commit()
                    self.odp.append(odp.CtClear())
                    self.conntracked = False
                self.clear_ct()
            case _:
                # The switch refuses these at install time; reaching here is a bug.
                raise XlateError(f"unsupported action {a}")

    def encap_nsh(self, md_type: int) -> None:
        """encap(nsh): the Ethernet frame becomes the payload of a fresh NSH header."""
        if self.ptype != "eth":
            self.log("encap(nsh) needs an Ethernet packet: skipped")
            return
        self.commit()
        init = {"nsh_flags": 0, "nsh_ttl": 63, "nsh_mdtype": md_type, "nsh_np": 3,
                "nsh_spi": 0, "nsh_si": 255, "nsh_c1": 0, "nsh_c2": 0, "nsh_c3": 0, "nsh_c4": 0}
        for name, v in init.items():
            self.set_slot(S[name], v)
        self.set_slot(S["eth_type"], F.ETH_NSH)
        self.ptype = "nsh"
        self.pending_nsh = md_type

    def decap(self) -> None:
        """decap(): strip Ethernet from an NSH packet, then NSH itself; the inner frame must
        be parsed again, so translation freezes and recirculates, as OVS does."""
        if self.ptype == "eth" and self.flow[S["eth_type"]] == F.ETH_NSH:
            self.commit()
            self.odp.append(odp.PopEth())
            self.ptype = "nsh"
        elif self.ptype == "nsh":
            np_ = self.read(F.lookup("nsh_np"))
            self.commit()
            self.odp.append(odp.PopNsh())
            if np_ != 3:
                self.log(f"NSH next protocol {np_} is not Ethernet: dropped")
                self.reason = "NSH payload is not Ethernet"
            else:
                self.odp.append(odp.Recirc(self.x.freeze(None, self.flow, self.rest)))
                self.log("-> recirculating to parse the inner frame")
            self.stopped = True
        else:
            self.log("decap() of a packet that is not NSH: skipped")

    def dec_nsh_ttl(self) -> None:
        if self.flow[S["eth_type"]] != F.ETH_NSH:
            return
        fld = F.lookup("nsh_ttl")
        ttl = self.read(fld)
        if ttl > 1:
            self.write(fld, ttl - 1)
            return
        self.reason = "NSH TTL expired"
        self.commit()
        self.odp.append(odp.Userspace("controller"))
        self.stopped = True

    def ct(self, a: A.Ct) -> None:
        """OVS's ct(): the datapath tracks the packet; with table=, a clone resumes there."""
        self.commit()
        if isinstance(a.zone, A.Subfield):
            zone = self.read(F.lookup(a.zone.field), a.zone.mask) >> a.zone.start
        else:
            zone = a.zone
        mark = label = None
        for e in a.exec_:
            name, value, mask = _exec_target(e)
            fld = F.lookup(name)
            if name == "ct_mark":
                old = mark or (0, 0)
                mark = ((old[0] & ~mask) | (value & mask), old[1] | mask)
            else:
                old = label or (0, 0)
                label = ((old[0] & ~mask) | (value & mask), old[1] | mask)
        self.odp.append(odp.Ct(zone & 0xFFFF, a.commit, a.nat, mark, label))
        if a.table is not None:
            self.odp.append(odp.Recirc(self.x.freeze(a.table, self.flow)))
            self.log(f"-> a clone resumes in table {a.table} after conntrack")
        self.conntracked = True
        self.clear_ct()

    def clear_ct(self) -> None:
        """The packet continues untracked, with every conntrack field cleared (as OVS)."""
        for s in _CT_SLOTS:
            if self.flow[s]:
                self.set_slot(s, 0)
        self.base[S["ct_state"]:S["ct_tp_dst"] + 1] = self.flow[S["ct_state"]:S["ct_tp_dst"] + 1]

    def output(self, port: int) -> None:
        in_port = self.flow[S["in_port"]]
        if port == F.OFPP_IN_PORT:
            port = in_port
        elif port in (F.OFPP_ALL, F.OFPP_FLOOD):
            for p in sorted(self.x.ports):
                if p != in_port:
                    self.commit()
                    self.odp.append(odp.Output(p))
            return
        elif port == F.OFPP_CONTROLLER:
            self.reason = "sent to controller"
            self.commit()
            self.odp.append(odp.Userspace("controller"))
            return
        elif port == in_port:
            self.log("skipping output to input port")
            return
        if port not in self.x.ports:
            self.log(f"output to nonexistent port {port}")
            return
        if self.ptype != "eth":
            self.log("non-Ethernet packet cannot leave on an Ethernet port: dropped")
            return
        self.commit()
        tp = self.x.tunnels.get(port)
        if tp is not None:
            self.tunnel_push(tp)
            return
        self.odp.append(odp.Output(port))

    def tunnel_push(self, tp) -> None:
        """Output to a tunnel port: the flow's tunnel fields the port takes from the flow."""
        tun = []
        if tp.key == "flow":
            tun.append(("tun_id", self.read(F.lookup("tun_id"))))
        if tp.remote is None:
            for n in ("tun_dst", "tun_ipv6_dst"):
                tun.append((n, self.read(F.lookup(n))))
        if tp.local_ip == "flow":
            for n in ("tun_src", "tun_ipv6_src"):
                tun.append((n, self.read(F.lookup(n))))
        if tp.kind == "geneve":
            # Options go out for the mapped metadata fields the flow carries.
            for n in _TUN_METADATA:
                if n in self.x.tlv_fields and (self.flow[S[n]] or self.modified >> S[n] & 1):
                    tun.append((n, self.read(F.lookup(n))))
        if self.is_ip():
            # The outer header copies ECN always, DSCP and TTL when the port inherits them.
            self.wc[S["nw_tos"]] |= 0xFF if tp.tos == "inherit" else 0x03
            if tp.ttl == "inherit":
                self.wc[S["nw_ttl"]] = 0xFF
        self.odp.append(odp.TunnelPush(tp.ofport, tuple(tun)))

    def set_field(self, fld: F.Field, value: int, mask: int | None) -> None:
        if fld.slot == "vlan_tci" and fld.name != "vlan_tci":
            # OVS rewrites VID/PCP only when a tag is present.
            self.wc[S["vlan_tci"]] |= F.VLAN_CFI
            if not self.flow[S["vlan_tci"]] & F.VLAN_CFI:
                return
            if fld.name == "vlan_vid":
                value, mask = value & 0xFFF, (0xFFF if mask is None else mask & 0xFFF)
        if not self.prereqs_ok(fld):
            self.log(f"set_field {fld.name} skipped: prerequisites not met")
            return
        self.write(fld, value, mask)

    def push_vlan(self, tpid: int) -> None:
        for tci_s, tpid_s in _VLAN:
            if self.flow[tci_s] & F.VLAN_CFI:
                self.wc[tci_s] = 0xFFFF
                self.wc[tpid_s] = 0xFFFF
        (t0, p0), (t1, p1) = _VLAN
        self.set_slot(t1, self.flow[t0])
        self.set_slot(p1, self.flow[p0])
        self.set_slot(t0, F.VLAN_CFI)
        self.set_slot(p0, tpid)

    def pop_vlan(self) -> None:
        (t0, p0), (t1, p1) = _VLAN
        if self.flow[t1] & F.VLAN_CFI:
            self.wc[t1] = self.wc[p1] = 0xFFFF
        self.set_slot(t0, self.flow[t1])
        self.set_slot(p0, self.flow[p1])
        self.set_slot(t1, 0)
        self.set_slot(p1, 0)

    def is_ip(self) -> bool:
        return self.flow[S["eth_type"]] in (F.ETH_IP, F.ETH_IPV6)

    def is_mpls(self) -> bool:
        return self.flow[S["eth_type"]] in (F.ETH_MPLS, F.ETH_MPLS_MC)

    def dec_ttl(self) -> None:
        if not self.is_ip():
            return
        ttl = self.read(F.lookup("ip_ttl"))
        if ttl > 1:
            self.write(F.lookup("ip_ttl"), ttl - 1)
            return
        # As OVS: the packet goes to the controller (reason invalid_ttl) and
        # translation stops.
        self.log("TTL expired: sent to controller, translation stops")
        self.reason = "TTL expired (dec_ttl)"
        self.commit()
        self.odp.append(odp.Userspace("controller"))
        self.stopped = True

    def mpls_depth(self) -> int:
        """Labels on the packet; the bottom-of-stack bits read to find out join the megaflow."""
        if not self.is_mpls():
            return 0
        for i, s in enumerate(_MPLS):
            self.wc[s] |= 0x100
            if self.flow[s] & 0x100:
                return i + 1
        return len(_MPLS)

    def mpls_stack_exact(self, n: int) -> None:
        """MPLS edits commit whole label stack entries, so their result depends on every
        bit of the entries on the stack: match them exactly (OVS does as much)."""
        for s in _MPLS[:n]:
            self.wc[s] = 0xFFFFFFFF

    def push_mpls(self, ethertype: int) -> None:
        n = self.mpls_depth()
        if n >= len(_MPLS):
            self.log("MPLS push would exceed 3 labels: packet dropped")
            self.reason = "MPLS label stack full"
            self.stopped = True
            return
        self.mpls_stack_exact(n)
        for i in range(n, 0, -1):
            self.set_slot(_MPLS[i], self.flow[_MPLS[i - 1]])
        if n:
            self.set_slot(_MPLS[0], self.flow[_MPLS[0]] & ~0x100)
        else:
            tc, ttl = 0, 64
            if self.is_ip():
                tos = self.read(F.lookup("nw_tos"), 0xFC)
                ttl = self.read(F.lookup("ip_ttl"))
                tc = (tos >> 2) & 7
            self.set_slot(_MPLS[0], (tc << 9) | 0x100 | ttl)
            for s in _L3_SLOTS:
                self.set_slot(s, 0)
        self.set_slot(S["eth_type"], ethertype)

    def pop_mpls(self, ethertype: int) -> None:
        n = self.mpls_depth()
        if n == 0:
            return
        self.mpls_stack_exact(n)
        for i in range(len(_MPLS) - 1):
            self.set_slot(_MPLS[i], self.flow[_MPLS[i + 1]])
        self.set_slot(_MPLS[-1], 0)
        if n == 1:
            self.set_slot(S["eth_type"], ethertype)

    def set_mpls(self, name: str, value: int) -> None:
        if self.is_mpls():
            self.mpls_stack_exact(self.mpls_depth())
            self.write(F.lookup(name), value)

    def dec_mpls_ttl(self) -> None:
        if not self.is_mpls():
            return
        self.mpls_stack_exact(self.mpls_depth())
        fld = F.lookup("mpls_ttl")
        ttl = self.read(fld)
        if ttl > 1:
            self.write(fld, ttl - 1)
        else:
            # As dec_ttl: to the controller (invalid_ttl), translation stops.
            self.reason = "MPLS TTL expired"
            self.commit()
            self.odp.append(odp.Userspace("controller"))
            self.stopped = True

    def group(self, gid: int) -> None:
        g = self.x.groups.get(gid)
        if g is None:
            self.log(f"group {gid} does not exist")
            return
        if g.type == "all":
            buckets = list(g.buckets)
        elif g.type == "indirect":
            buckets = list(g.buckets[:1])
        elif g.type == "ff":
            buckets = [b for b in g.buckets if b.watch_port is None or b.watch_port in self.x.ports][:1]
        else:
            buckets = [self.select_bucket(g)] if g.buckets else []
        for b in buckets:
            # Each bucket acts on its own copy of the packet; OVS restores the
            # flow afterwards and lets the next commit undo the bucket's edits.
            saved, stopped = list(self.flow), self.stopped
            self.depth += 1
            try:
                self.actions(b.actions)
            finally:
                self.depth -= 1
            self.flow[:] = saved
            self.stopped = stopped

    def select_bucket(self, g: A.GroupMod) -> A.Bucket:
        if self.x.select_override is not None:
            return g.buckets[self.x.select_override % len(g.buckets)]
        names = g.fields or ("eth_src", "eth_dst", "eth_type", "ip_src", "ip_dst", "ipv6_src",
                             "ipv6_dst", "ip_proto", "tcp_src", "tcp_dst")
        h = 0
        for name in names:
            fld = F.lookup(name)
            if self.prereqs_ok(fld):
                h = zlib.crc32(self.read(fld).to_bytes(16, "big"), h)
        total = sum(b.weight for b in g.buckets)
        point = h % total if total else 0
        for b in g.buckets:
            if point < b.weight:
                return b
            point -= b.weight
        return g.buckets[-1]

    # -- commit: turn flow edits into datapath set/push/pop actions -------
    def commit(self) -> None:
        flow, base = self.flow, self.base
        if self.pending_nsh is not None:
            c = [flow[S[f"nsh_c{i}"]] for i in range(1, 5)]
            self.odp.append(odp.PushNsh(flow[S["nsh_flags"]], flow[S["nsh_ttl"]],
                                        self.pending_nsh, flow[S["nsh_np"]], flow[S["nsh_spi"]],
                                        flow[S["nsh_si"]], tuple(c)))
            for name in ("eth_type", "nsh_flags", "nsh_ttl", "nsh_mdtype", "nsh_np", "nsh_spi",
                         "nsh_si", "nsh_c1", "nsh_c2", "nsh_c3", "nsh_c4"):
                base[S[name]] = flow[S[name]]
            self.pending_nsh = None
        if self.pending_eth:
            self.odp.append(odp.PushEth(flow[S["eth_src"]], flow[S["eth_dst"]]))
            base[S["eth_src"]], base[S["eth_dst"]] = flow[S["eth_src"]], flow[S["eth_dst"]]
            self.pending_eth = False
        if flow == base:
            return
        self.commit_set("eth")
        if base[S["eth_type"]] == F.ETH_NSH:
            self.commit_set("nsh", consulted=True)
        if _is_mpls_type(base[S["eth_type"]]) and not _is_mpls_type(flow[S["eth_type"]]):
            self.commit_mpls()
        et, proto = base[S["eth_type"]], base[S["nw_proto"]]
        if et in (F.ETH_IP, F.ETH_IPV6, F.ETH_ARP, F.ETH_RARP) and _l3_edited(flow, base):
            # OVS commits no L3 edit for a packet whose nw_proto is 0 (it
            # assumes no real L3 header), and so reads nw_proto to decide; with no
            # L3 field edited there is nothing to decide.
            self.wc[S["nw_proto"]] = 0xFF
            if not flow[S["nw_proto"]]:
                et = None
        if et == F.ETH_IP:
            self.commit_set("ipv4")
        elif et == F.ETH_IPV6:
            self.commit_set("ipv6")
            if proto == F.IP_ICMPV6:
                # As OVS: the ND extensions first (they set the option type the nd()
                # set's sll/tll then find), then nd(), then ICMPv6 type/code below.
                self.commit_set("nd_ext", whole=True)
                if base[S["tp_src"]] in (135, 136):
                    self.commit_set("nd")
        elif et in (F.ETH_ARP, F.ETH_RARP):
            self.commit_set("arp")
        if et in (F.ETH_IP, F.ETH_IPV6) and not base[S["nw_frag"]] & 2:
            hdr = {F.IP_TCP: "tcp", F.IP_UDP: "udp", F.IP_SCTP: "sctp"}.get(proto)
            if hdr:
                self.commit_set(hdr)
        if et == F.ETH_IP and proto == F.IP_ICMP:
            self.commit_set("icmp", whole=True)
        elif et == F.ETH_IPV6 and proto == F.IP_ICMPV6:
            self.commit_set("icmpv6", whole=True)
        self.commit_mpls()
        self.commit_vlan()
        self.commit_set("skb_mark")
        base[:] = flow

    def commit_set(self, header: str, consulted: bool = False, whole: bool = False) -> None:
        """One set() for the header's changed fields; with `consulted` (OVS's NSH commit),
        the fields the megaflow matches are named too when anything changed; with `whole`
        (OVS's unmasked commits: ICMP, ND extensions) every field is named and matched."""
        changed, named = False, []
        for _, name in odp.SET_HEADERS[header]:
            fld = F.lookup(name)
            v = fld.read(self.flow)
            if v != fld.read(self.base):
                changed = True
                named.append((name, v))
                fld.write(self.base, v)
            elif whole or consulted and any((self.wc[si] | self.cwc[si]) & sm
                                            for si, sm in fld.slot_masks(fld.max)):
                named.append((name, v))
        if changed:
            if whole:
                for _, name in odp.SET_HEADERS[header]:
                    fld = F.lookup(name)
                    for si, sm in fld.slot_masks(fld.max):
                        self.wc[si] |= sm
            self.odp.append(odp.SetFields(header, tuple(sorted(named))))

    def commit_mpls(self) -> None:
        flow, base = self.flow, self.base
        fn = _mpls_depth(flow)
        bn = _mpls_depth(base)
        touched = fn or bn
        while bn > fn:
            bn -= 1
            et = flow[S["eth_type"]] if bn == 0 else F.ETH_MPLS
            self.odp.append(odp.PopMpls(et))
            # The datapath's stack after the pop: the next entry is on top.
            base[_MPLS[0]], base[_MPLS[1]], base[_MPLS[2]] = base[_MPLS[1]], base[_MPLS[2]], 0
        if fn and bn == fn and flow[_MPLS[0]] != base[_MPLS[0]]:
            # Like OVS, a changed top LSE is rewritten whole: label, tc and ttl.
            lse = flow[_MPLS[0]]
            self.odp.append(odp.SetFields("mpls", (
                ("mpls_label", lse >> 12), ("mpls_tc", (lse >> 9) & 7), ("mpls_ttl", lse & 0xFF))))
        while bn < fn:
            idx = fn - bn - 1
            self.odp.append(odp.PushMpls(flow[_MPLS[idx]], flow[S["eth_type"]]))
            bn += 1
        for s in _MPLS:
            base[s] = flow[s]
        if touched:
            base[S["eth_type"]] = flow[S["eth_type"]]

    def commit_vlan(self) -> None:
        flow, base = self.flow, self.base
        fv = [(flow[t], flow[p]) for t, p in _VLAN if flow[t] & F.VLAN_CFI]
        bv = [(base[t], base[p]) for t, p in _VLAN if base[t] & F.VLAN_CFI]
        # Skip the common innermost tags, pop the rest of base, push the rest of flow.
        while fv and bv and fv[-1] == bv[-1]:
            fv.pop()
            bv.pop()
        for i in range(len(bv)):
            t, p = _VLAN[i]
            self.wc[t] = self.wc[p] = 0xFFFF
            self.odp.append(odp.PopVlan())
        for tci, tpid in reversed(fv):
            self.odp.append(odp.PushVlan(tpid, tci))
        for t, p in _VLAN:
            base[t], base[p] = flow[t], flow[p]


def _exec_target(a) -> tuple[str, int, int]:
    """(field, value, mask) that a ct exec() set_field or load writes."""
    if isinstance(a, A.SetField):
        fld = F.lookup(a.field)
        return fld.name, a.value, fld.max if a.mask is None else a.mask
    return a.dst.field, a.value << a.dst.start, a.dst.mask


def _l3_edited(flow: list[int], base: list[int]) -> bool:
    return any(flow[s] != base[s] for s in _L3_SLOTS)


def _is_mpls_type(et: int) -> bool:
    return et in (F.ETH_MPLS, F.ETH_MPLS_MC)


def _mpls_depth(key) -> int:
    if not _is_mpls_type(key[S["eth_type"]]):
        return 0
    for i, s in enumerate(_MPLS):
        if key[s] & 0x100:
            return i + 1
    return len(_MPLS)
