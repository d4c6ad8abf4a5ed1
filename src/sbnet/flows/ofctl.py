"""Parse and print flows, groups and meters in ovs-ofctl syntax, with line and column errors."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.flows.flow import DEFAULT_PRIORITY, Flow
from sbnet.flows.match import Match, MatchBuilder, MatchError


class FlowSyntaxError(ValueError):
    """Bad flow text: carries the line, the 1-based column and the reason."""

    def __init__(self, reason: str, column: int = 1, line: int = 1, text: str = ""):
        self.reason, self.column, self.line, self.text = reason, column, line, text
        super().__init__(f"line {line}, column {column}: {reason}")


@dataclass
class _Tok:
    text: str
    col: int        # 0-based column of text in the line


def _split_top(text: str, base: int, seps: str) -> list[_Tok]:
    """Split at separators outside parentheses/brackets, keeping columns."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise FlowSyntaxError("unbalanced ')'", base + i + 1)
        elif ch in seps and depth == 0:
            if text[start:i].strip():
                out.append(_tok(text, start, i, base))
            start = i + 1
    if depth:
        raise FlowSyntaxError("unbalanced '('", base + len(text))
    if text[start:].strip():
        out.append(_tok(text, start, len(text), base))
    return out


def _tok(text: str, a: int, b: int, base: int) -> _Tok:
    seg = text[a:b]
    lead = len(seg) - len(seg.lstrip())
    return _Tok(seg.strip(), base + a + lead)


_ACTIONS_RE = re.compile(r"(?:^|[\s,])(actions|instructions)\s*=", re.I)


def parse_flow(text: str, line: int = 1, default_table: int = 0) -> Flow:
    """Parse one ovs-ofctl flow ("table=0,priority=10,ip,nw_src=10.0.0.0/8 actions=output:2")."""
    try:
        try:
            return _parse_flow(text, default_table)
        except RecursionError:
            raise FlowSyntaxError("actions nested too deeply", 1) from None
    except FlowSyntaxError as exc:
        exc.line, exc.text = line, text
        exc.args = (f"line {line}, column {exc.column}: {exc.reason}",)
        raise


