"""Differential oracle: every compiler scenario's packets, traced through real OVS on the same compiled tables."""

from __future__ import annotations

import importlib
import inspect
import itertools
from dataclasses import dataclass

import pytest

from sbnet.agent.embedded import UNDERLAY_OFPORT, Cluster, apply_diff
from sbnet.compiler.compile import HostPipeline, diff
from sbnet.compiler.topology import TUNNEL_OFPORTS
from sbnet.datapath import odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.parse import parse
from sbnet.datapath.switch import Switch
from sbnet.datapath.tunnel import decap
from sbnet.flows import fields as F
from sbnet.flows.ofctl import format_flow, format_group, format_meter
from sbnet.ovs.dummy import require_ovs
from sbnet.ovs.trace import parse_datapath_actions
from tests.datapath.test_tunnel_ovs import TunnelOVS

pytestmark = pytest.mark.ovs

# Every scenario module of the compiler's tests; those not written yet are skipped by name.
SCENARIO_MODULES = ("test_l2", "test_secgroups", "test_port_security", "test_isolation",
                    "test_l3", "test_qos", "test_trunks", "test_chains", "test_lb")
BRIDGE = "br-int"
# ofproto/trace's default for every recirculation after ct(): a new, tracked connection.
CT_NEW = F.CT_STATE_BITS["new"] | F.CT_STATE_BITS["trk"]
S = F.SLOT_INDEX
MAX_FRAMES = 64                # distinct frames traced per installed pipeline


def _cases() -> list:
    """(module, test name, kwargs) for every scenario test whose arguments all come from
    @pytest.mark.parametrize (fixture-using tests are not scenarios of this kind)."""
    out = []
    for mod_name in SCENARIO_MODULES:
        try:
            mod = importlib.import_module(f"tests.compiler.{mod_name}")
        except ImportError:
            continue
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if not name.startswith("test_") or fn.__module__ != mod.__name__:
                continue
            grids = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
            params = set(inspect.signature(fn).parameters)
            names_values = []
            for m in grids:
                argnames = [a.strip() for a in m.args[0].split(",")] if isinstance(m.args[0], str) \
                    else list(m.args[0])
                rows = [v if len(argnames) > 1 else (v,) for v in m.args[1]]
                rows = [tuple(getattr(v, "values", v)) for v in rows]
                names_values.append((argnames, rows))
            if params - {a for names, _ in names_values for a in names}:
                continue
            for combo in itertools.product(*(rows for _, rows in names_values)):
                kw = {}
                for (names, _), row in zip(names_values, combo):
                    kw.update(zip(names, row))
                ident = "-".join(str(v) for v in kw.values())
                out.append(pytest.param(mod_name, name, kw,
                                        id=f"{mod_name[5:]}.{name[5:]}" + (f"[{ident}]" if ident else "")))
    return out


@dataclass
class Seen:
    """One frame a host's switch processed, with what that host had installed then."""

    host: str
    index: int
    hosts: tuple[str, ...]
    physnets: tuple[str, ...]
    pipeline: HostPipeline
    ofports: dict
    in_port: int
    frame: bytes


def _record(monkeypatch) -> list[Seen]:
    """Run-time recorder: every Cluster made from now on notes each frame its switches
    process, so scenario tests need no change to be replayed against OVS."""
    seen: list[Seen] = []
    clusters: list[Cluster] = []
    init, process = Cluster.__init__, Switch.process

    def cluster_init(self, *a, **kw):
        init(self, *a, **kw)
        clusters.append(self)

    def switch_process(self, batch, now=None):
        for c in clusters:
            for h in c.hosts.values():
                if h.switch is self and h.installed is not None:
                    for i in range(len(batch)):
                        seen.append(Seen(h.name, h.index, tuple(c.hosts), c.physnet_names,
                                         h.installed, dict(h.ofports), int(batch.in_port[i]),
                                         batch.packet(i)))
        return process(self, batch, now)

    monkeypatch.setattr(Cluster, "__init__", cluster_init)
    monkeypatch.setattr(Switch, "process", switch_process)
    return seen


