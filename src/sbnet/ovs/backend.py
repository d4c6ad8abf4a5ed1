"""Open vSwitch as a Datapath: one bridge of a private ovs-vswitchd, ports over OVSDB, flows in bundles."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sbnet.datapath.switch import FlowStats
from sbnet.flows import actions as A
from sbnet.flows.flow import Flow
from sbnet.flows.ofctl import (
    format_flow,
    format_group,
    format_match,
    format_meter,
    parse_flow,
)
from sbnet.ovs.dummy import DummyOVS, OVSError, TraceResult

TUNNEL_KINDS = ("vxlan", "gre", "geneve")
PROTOCOLS = "OpenFlow10,OpenFlow11,OpenFlow12,OpenFlow13,OpenFlow14,OpenFlow15"
_STATS = re.compile(r"\b(duration|n_packets|n_bytes|idle_age|hard_age|reset_counts)=([^,\s]*),?\s*")
_DP_PORT = re.compile(r"^\s+(\S+) (\d+)/(\d+):", re.MULTILINE)


@dataclass(frozen=True)
class DatapathFlow:
    """One megaflow of `ovs-appctl dpctl/dump-flows -m`, with the tier that holds it."""

    match: str
    packets: int
    bytes: int
    used: str
    tier: str          # "nic" when OVS says offloaded:yes or dp:tc, else "software"
    actions: str
    text: str

    @classmethod
    def parse(cls, line: str) -> DatapathFlow:
        head, _, actions = line.partition(", actions:")
        actions = actions.split(", dp-extra-info:")[0]
        stats = dict(re.findall(r"\b(packets|bytes|used|offloaded|dp):([^,\s]+)", head))
        match = re.split(r", (?:packets|bytes|used|offloaded|dp|flags):", head)[0]
        match = re.sub(r"^ufid:[0-9a-f-]+, ", "", match)
        offloaded = stats.get("offloaded") in ("yes", "partial") or stats.get("dp") == "tc"
        return cls(match, int(stats.get("packets", 0)), int(stats.get("bytes", 0)),
                   stats.get("used", "never"), "nic" if offloaded else "software",
                   actions.strip(), line)


class OvsDatapath:
    """The Datapath interface on one bridge of a running ovs-vswitchd.

    Ports are created through OVSDB with `ovs-vsctl`: a bridge or port change is one
    OVSDB transaction, and ovs-vsctl waits until ovs-vswitchd has applied it (so the
    ofport is assigned when the call returns); it is the same release as the daemons,
    and these changes are rare (host setup), so a long-lived IDL client would buy nothing.
    Flows, groups and meters go through `ovs-ofctl` (OpenFlow 1.5, bundles).
    """

    def __init__(self, ovs: DummyOVS, bridge: str = "br0", datapath_type: str = "netdev", *,
                 fail_mode: str = "secure", hw_offload: bool = False, create: bool = True,
                 owns_daemons: bool = False) -> None:
        """ovs: running daemons (DummyOVS, dummy=False for real datapaths).  hw_offload
        writes other_config:hw-offload=true (read by ovs-vswitchd when it starts: use
        `start(hw_offload=True)` to have it in force)."""
        self.ovs = ovs
        self.bridge = bridge
        self.datapath_type = datapath_type
        self.fail_mode = fail_mode
        self._owns = owns_daemons
        if hw_offload:
            ovs.vsctl("set", "Open_vSwitch", ".", "other_config:hw-offload=true")
        if create:
            self.create()

    @classmethod
    def start(cls, bridge: str = "br0", datapath_type: str = "netdev", *,
              netns: str | None = None, hw_offload: bool = False,
              fail_mode: str = "secure") -> OvsDatapath:
        """Start private daemons (in `netns` if given) and make the bridge; close() stops them."""
        config = {"hw-offload": "true"} if hw_offload else {}
        # A dummy instance makes this bridge itself (no ports); create() then finds it.
        ovs = DummyOVS(0, bridge, dummy=datapath_type == "dummy", netns=netns,
                       other_config=config)
        ovs.start()
        try:
            return cls(ovs, bridge, datapath_type, fail_mode=fail_mode, owns_daemons=True)
        except BaseException:
            ovs.stop()
            raise

    def __enter__(self) -> OvsDatapath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the daemons if this object started them (the bridge goes with them)."""
        if self._owns:
            self.ovs.stop()

    # -- bridge and ports ---------------------------------------------------
    def create(self) -> None:
        self.ovs.vsctl("--may-exist", "add-br", self.bridge, "--", "set", "Bridge", self.bridge,
                       f"datapath_type={self.datapath_type}", f"fail_mode={self.fail_mode}",
                       f"protocols={PROTOCOLS}")

    def destroy(self) -> None:
        self.ovs.vsctl("--if-exists", "del-br", self.bridge)

    def add_port(self, name: str, ofport: int | None = None, type: str = "system",
                 options: dict | None = None, **columns) -> int:
        """Add an interface (type system, internal, vxlan, ...) at OpenFlow port `ofport`
        (ofport_request), with options:* and other Interface columns; its ofport."""
        cols = [f"type={type}"] if type != "system" else []
        if ofport is not None:
            cols.append(f"ofport_request={ofport}")
        cols += [f"options:{k}={v}" for k, v in (options or {}).items()]
        cols += [f"{k}={v}" for k, v in columns.items()]
        cmd = ["add-port", self.bridge, name]
        self.ovs.vsctl(*cmd, *(["--", "set", "Interface", name, *cols] if cols else []))
        got = int(self.ovs.vsctl("get", "Interface", name, "ofport").strip() or -1)
        if got < 0 or (ofport is not None and got != ofport):
            err = self.ovs.vsctl("get", "Interface", name, "error").strip()
            self.ovs.vsctl("--if-exists", "del-port", self.bridge, name)
            raise OVSError(f"port {name} on {self.bridge}: ofport {got}, wanted {ofport}: {err}")
        return got

    def add_internal_port(self, name: str, ofport: int | None = None) -> int:
        return self.add_port(name, ofport, type="internal")

    def add_tunnel_port(self, name: str, kind: str, ofport: int | None = None, *,
                        remote_ip: str = "flow", key: int | str = "flow",
                        local_ip: str | None = None, dst_port: int | None = None,
                        **options) -> int:
        """A vxlan/gre/geneve port; remote_ip and key "flow" take them from tun_dst/tun_id."""
        if kind not in TUNNEL_KINDS:
            raise ValueError(f"tunnel kind must be one of {TUNNEL_KINDS}, not {kind!r}")
        opts = {"remote_ip": remote_ip, "key": key, **options}
        if local_ip is not None:
            opts["local_ip"] = local_ip
        if dst_port is not None:
            opts["dst_port"] = dst_port
        return self.add_port(name, ofport, type=kind, options=opts)

    def delete_port(self, name: str) -> None:
        self.ovs.vsctl("--if-exists", "del-port", self.bridge, name)

    def ports(self) -> dict[str, int]:
        """Interface name -> OpenFlow port number, for this bridge's ports."""
        names = set(self.ovs.vsctl("list-ifaces", self.bridge).split())
        # Every interface's ofport in one query (one call, not one per port; a port removed
        # meanwhile by another client is simply gone rather than an error).
        rows = self.ovs.vsctl("--format=csv", "--data=bare", "--no-headings",
                              "--columns=name,ofport", "list", "Interface")
        out = {}
        for row in rows.splitlines():
            name, _, ofport = row.rpartition(",")
            name = name.strip('"')
            if name in names and ofport.strip().lstrip("-").isdigit():
                out[name] = int(ofport)
        return out

    # The Datapath protocol's port methods (the names every backend shares).
    def plug(self, name: str, ofport: int) -> int:
        return self.add_port(name, ofport)

    def unplug(self, name: str) -> None:
        self.delete_port(name)

    def add_tunnel(self, name: str, kind: str, ofport: int, **options) -> int:
        return self.add_tunnel_port(name, kind, ofport, **options)

    def port_names(self) -> dict[str, int]:
        return {n: p for n, p in self.ports().items() if n != self.bridge}

    def datapath_ports(self) -> dict[int, int]:
        """Datapath port number -> OpenFlow port, for this bridge (from dpif/show)."""
        text = self.ovs.appctl("dpif/show")
        out, mine = {}, False
        for line in text.splitlines():
            if re.match(r"^  \S+:$", line):
                mine = line.strip() == f"{self.bridge}:"
            elif mine and (m := _DP_PORT.match(line)):
                out[int(m.group(3))] = int(m.group(2))
        return out

    # -- flows, groups, meters -----------------------------------------------
    def bundle(self, add: list[Flow] = (), delete: list[Flow] = (),
               groups: list[A.GroupMod] = (), now: float | None = None,
               meters: list[A.MeterMod] = ()) -> None:
        """Group changes, flow deletions and additions in one OpenFlow bundle: all or none.

        OpenFlow has no meter mods in bundles: meters are added (or modified) before the
        bundle and the ones that were new are taken out again if the bundle fails.
        `now` is accepted for the interface; OVS keeps its own clock.
        """
        new_meters = self._add_meters(meters)
        lines = [f"group add_or_mod {format_group(g)}" for g in groups]
        lines += [f"flow delete_strict {_flow_key(f)}" for f in delete]
        lines += [f"flow add {format_flow(f)}" for f in add]
        if not lines:
            return
        try:
            self._ofctl("bundle", "-", stdin="".join(ln + "\n" for ln in lines))
        except OVSError:
            for mid in new_meters:
                self._ofctl("del-meter", f"meter={mid}")
            raise

    def _add_meters(self, meters: list[A.MeterMod]) -> list[int]:
        if not meters:
            return []
        have = {m.meter_id for m in self.dump_meters()}
        new = []
        try:
            for m in meters:
                self._ofctl("mod-meter" if m.meter_id in have else "add-meter", format_meter(m))
                if m.meter_id not in have:
                    new.append(m.meter_id)
        except OVSError:
            for mid in new:
                self._ofctl("del-meter", f"meter={mid}")
            raise
        return new

    def add_flows(self, flows: list[Flow]) -> None:
        self.bundle(add=flows)

    def delete_flows(self, flows: list[Flow]) -> None:
        self.bundle(delete=flows)

    def delete_group(self, group_id: int) -> None:
        self._ofctl("del-groups", f"group_id={group_id}")

    def clear(self) -> None:
        """Remove every flow, group and meter."""
        self._ofctl("del-flows")
        self._ofctl("del-groups")
        self._ofctl("del-meters")

    def load(self, text: str) -> None:
        """Load a flow file (flows, group_id= and meter= lines) in one bundle."""
        from sbnet.flows.ofctl import parse_file
        ff = parse_file(text)
        self.bundle(add=ff.flows, groups=ff.groups, meters=ff.meters)

    def dump_flows(self, sync: bool = True) -> list[FlowStats]:
        """Installed flows with counters, read back into Flow objects.

        sync: first wait for a revalidator pass, which folds the megaflows' counts into
        the rules (otherwise the counters lag the traffic by up to half a second)."""
        if sync:
            self.ovs.appctl("revalidator/wait")
        out = []
        for line in self._ofctl("dump-flows", options=("--no-names",)).splitlines():
            if " actions=" not in line or line.startswith("OFPST_"):
                continue
            stats = dict(_STATS.findall(line))
            flow = parse_flow(_STATS.sub("", line).strip().rstrip(","))
            out.append(FlowStats(flow, int(stats.get("n_packets", 0)),
                                 int(stats.get("n_bytes", 0)),
                                 float(stats.get("duration", "0s").rstrip("s")),
                                 float(stats.get("idle_age", 0))))
        out.sort(key=lambda s: (s.flow.table, -s.flow.priority))
        return out

    def dump_groups(self) -> str:
        return self._ofctl("dump-groups")

    def dump_meters(self) -> list[A.MeterMod]:
        """Installed meters (one drop band each, as sbnet writes them)."""
        out = []
        for text in _records(self._ofctl("dump-meters"), "meter="):
            kv = dict(re.findall(r"(\w+)=(\d+)", text))
            unit = "pktps" if re.search(r"\bpktps\b", text) else "kbps"
            out.append(A.MeterMod(int(kv["meter"]), int(kv.get("rate", 0)), unit,
                                  int(kv.get("burst_size", 0))))
        return sorted(out, key=lambda m: m.meter_id)

    def delete_meter(self, meter_id: int) -> list[Flow]:
        """Delete a meter; OVS deletes the flows naming it too: returns those flows."""
        users = [s.flow for s in self.dump_flows(sync=False)
                 if A.Meter(meter_id) in s.flow.actions]
        self._ofctl("del-meter", f"meter={meter_id}")
        return users

    def meter_stats(self) -> list:
        """Per meter (sbnet.datapath.meters.MeterStats): flows naming it, packets in, drops."""
        from sbnet.datapath.meters import MeterStats
        out = []
        for text in _records(self._ofctl("meter-stats"), "meter:"):
            kv = dict(re.findall(r"(\w+):([\d.]+)", text))
            out.append(MeterStats(int(kv["meter"]), int(kv["flow_count"]),
                                  int(kv["packet_in_count"]), int(kv["byte_in_count"]),
                                  float(kv["duration"]), int(kv.get("packet_count", 0)),
                                  int(kv.get("byte_count", 0))))
        return sorted(out, key=lambda m: m.meter_id)

    # -- datapath ------------------------------------------------------------
    def dump_megaflows(self, all_bridges: bool = False) -> list[str]:
        """`dpctl/dump-flows -m` lines (offloaded:/dp: say the tier) of megaflows that
        enter through this bridge's ports; all_bridges: every flow of the datapath.
        Ports are datapath port numbers (datapath_ports() maps them to OpenFlow's)."""
        return [f.text for f in self.megaflows(all_bridges)]

    def megaflows(self, all_bridges: bool = False) -> list[DatapathFlow]:
        text = self.ovs.appctl("dpctl/dump-flows", "-m", "--no-names")
        mine = None if all_bridges else set(self.datapath_ports())
        out = []
        for line in text.splitlines():
            if ", actions:" not in line:
                continue
            if mine is not None:
                m = re.search(r"\bin_port\((\d+)\)", line)
                if m is None or int(m.group(1)) not in mine:
                    continue
            out.append(DatapathFlow.parse(line.strip()))
        return out

    def trace(self, in_port: int, packet: bytes, extra: str = "") -> TraceResult:
        """ofproto/trace of `packet` arriving on OpenFlow port `in_port`."""
        flow = f"in_port={in_port}" + (f",{extra}" if extra else "")
        return TraceResult.parse(self.ovs.appctl("ofproto/trace", self.bridge, flow, packet.hex()))

    def dump_conntrack(self, zone: int | None = None) -> list[str]:
        args = () if zone is None else (f"zone={zone}",)
        return [ln for ln in self.ovs.appctl("dpctl/dump-conntrack", *args).splitlines() if ln]

    def flush_conntrack(self) -> None:
        self.ovs.appctl("dpctl/flush-conntrack")

    def _ofctl(self, cmd: str, *args: str, options: tuple[str, ...] = (),
               stdin: str | None = None) -> str:
        return self.ovs._run(["ovs-ofctl", "-O", "OpenFlow15", *options, cmd,
                              f"unix:{self.ovs.dir}/{self.bridge}.mgmt", *args], stdin=stdin)


def _records(text: str, head: str) -> list[str]:
    """An ovs-ofctl reply split into records, each starting at a line that starts with `head`
    (a meter's bands follow it on further lines)."""
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(head):
            out.append(line)
        elif out and not line.startswith("OFPST_"):
            out[-1] += " " + line.strip()
    return out


def _flow_key(flow: Flow) -> str:
    """A flow's identity (table, priority, match) as delete_strict takes it."""
    m = format_match(flow.match)
    return f"table={flow.table},priority={flow.priority}" + (f",{m}" if m else "")