def _parse_flow(text: str, default_table: int) -> Flow:
    m = _ACTIONS_RE.search(text)
    if not m:
        raise FlowSyntaxError("missing 'actions='", len(text) + 1)
    head, act_text, act_base = text[:m.start()], text[m.end():], m.end()
    table, priority, cookie, idle, hard = default_table, DEFAULT_PRIORITY, 0, 0, 0
    mb = MatchBuilder()
    pending_tp: list[tuple[_Tok, str, str]] = []
    for tok in _split_top(head, 0, ", \t"):
        name, eq, value = tok.text.partition("=")
        name = name.strip().lower()
        vcol = tok.col + len(name) + 2
        if not eq:
            if name in F.PROTOCOLS:
                for fname, fval in F.PROTOCOLS[name]:
                    _set(mb, fname, fval, None, tok)
                continue
            raise FlowSyntaxError(f"unknown keyword {name!r}", tok.col + 1)
        value = value.strip()
        try:
            if name == "table":
                table = _int(value, 0, 254, "table")
            elif name == "priority":
                priority = _int(value, 0, 65535, "priority")
            elif name == "cookie":
                cookie = int(value.partition("/")[0], 0)
            elif name == "idle_timeout":
                idle = _int(value, 0, 65535, "idle_timeout")
            elif name == "hard_timeout":
                hard = _int(value, 0, 65535, "hard_timeout")
            elif name in ("tp_src", "tp_dst", "icmp_type", "icmp_code"):
                pending_tp.append((tok, name, value))
            elif name == "dl_vlan" and int(value, 0) == 0xFFFF:
                _set(mb, "vlan_tci", 0, None, tok)   # OpenFlow 1.0's "no VLAN tag"
            elif name in ("out_port", "out_group", "importance"):
                pass  # only meaningful for flow-mod filtering; accepted and ignored
            elif F.exists(name):
                fld = F.lookup(name)
                v, msk = F.parse_value(fld, value)
                _set(mb, fld.name, v, msk, tok)
            else:
                raise FlowSyntaxError(f"unknown field {name!r}", tok.col + 1)
        except FlowSyntaxError:
            raise
        except (ValueError, MatchError) as exc:
            raise FlowSyntaxError(f"{name}: {exc}", vcol) from None
    # tp_*/icmp_* name the field of whichever protocol the flow matches, as in OVS.
    proto = mb.exact("ip_proto")
    v6 = mb.exact("eth_type") == F.ETH_IPV6
    for tok, name, value in pending_tp:
        if name.startswith("icmp_"):
            fld = F.lookup(name.replace("icmp_", "icmpv6_") if v6 else name)
        else:
            l4 = {F.IP_TCP: "tcp", F.IP_UDP: "udp", F.IP_SCTP: "sctp"}.get(proto)
            if l4 is None:
                raise FlowSyntaxError(f"{name} requires ip_proto tcp, udp or sctp", tok.col + 1)
            fld = F.lookup(f"{l4}_{name[3:]}")
        try:
            v, msk = F.parse_value(fld, value)
        except ValueError as exc:
            raise FlowSyntaxError(f"{name}: {exc}", tok.col + len(name) + 2) from None
        _set(mb, fld.name, v, msk, tok)
    try:
        match = mb.build()
    except MatchError as exc:
        raise FlowSyntaxError(str(exc), 1) from None
    acts = _ofctl_vlan_semantics(match, parse_actions(act_text, act_base), act_base)
    _check_action_prereqs(match, acts, act_base)
    for act in acts:
        # OpenFlow forbids going back (OVS: "goto_table to a table ... not allowed").
        if isinstance(act, A.GotoTable) and act.table <= table:
            raise FlowSyntaxError(f"goto_table:{act.table} from table {table}: a flow may only "
                                  "go to a later table", act_base + 1)
    return Flow(table=table, priority=priority, match=match, actions=acts,
                cookie=cookie, idle_timeout=idle, hard_timeout=hard)


def _ofctl_vlan_semantics(match: Match, acts: tuple, col: int) -> tuple:
    """Apply ovs-ofctl's VLAN rules so a flow means here what it means in OVS.

    mod_vlan_vid/mod_vlan_pcp keep their OpenFlow 1.0 meaning when the match does
    not guarantee a tag: a tag is pushed first.  pop_vlan needs a tag guaranteed
    by the match (or an earlier push) under OpenFlow 1.1+.
    """
    vec = match.slot_vector().get(F.SLOT_INDEX["vlan_tci"], (0, 0))
    depth = 1 if vec[0] & vec[1] & F.VLAN_CFI else 0
    out = []
    for a in acts:
        if isinstance(a, (A.ModVlanVid, A.ModVlanPcp)) and not depth:
            out.append(A.PushVlan(F.ETH_VLAN))
            depth = 1
        elif isinstance(a, A.PushVlan):
            depth += 1
            if depth > 2:
                raise FlowSyntaxError("push_vlan would make more than 2 VLAN tags", col + 1)
        elif isinstance(a, A.PopVlan):
            if not depth:
                raise FlowSyntaxError("pop_vlan needs a VLAN tag in the match "
                                      "(vlan_tci=0x1000/0x1000 or dl_vlan=N)", col + 1)
            depth -= 1
        out.append(a)
    return tuple(out)