@pytest.fixture(scope="module")
def ovs():
    require_ovs()
    # Plain --enable-dummy keeps real vxlan/gre/geneve netdevs (flow-based tunnel ports).
    with TunnelOVS(0, bridge=BRIDGE) as o:
        yield o


def _load_host(ovs, s: Seen) -> Switch:
    """The host's bridge in OVS (same ofports) and a fresh reference switch, both with
    exactly the pipeline the host had installed when the frame came."""
    ovs.vsctl("--if-exists", "del-br", BRIDGE)
    cmd = ["add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=dummy",
           "fail_mode=secure", "protocols=OpenFlow10,OpenFlow13,OpenFlow15"]
    ports = {f"vif{of}": (of, "dummy") for of in s.ofports.values()}
    ports["underlay"] = (UNDERLAY_OFPORT, "dummy")
    ports.update({f"{k}0": (of, k) for k, of in TUNNEL_OFPORTS.items()})
    cluster = Cluster(list(s.hosts), physnets=s.physnets)
    host = cluster.hosts[s.host]
    ports.update({p: (of, "dummy") for p, of in host.physnets.items()})
    for name, (of, kind) in ports.items():
        cmd += ["--", "add-port", BRIDGE, name, "--", "set", "Interface", name, f"type={kind}",
                f"ofport_request={of}"]
        if kind in TUNNEL_OFPORTS:
            cmd += ["options:remote_ip=flow", "options:key=flow"]
    ovs.vsctl(*cmd)
    # Without native tunnelling a tunnel output is set(tunnel(..)),port: the fields our
    # TunnelPush carries, free of the underlay's routing and ARP (tested elsewhere).
    ovs.appctl("dpif/set-dp-features", BRIDGE, "tnl_push_pop", "false")
    p = s.pipeline
    ovs.replace_flows("\n".join(format_flow(f) for f in p.flows.values()),
                      groups="\n".join(format_group(g) for g in p.groups.values()),
                      meters="\n".join(format_meter(m) for m in p.meters.values()))
    for of in s.ofports.values():
        host.switch.add_port(of, f"vif{of}")
    apply_diff(host.switch, diff(None, p))
    return host.switch


def _frame_and_flow(sw: Switch, s: Seen) -> tuple[int, bytes, dict]:
    """Underlay frames are decapsulated (as both switches do before their tables): the
    inner frame on its tunnel port with the tunnel metadata; others as they came."""
    if s.in_port != UNDERLAY_OFPORT:
        return s.in_port, s.frame, {}
    res = decap(Batch.from_packets([s.frame], s.in_port), [0], list(sw.tunnels.values()),
                sw.underlay)
    assert len(res.batch) == 1, f"underlay frame not ours: {s.frame.hex()}"
    tun = {n: int(res.tun[n][0]) for n in ("tun_id", "tun_src", "tun_dst")}
    return int(res.in_port[0]), res.batch.packet(0), tun


def _our_passes(sw: Switch, in_port: int, frame: bytes, tun: dict) -> list[tuple]:
    """Our datapath actions, pass by pass, each recirculation after ct() resumed as
    ofproto/trace does by default (ct_state=new|trk in the ct action's zone).  A pass
    with several (a flood whose copies each enter conntrack) queues them all; ofproto/trace
    resumes them first in, first out."""
    key = parse(Batch.from_packets([frame], in_port)).keys[:, 0].copy()
    for n, v in tun.items():
        key[S[n]] = v
    passes, queue = [], [key]
    while queue and len(passes) < 16:
        key = queue.pop(0)
        res = sw.xlate.run(key, trace=True)
        passes.append(res.actions)
        ct = None
        edited = key.copy()
        for a in res.actions:
            if isinstance(a, odp.SetFields):
                # the datapath rewrote the packet before it recirculates (e.g. eth_dst)
                for name, value in a.fields:
                    _set_key(edited, F.lookup(name), value)
            elif isinstance(a, odp.Ct):
                ct = a
            elif isinstance(a, odp.Recirc) and ct is not None:
                nxt = edited.copy()
                nxt[S["recirc_id"]] = a.recirc_id
                nxt[S["ct_state"]] = CT_NEW
                nxt[S["ct_zone"]] = ct.zone
                _trace_nat(nxt, ct.nat)
                queue.append(nxt)
            # A recirculation without ct() follows a decapsulation: see _cut_at_decap.
    return passes


