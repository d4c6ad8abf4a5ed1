"""What hosts did with traffic: packets forwarded and dropped, by rule and host."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sbnet.agent.embedded import Cluster
from sbnet.agent.traffic import OUTSIDE, Probe, ipv4_addresses
from sbnet.compiler.tables import PIPELINE
from sbnet.flows import actions as A
from sbnet.flows.flow import Flow
from sbnet.flows.ofctl import format_match

FORWARD, DROP = "forwarded", "dropped"
_OUTPUTS = (A.Output, A.OutputReg, A.Group, A.Normal)
_ONWARD = (A.GotoTable, A.Resubmit, A.Controller)


def verdict(flow: Flow) -> str | None:
    """FORWARD for a rule that outputs, DROP for one that ends the packet, None otherwise."""
    if any(isinstance(a, _OUTPUTS) for a in flow.actions):
        return FORWARD
    if any(isinstance(a, _ONWARD) or isinstance(a, A.Ct) and a.table is not None
           for a in flow.actions):
        return None
    return DROP


class RuleNames:
    """Readable names for the rules of a model: cookie -> "stage: kind name" through each
    host's origins; cookie-less flows by table (a priority-0 drop is the table's miss)."""

    def __init__(self, snapshot: dict) -> None:
        self.labels: dict[str, str] = {}
        for n in snapshot.get("network", ()):
            self.labels[n["id"]] = n.get("name") or n["id"][:8]
        groups = {g["id"]: g.get("name") or g["id"][:8] for g in snapshot.get("security_group", ())}
        for p in snapshot.get("port", ()):
            ip = p["fixed_ips"][0]["ip_address"] if p.get("fixed_ips") else ""
            owner = (p.get("device_owner") or "").removeprefix("network:")
            self.labels[p["id"]] = p.get("name") or f"{owner} {ip}".strip()
        for r in snapshot.get("security_group_rule", ()):
            self.labels[r["id"]] = _rule_label(r, groups)
        for r in snapshot.get("router", ()):
            self.labels[r["id"]] = r.get("name") or r["id"][:8]
        for f in snapshot.get("floatingip", ()):
            self.labels[f["id"]] = f["floating_ip_address"]

    def name(self, flow: Flow, origins: dict[int, str]) -> str:
        table = PIPELINE.spec(flow.table).name
        origin = origins.get(flow.cookie) if flow.cookie else None
        if origin:
            _, kind, ident = origin.split(" ", 2)
            kind = {"security_group_rule": "rule"}.get(kind, kind)
            return f"{table}: {kind} {self.labels.get(ident, ident[:8])}"
        if flow.priority == 0:
            return f"{table}: table miss"
        return f"{table}: {format_match(flow.match) or 'any'}"


def _rule_label(rule: dict, groups: dict[str, str]) -> str:
    proto = rule.get("protocol") or "any"
    lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
    ports = "" if lo is None else f" {lo}" if hi in (None, lo) else f" {lo}-{hi}"
    peer = ""
    if rule.get("remote_group_id"):
        peer = f" from group {groups.get(rule['remote_group_id'], '?')}"
    elif rule.get("remote_ip_prefix"):
        peer = f" {'from' if rule['direction'] == 'ingress' else 'to'} {rule['remote_ip_prefix']}"
    eth = "" if (rule.get("ethertype") or "IPv4") == "IPv4" else f" {rule['ethertype']}"
    group = groups.get(rule["security_group_id"], "?")
    return f"{group} {rule['direction']}{eth} {proto}{ports}{peer}"


def counters(cluster: Cluster, only: str | None = None) -> dict[str, dict[tuple, tuple[Flow, int]]]:
    """Per host, per rule that forwards or drops (or only those with verdict `only`):
    (flow, packets so far)."""
    return read(cluster, rules_of(cluster, only))


def rules_of(cluster: Cluster, only: str | None = None) -> dict[str, list]:
    """The installed rules that forward or drop (or only those with verdict `only`)."""
    return {name: [r for r in h.switch.rules()
                   if (v := verdict(r.flow)) is not None and only in (None, v)]
            for name, h in cluster.hosts.items()}


def read(cluster: Cluster, rules: dict[str, list]) -> dict[str, dict[tuple, tuple[Flow, int]]]:
    out = {}
    for name, rs in rules.items():
        sw = cluster.hosts[name].switch
        out[name] = {r.flow.key: (r.flow, sw.rule_stats(r)[0]) for r in rs}
    return out


@dataclass
class Category:
    """One kind of traffic: frames sent, how many reached their receiver, which were
    expected to, copies that reached someone else, and the drops by (host, rule)."""

    name: str
    sent: int = 0
    forwarded: int = 0
    expected_forward: int = 0
    as_expected: int = 0
    leaked: int = 0
    drops: Counter = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        return self.sent - self.forwarded


@dataclass
class Report:
    categories: dict[str, Category] = field(default_factory=dict)
    # (host, verdict, rule) -> packets
    rules: Counter = field(default_factory=Counter)
    # host -> drops of copies of frames that did arrive (a physical network or a flood
    # reaches hosts that have no use for the frame)
    copies_dropped: Counter = field(default_factory=Counter)

    def host_totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (host, v, _), n in self.rules.items():
            out.setdefault(host, {FORWARD: 0, DROP: 0})[v] += n
        return out


def drive(cluster: Cluster, probes: list[Probe], ports: dict[str, str], snapshot: dict) -> Report:
    """Send the probes one by one (a connection's packets in order), see where each lands,
    and charge the drop rules each one moved to its category.  ports: name -> port id."""
    names = RuleNames(snapshot)
    report = Report()
    base = counters(cluster)
    drops = rules_of(cluster, DROP)      # the rules stay put while the probes run
    before = read(cluster, drops)
    for probe in probes:
        cat = report.categories.setdefault(probe.category, Category(probe.category))
        if probe.sender == OUTSIDE:
            d = cluster.send_external(probe.physnet, [probe.frame])
        else:
            d = cluster.send(ports[probe.sender], [probe.frame])
        got = d.external.get(probe.physnet, []) if probe.receiver == OUTSIDE \
            else d.to(ports[probe.receiver])
        arrived = any(_seen(f, probe) for f in got)
        cat.sent += 1
        cat.forwarded += arrived
        cat.expected_forward += probe.expect
        cat.as_expected += arrived == probe.expect
        cat.leaked += sum(len(fs) for pid, fs in d.ports.items()
                          if pid != ports.get(probe.receiver) and pid != ports.get(probe.sender))
        now = read(cluster, drops)
        # Copies of a delivered frame that other hosts drop (a physical network reaches
        # every host) are not why a frame was lost: only a lost frame's drops are its fate.
        for (host, flow), n in _moved(before, now):
            if arrived:
                report.copies_dropped[host] += n
            else:
                cat.drops[(host, names.name(flow, cluster.hosts[host].installed.origins))] += n
        before = now
    for (host, flow), n in _moved(base, counters(cluster)):
        origins = cluster.hosts[host].installed.origins
        report.rules[(host, verdict(flow), names.name(flow, origins))] += n
    return report


def _seen(frame: bytes, probe: Probe) -> bool:
    if probe.seen_src is None and probe.seen_dst is None:
        return True
    ips = ipv4_addresses(frame)
    return ips is not None and probe.seen_src in (None, ips[0]) and probe.seen_dst in (None, ips[1])


def _moved(before: dict, after: dict):
    for host, rules in after.items():
        for key, (flow, n) in rules.items():
            moved = n - before[host].get(key, (flow, 0))[1]
            if moved > 0:
                yield (host, flow), moved