def _check_action_prereqs(match: Match, acts: tuple, col: int) -> None:
    """Refuse actions whose field prerequisites the match does not guarantee, as OVS does.

    push_mpls/pop_mpls change the ethertype the later actions see.
    """
    exact = {n: v for n, v, m in match.items if m is None}

    def need(fld: F.Field, what: str) -> None:
        for pre in fld.prereqs:
            if exact.get(pre.field) not in pre.values:
                want = " or ".join(hex(v) if pre.field == "eth_type" else str(v) for v in pre.values)
                raise FlowSyntaxError(f"{what} needs {pre.field}={want} in the match", col + 1)

    for a in acts:
        if isinstance(a, A.SetField):
            need(F.lookup(a.field), f"set_field to {a.field}")
        elif isinstance(a, A.Load):
            need(F.lookup(a.dst.field), f"load to {a.dst.field}")
        elif isinstance(a, A.Move):
            need(F.lookup(a.src.field), f"move from {a.src.field}")
            need(F.lookup(a.dst.field), f"move to {a.dst.field}")
        elif isinstance(a, A.DecTtl) and exact.get("eth_type") not in (F.ETH_IP, F.ETH_IPV6):
            raise FlowSyntaxError("dec_ttl needs ip or ipv6 in the match", col + 1)
        elif isinstance(a, (A.SetMplsLabel, A.SetMplsTc, A.SetMplsTtl, A.DecMplsTtl)):
            need(F.lookup("mpls_label"), str(a))
        elif isinstance(a, A.PushMpls):
            exact = {"eth_type": a.ethertype}
        elif isinstance(a, A.EncapNsh):
            exact = {"eth_type": F.ETH_NSH}
        elif isinstance(a, A.Decap):
            exact = {}
        elif isinstance(a, A.PopMpls):
            need(F.lookup("mpls_label"), "pop_mpls")
            exact = {"eth_type": a.ethertype}


def _set(mb: MatchBuilder, name: str, v: int, msk: int | None, tok: _Tok) -> None:
    try:
        mb.set(name, v, msk)
    except MatchError as exc:
        raise FlowSyntaxError(str(exc), tok.col + 1) from None


def _int(text: str, lo: int, hi: int, what: str) -> int:
    v = int(text, 0)
    if not lo <= v <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}")
    return v


def parse_actions(text: str, base: int = 0) -> tuple:
    """Parse an action list; "drop" or empty means no actions."""
    toks = _split_top(text, base, ",")
    out = []
    for i, tok in enumerate(toks):
        try:
            act = _parse_action(tok)
        except FlowSyntaxError:
            raise
        except (ValueError, KeyError, MatchError) as exc:
            raise FlowSyntaxError(f"{tok.text.split(':')[0].split('(')[0]}: {exc}",
                                  tok.col + 1) from None
        if act is None:
            if len(toks) > 1:
                raise FlowSyntaxError("'drop' must be the only action", tok.col + 1)
            continue
        if isinstance(act, A.GotoTable) and i != len(toks) - 1:
            raise FlowSyntaxError("goto_table must be the last action", tok.col + 1)
        # OpenFlow 1.1+ carries meter as an instruction ahead of the actions.
        if isinstance(act, A.Meter) and out:
            raise FlowSyntaxError("meter must be the first action", tok.col + 1)
        out.append(act)
    return tuple(out)


_SIMPLE = {
    "pop_vlan": A.PopVlan, "strip_vlan": A.PopVlan, "dec_ttl": A.DecTtl,
    "dec_mpls_ttl": A.DecMplsTtl, "ct_clear": A.CtClear, "dec_nsh_ttl": A.DecNshTtl,
    "normal": A.Normal,
}
_SUGAR = {  # legacy mod_* actions are set_field in disguise
    "mod_dl_src": "eth_src", "mod_dl_dst": "eth_dst", "mod_nw_src": "ip_src",
    "mod_nw_dst": "ip_dst", "mod_nw_ttl": "ip_ttl", "set_tunnel": "tun_id",
    "set_tunnel64": "tun_id",
}