def _trace_nat(key, nat) -> None:
    """ofproto/trace applies a ct() NAT to the flow it resumes with: the lowest address
    (and port) of the range, no NAT bits in ct_state."""
    if nat is None or nat.kind is None or not nat.addr_min:
        return
    v6 = ":" in nat.addr_min
    fld = F.lookup(("ipv6_" if v6 else "ip_") + nat.kind)
    _set_key(key, fld, F.parse_value(fld, nat.addr_min)[0])
    if nat.port_min is not None and key[S["nw_proto"]] in (F.IP_TCP, F.IP_UDP):
        proto = "tcp" if key[S["nw_proto"]] == F.IP_TCP else "udp"
        _set_key(key, F.lookup(f"{proto}_{nat.kind}"), nat.port_min)


def _set_key(key, fld, value: int) -> None:
    for (idx, m), (_, v) in zip(fld.slot_masks(fld.max), fld.slot_values(value)):
        key[idx] = (int(key[idx]) & ~m) | v


def _normalise(actions: list[tuple]) -> list[tuple]:
    """One comparable form for both: a tunnel output is (tunnel, port, tun_id, dst); runs of
    outputs are compared as sets (flooding order is OVS's hash order); recirculation and meter ids
    are allocation order in each implementation."""
    out, run, pending_tunnel = [], [], None
    for a in actions:
        if a[0] == "raw" and a[1].startswith("set(tunnel("):
            inner = dict(kv.split("=", 1) for kv in a[1][len("set(tunnel("):-2].split(",")
                         if "=" in kv)
            pending_tunnel = (int(inner.get("tun_id", "0"), 0),
                              int.from_bytes(bytes(map(int, inner["dst"].split("."))), "big"))
            continue
        if a[0] == "tnl_push":
            tun = dict(a[2])
            run.append(("tunnel", a[1], tun.get("tun_id", 0), tun.get("tun_dst", 0)))
            continue
        if a[0] == "output":
            if pending_tunnel is not None and a[1] in TUNNEL_OFPORTS.values():
                run.append(("tunnel", a[1], *pending_tunnel))
            else:
                run.append(("output", 65534 if a[1] == F.OFPP_LOCAL else a[1]))
            continue
        out.extend(sorted(run))
        run = []
        # Recirculation and meter ids are allocation order in each implementation.
        out.append((a[0],) if a[0] in ("recirc", "meter") else a)
    out.extend(sorted(run))
    return out


def _ends_in_decap(actions: list) -> bool:
    """A pass that recirculates without ct(): to parse a decapsulated frame again."""
    return bool(actions) and actions[-1] == ("recirc",) and not any(
        a[0] == "raw" and a[1].startswith("ct(") for a in actions)


def _cut_at_decap(ours: list, theirs: list) -> tuple[list, list]:
    """Compare up to the first recirculation after a decapsulation, on either side.

    ofproto/trace resumes such a recirculation with no inner packet (zeroed fields), so
    what follows says nothing; those tables are checked by traffic through OVS in
    tests/datapath/test_switch_nsh.py.  OVS also recirculates after pop_mpls where our
    switch goes on in the same pass: the actions before OVS's recirculation must agree.
    """
    for i, (po, pt) in enumerate(zip(ours, theirs)):
        if _ends_in_decap(pt):
            cut = len(pt) - 1
            return ours[:i] + [po[:cut] + pt[cut:] if po[:cut] == pt[:cut] else po], theirs[:i + 1]
        if _ends_in_decap(po):
            return ours[:i + 1], theirs[:i + 1]
    return ours, theirs