def _parse_action(tok: _Tok):
    t = tok.text
    low = t.lower()
    if low in ("drop",):
        return None
    if low in _SIMPLE:
        return _SIMPLE[low]()
    if low in ("in_port", "all", "flood", "local", "controller"):
        if low == "controller":
            return A.Controller()
        return A.Output(F.PORT_NAMES[low])
    if re.fullmatch(r"\d+", t):
        return A.Output(int(t))
    name, arg = _name_arg(t)
    if name == "output":
        if "[" in arg:
            return A.OutputReg(parse_subfield(arg))
        return A.Output(_port(arg))
    if name == "controller":
        return _controller(arg)
    if name == "resubmit":
        return _resubmit(arg)
    if name == "goto_table":
        return A.GotoTable(_int(arg, 0, 254, "table"))
    if name == "set_field":
        val, arrow, dst = arg.partition("->")
        if not arrow:
            raise ValueError("expected set_field:value->field")
        fld = _writable(dst.strip())
        v, m = F.parse_value(fld, val)
        return A.SetField(fld.name, v, m)
    if name == "load":
        val, arrow, dst = arg.partition("->")
        if not arrow:
            raise ValueError("expected load:value->field[start..end]")
        sf = parse_subfield(dst.strip())
        _writable(sf.field)
        v = int(val, 0)
        if v >> sf.width:
            raise ValueError(f"value {v:#x} does not fit {sf.width} bits")
        return A.Load(v, sf)
    if name == "move":
        src, arrow, dst = arg.partition("->")
        if not arrow:
            raise ValueError("expected move:src[]->dst[]")
        s, d = parse_subfield(src.strip()), parse_subfield(dst.strip())
        _writable(d.field)
        if s.width != d.width:
            raise ValueError(f"source has {s.width} bits but destination has {d.width}")
        return A.Move(s, d)
    if name in _SUGAR:
        fld = F.lookup(_SUGAR[name])
        v, _ = F.parse_value(fld, arg)
        return A.SetField(fld.name, v)
    if name in ("mod_tp_src", "mod_tp_dst", "mod_nw_tos", "mod_nw_ecn"):
        raise ValueError(f"use set_field instead of {name} (it needs the protocol)")
    if name == "push_vlan":
        return A.PushVlan(int(arg, 0))
    if name == "mod_vlan_vid":
        return A.ModVlanVid(_int(arg, 0, 4095, "vid"))
    if name == "mod_vlan_pcp":
        return A.ModVlanPcp(_int(arg, 0, 7, "pcp"))
    if name == "push_mpls":
        return A.PushMpls(_ethertype(arg, (F.ETH_MPLS, F.ETH_MPLS_MC)))
    if name == "pop_mpls":
        return A.PopMpls(int(arg, 0))
    if name == "set_mpls_label":
        return A.SetMplsLabel(_int(arg, 0, (1 << 20) - 1, "label"))
    if name == "set_mpls_tc":
        return A.SetMplsTc(_int(arg, 0, 7, "tc"))
    if name == "set_mpls_ttl":
        return A.SetMplsTtl(_int(arg, 0, 255, "ttl"))
    if name == "group":
        return A.Group(_int(arg, 0, 0xFFFFFF00, "group"))
    if name == "meter":
        return A.Meter(_int(arg, 1, 0xFFFF0000, "meter"))
    if name == "ct":
        return _ct(arg, tok.col + len(name) + 2)
    if name == "encap":
        inner, iarg = _name_arg(arg)
        if inner == "nsh":
            md = 1
            for kv in filter(None, (p.strip() for p in iarg.split(","))):
                k, _, v = kv.partition("=")
                if k != "md_type":
                    raise ValueError(f"unsupported nsh encap property {k!r}")
                md = _int(v, 1, 2, "md_type")
            return A.EncapNsh(md)
        if inner in ("ethernet", "mpls", "mpls_mc"):
            return A.Encap(inner)
        raise ValueError(f"unknown encap header {inner!r}")
    if name == "decap":
        return A.Decap()
    if name == "conjunction":
        m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*/\s*(\d+)\s*", arg)
        if not m:
            raise ValueError("expected conjunction(id,k/n)")
        cid, k, n = map(int, m.groups())
        if not (2 <= n <= 64 and 1 <= k <= n):
            raise ValueError("conjunction needs 2 <= n <= 64 and 1 <= k <= n")
        return A.Conjunction(cid, k, n)
    if name == "write_metadata":
        v, _, m = arg.partition("/")
        return A.SetField("metadata", int(v, 0), int(m, 0) if m else None)
    raise ValueError(f"unknown action {name!r}")


def _name_arg(t: str) -> tuple[str, str]:
    m = re.fullmatch(r"([A-Za-z_][\w]*)\s*(?:[:=](.*)|\((.*)\))?\s*", t, re.S)
    if not m:
        raise ValueError(f"cannot read action {t!r}")
    arg = m.group(2) if m.group(2) is not None else (m.group(3) or "")
    return m.group(1).lower(), arg.strip()


def _port(text: str) -> int:
    low = text.strip().lower()
    if low in F.PORT_NAMES:
        return F.PORT_NAMES[low]
    return _int(text, 0, 0xFFFFFF00, "port")


def _ethertype(text: str, allowed: tuple[int, ...]) -> int:
    v = int(text, 0)
    if v not in allowed:
        raise ValueError(f"ethertype must be one of {', '.join(hex(a) for a in allowed)}")
    return v


def _writable(name: str) -> F.Field:
    fld = F.lookup(name)
    if not fld.writable:
        raise ValueError(f"field {fld.name} is read-only")
    return fld


def parse_subfield(text: str) -> A.Subfield:
    m = re.fullmatch(r"([A-Za-z_][\w]*)\[(?:(\d+)(?:\.\.(\d+))?)?\]", text.strip())
    if not m:
        if F.exists(text.strip()):
            return A.Subfield.whole(text.strip())
        raise ValueError(f"bad field reference {text!r} (want field[], field[n] or field[a..b])")
    fld = F.lookup(m.group(1))
    if m.group(2) is None:
        return A.Subfield(fld.name, 0, fld.width)
    a = int(m.group(2))
    b = int(m.group(3)) if m.group(3) is not None else a
    if not a <= b < fld.width:
        raise ValueError(f"bits {a}..{b} out of range for {fld.width}-bit {fld.name}")
    return A.Subfield(fld.name, a, b - a + 1)


def _controller(arg: str) -> A.Controller:
    if not arg:
        return A.Controller()
    if re.fullmatch(r"\d+", arg):
        return A.Controller(max_len=int(arg))
    kw = dict(p.partition("=")[::2] for p in arg.split(","))
    return A.Controller(max_len=int(kw.get("max_len", 65535)), reason=kw.get("reason", "action"))


def _resubmit(arg: str) -> A.Resubmit:
    if "," not in arg:
        return A.Resubmit(port=_port(arg))
    p, _, t = arg.partition(",")
    port = _port(p) if p.strip() else None
    table = _int(t, 0, 254, "table") if t.strip() else None
    return A.Resubmit(port=port, table=table)


def _ct(arg: str, base: int) -> A.Ct:
    kw = {}
    for tok in _split_top(arg, base, ","):
        k, eq, v = tok.text.partition("=")
        k = k.strip().lower()
        if k == "commit":
            kw["commit"] = True
        elif k == "zone":
            kw["zone"] = int(v, 0) if re.fullmatch(r"\s*(0x)?[0-9a-fA-F]+\s*", v) else parse_subfield(v)
            if isinstance(kw["zone"], int) and not 0 <= kw["zone"] <= 65535:
                raise FlowSyntaxError("zone must be in 0..65535", tok.col + 1)
        elif k == "table":
            kw["table"] = _int(v, 0, 254, "table")
        elif k == "alg":
            kw["alg"] = v.strip()
        elif k.startswith("nat"):
            kw["nat"] = _nat(tok.text)
        elif k.startswith("exec"):
            inner = tok.text[tok.text.index("(") + 1:tok.text.rindex(")")]
            acts = parse_actions(inner, tok.col + tok.text.index("(") + 1)
            for a in acts:
                target = a.field if isinstance(a, A.SetField) else getattr(getattr(a, "dst", None), "field", None)
                if target not in ("ct_mark", "ct_label"):
                    raise FlowSyntaxError("ct exec() may only set ct_mark or ct_label", tok.col + 1)
            kw["exec_"] = acts
        else:
            raise FlowSyntaxError(f"unknown ct argument {k!r}", tok.col + 1)
    return A.Ct(**kw)