def _masked(ours: list, theirs: list) -> tuple[list, list]:
    """OVS prints a partial set (DSCP, ECN) as value/mask of the whole field; ours carries
    the field's new value.  Compare the bits OVS's set writes."""
    out_ours, out_theirs = [], []
    for po, pt in itertools.zip_longest(ours, theirs, fillvalue=[]):
        po, pt = list(po), list(pt)
        for i, t in enumerate(pt):
            if t[0] != "set":
                continue
            masks = {f: m for f, _, m in t[2]}
            pt[i] = ("set", t[1], tuple((f, v & m) for f, v, m in t[2]))
            if i < len(po) and po[i][0] == "set" and po[i][1] == t[1]:
                po[i] = ("set", t[1], tuple((f, v & masks.get(f, -1)) for f, v in po[i][2]))
        out_ours.append(po)
        out_theirs.append(pt)
    return out_ours, out_theirs


def _compare(ovs, sw: Switch, s: Seen) -> str | None:
    in_port, frame, tun = _frame_and_flow(sw, s)
    extra = ",".join(f"{n}={F.format_value(F.lookup(n), v)}" for n, v in tun.items() if v)
    theirs = ovs.trace(in_port, frame, extra)
    port_map = ovs.dpif_port_map()
    ovs_passes = [_normalise(parse_datapath_actions(acts, port_map, with_masks=True))
                  for _, acts in theirs.passes]
    buckets = max((len(g.buckets) for g in s.pipeline.groups.values() if g.type == "select"),
                  default=0)
    # Which bucket a select group takes is each implementation's own hash: accept OVS's
    # answer when ours gives it with some bucket chosen.
    for choice in (None, *range(buckets)):
        sw.xlate.select_override = choice
        try:
            ours = [_normalise(odp.canonical(p)) for p in _our_passes(sw, in_port, frame, tun)]
        finally:
            sw.xlate.select_override = None
        ours, theirs_masked = _masked(*_cut_at_decap(ours, ovs_passes))
        if ours == theirs_masked:
            return None
        if choice is None:
            first = ours
    ours, ovs_passes = _masked(*_cut_at_decap(first, ovs_passes))
    return (f"{s.host} in_port={in_port} {extra} frame={frame.hex()}\n"
            f"ours={ours}\nOVS ={ovs_passes}\n--- OVS trace ---\n{theirs.text}")


@pytest.mark.parametrize("module,name,kwargs", _cases())
def test_scenario_packets_get_ovs_datapath_actions(ovs, monkeypatch, module, name, kwargs):
    seen = _record(monkeypatch)
    fn = getattr(importlib.import_module(f"tests.compiler.{module}"), name)
    try:
        fn(**kwargs)
    except AssertionError:
        pass            # the scenario's own test reports that; its packets still count here
    monkeypatch.undo()
    assert seen, "the scenario sent nothing"
    by_install: dict[tuple, dict] = {}
    for s in seen:
        key = (s.host, id(s.pipeline), tuple(sorted(s.ofports.items())))
        by_install.setdefault(key, {}).setdefault((s.in_port, s.frame), s)
    failures, total = [], 0
    for frames in by_install.values():
        # Rate tests send a thousand copies of a few packets: distinct ones, at most
        # MAX_FRAMES spread over the run, tell the tables apart as well.
        distinct = list(frames.values())
        step = max(1, len(distinct) // MAX_FRAMES)
        picked = distinct[::step]
        sw = _load_host(ovs, picked[0])
        for s in picked:
            total += 1
            msg = _compare(ovs, sw, s)
            if msg:
                failures.append(msg)
    assert not failures, f"{len(failures)}/{total} packets differ:\n" + "\n\n".join(failures[:3])


def test_oracle_notices_a_table_that_differs(ovs, monkeypatch):
    """The comparison can fail: OVS without the flows naming the destination's MAC disagrees."""
    from tests.compiler.test_l2 import test_vm_to_vm_across_hosts
    seen = _record(monkeypatch)
    test_vm_to_vm_across_hosts("vxlan")
    monkeypatch.undo()
    first = seen[0]
    sw = _load_host(ovs, first)
    assert _compare(ovs, sw, first) is None
    dst = ":".join(f"{b:02x}" for b in first.frame[:6])
    ovs.ofctl("del-flows", f"dl_dst={dst}")
    assert "ours=" in (_compare(ovs, sw, first) or "")