def _nat(text: str) -> A.Nat:
    _, arg = _name_arg(text)
    if not arg:
        return A.Nat()
    kind, spec, flags = None, "", []
    for part in (p.strip() for p in arg.split(",")):
        k, _, v = part.partition("=")
        if k in ("src", "dst"):
            kind, spec = k, v
        elif k in ("random", "hash", "persistent"):
            flags.append(k)
        else:
            raise ValueError(f"unknown nat argument {k!r}")
    if kind is None:
        raise ValueError("nat needs src= or dst=")
    if not spec:
        return A.Nat(kind, flags=tuple(flags))
    m = re.fullmatch(r"(\[[^\]]+\]|[\d.]+)(?:-(\[[^\]]+\]|[\d.]+))?(?::(\d+)(?:-(\d+))?)?", spec)
    if not m:
        raise ValueError(f"bad nat range {spec!r}")
    amin, amax, pmin, pmax = m.groups()
    amin = amin.strip("[]")
    amax = amax.strip("[]") if amax else None
    ipaddress.ip_address(amin)
    if amax:
        ipaddress.ip_address(amax)
    return A.Nat(kind, amin, amax, int(pmin) if pmin else None,
                 int(pmax) if pmax else None, tuple(flags))


def format_match(match: Match) -> str:
    parts = []
    for name, value, mask in match.items:
        fld = F.lookup(name)
        parts.append(f"{fld.ofctl_name or name}={F.format_value(fld, value, mask)}")
    return ",".join(parts)


def format_flow(flow: Flow, table: bool = True) -> str:
    head = []
    if flow.cookie:
        head.append(f"cookie={flow.cookie:#x}")
    if table:
        head.append(f"table={flow.table}")
    if flow.idle_timeout:
        head.append(f"idle_timeout={flow.idle_timeout}")
    if flow.hard_timeout:
        head.append(f"hard_timeout={flow.hard_timeout}")
    head.append(f"priority={flow.priority}")
    m = format_match(flow.match)
    if m:
        head.append(m)
    return f"{','.join(head)} actions={A.format_actions(flow.actions)}"


def parse_group(text: str, line: int = 1) -> A.GroupMod:
    """Parse an ovs-ofctl group: group_id=1,type=select,bucket=output:1,bucket=..."""
    try:
        return _parse_group(text)
    except FlowSyntaxError as exc:
        exc.line = line
        exc.args = (f"line {line}, column {exc.column}: {exc.reason}",)
        raise
    except ValueError as exc:
        raise FlowSyntaxError(str(exc), 1, line, text) from None


def _parse_group(text: str) -> A.GroupMod:
    # Everything after the first "bucket=" belongs to buckets.
    idx = text.find("bucket=")
    head, rest = (text, "") if idx < 0 else (text[:idx], text[idx:])
    gid, gtype, method, fields_ = None, None, None, ()
    for tok in _split_top(head, 0, ", \t"):
        k, _, v = tok.text.partition("=")
        k = k.strip().lower()
        if k == "group_id":
            gid = int(v, 0)
        elif k == "type":
            if v not in ("all", "select", "indirect", "ff", "fast_failover"):
                raise FlowSyntaxError(f"unknown group type {v!r}", tok.col + 6)
            gtype = "ff" if v == "fast_failover" else v
        elif k == "selection_method":
            method = v
        elif k == "fields" or k.startswith("fields("):
            spec = v if k == "fields" else k[len("fields"):]
            fields_ = tuple(F.lookup(f.strip()).name
                            for f in spec.strip("()").split(",") if f.strip())
        else:
            raise FlowSyntaxError(f"unknown group property {k!r}", tok.col + 1)
    if gid is None or gtype is None:
        raise FlowSyntaxError("group needs group_id= and type=", 1)
    buckets = []
    starts = [m.start() for m in re.finditer(r"bucket=", rest)]
    for a, b in zip(starts, starts[1:] + [len(rest)]):
        seg = rest[a + len("bucket="):b].rstrip().rstrip(",")
        weight, watch, bid, acts = 1, None, None, []
        for tok in _split_top(seg, idx + a + 7, ","):
            m = re.fullmatch(r"(weight|watch_port|bucket_id)\s*[:=]\s*(\S+)", tok.text)
            k, _, v = tok.text.partition("=")
            k = k.strip()
            if m:
                k, v = m.groups()
                if k == "weight":
                    weight = int(v, 0)
                elif k == "watch_port":
                    watch = _port(v)
                else:
                    bid = int(v, 0)
            elif k.startswith("actions"):
                acts.extend(parse_actions(v, tok.col + len(k) + 1))
            else:
                acts.extend(parse_actions(tok.text, tok.col))
        buckets.append(A.Bucket(tuple(acts), weight, watch, bid))
    return A.GroupMod(gid, gtype, tuple(buckets), method, fields_)


def format_group(g: A.GroupMod) -> str:
    parts = [f"group_id={g.group_id}", f"type={g.type}"]
    if g.selection_method:
        parts.append(f"selection_method={g.selection_method}")
    if g.fields:
        parts.append(f"fields({','.join(g.fields)})")
    for b in g.buckets:
        bp = []
        if g.type == "select" and b.weight != 1:
            bp.append(f"weight:{b.weight}")
        if b.watch_port is not None:
            bp.append(f"watch_port:{b.watch_port}")
        bp.append(f"actions={A.format_actions(b.actions)}")
        parts.append("bucket=" + ",".join(bp))
    return ",".join(parts)


def parse_meter(text: str, line: int = 1) -> A.MeterMod:
    """Parse an ovs-ofctl meter: meter=1,kbps,burst,band=type=drop,rate=1000,burst_size=100."""
    try:
        toks = [t.strip() for t in text.split(",")]
        mid, unit, rate, burst = None, "kbps", None, 0
        for t in toks:
            k, _, v = t.partition("=")
            if k == "meter":
                mid = int(v, 0)
            elif k in ("kbps", "pktps"):
                unit = k
            elif k == "band":
                pass
            elif k == "rate":
                rate = int(v, 0)
            elif k == "burst_size":
                burst = int(v, 0)
            elif k in ("burst", "stats", "type") or t == "type=drop":
                pass
            else:
                raise ValueError(f"unknown meter property {k!r}")
        if mid is None or rate is None:
            raise ValueError("meter needs meter= and a band with rate=")
        return A.MeterMod(mid, rate, unit, burst)
    except ValueError as exc:
        raise FlowSyntaxError(str(exc), 1, line, text) from None


def format_meter(m: A.MeterMod) -> str:
    burst = ",burst" if m.burst else ""
    bs = f",burst_size={m.burst}" if m.burst else ""
    return f"meter={m.meter_id},{m.unit}{burst},band=type=drop,rate={m.rate}{bs}"


@dataclass
class FlowFile:
    """The contents of a flow file: flows, groups and meters."""

    flows: list[Flow]
    groups: list[A.GroupMod]
    meters: list[A.MeterMod]


def parse_file(text: str) -> FlowFile:
    """Parse a flow file: one flow per line, group_id=/meter= lines, # comments, \\ continuations."""
    flows, groups, meters = [], [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + lines[i]
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("group_id="):
            groups.append(parse_group(stripped, lineno))
        elif stripped.startswith("meter="):
            meters.append(parse_meter(stripped, lineno))
        else:
            lead = len(line) - len(line.lstrip())
            try:
                flows.append(parse_flow(stripped, lineno))
            except FlowSyntaxError as exc:
                exc.column += lead
                exc.args = (f"line {lineno}, column {exc.column}: {exc.reason}",)
                raise
    return FlowFile(flows, groups, meters)
