"""`sbnet agent`: one host's agent following a Neutron API, on Open vSwitch or the reference switch."""

from __future__ import annotations

import os
import signal

import typer

from sbnet.compiler.topology import SERVICE_OFPORT, TUNNEL_OFPORTS


def _physnets(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, ofport = item.partition("=")
        if not name or not ofport.isdigit():
            raise typer.BadParameter(f"--physnet {item!r}: expected NAME=OFPORT")
        out[name] = int(ofport)
    return out


class BridgeRefused(Exception):
    """An existing integration bridge that sbnet cannot drive as it is (the message says
    which setting and what to do); sbnet changes nothing on a bridge that is already there."""


def adopt_bridge(ovs, bridge: str, datapath_type: str):
    """The integration bridge: made (fail_mode secure, OpenFlow 1.0-1.5, `datapath_type`)
    when missing; taken as it is when there, VMs may be on it, unless a setting sbnet needs
    differs, then BridgeRefused naming it.  Its datapath type is whatever it has."""
    from sbnet.ovs.backend import OvsDatapath
    from sbnet.ovs.dummy import OVSError
    try:
        ovs.vsctl("br-exists", bridge)
    except OVSError:
        return OvsDatapath(ovs, bridge, datapath_type)
    get = lambda col: ovs.vsctl("get", "Bridge", bridge, col).strip().strip('"')  # noqa: E731
    fail_mode = get("fail_mode")
    if fail_mode != "secure":
        raise BridgeRefused(
            f"{bridge} exists with fail_mode={fail_mode if fail_mode != '[]' else 'unset'}, "
            f"sbnet needs fail_mode=secure (a standalone bridge switches on its own when no "
            f"controller answers); sbnet does not change a bridge in use: run `ovs-vsctl "
            f"set-fail-mode {bridge} secure` yourself, or give --bridge a new name")
    protocols = get("protocols")
    if "OpenFlow15" not in protocols:
        raise BridgeRefused(
            f"{bridge} exists with protocols={protocols}, sbnet needs OpenFlow15 among them "
            f"(its flows use OpenFlow 1.5); sbnet does not change a bridge in use: run "
            f"`ovs-vsctl set Bridge {bridge} protocols=<yours>,OpenFlow15` yourself, or give "
            f"--bridge a new name")
    return OvsDatapath(ovs, bridge, get("datapath_type") or "system", create=False)


def _ovs(rundir: str, bridge: str, tunnel_ip: str, datapath_type: str = "netdev",
         underlay: tuple[str, str, str] | None = None, say=lambda line: None):
    """underlay: (bridge, NIC, prefix) to set up for userspace tunnelling (brphy)."""
    from sbnet.ovs.system import RunningOVS
    ovs = RunningOVS(rundir)
    netns = _daemon_netns(f"{rundir}/ovs-vswitchd.pid")
    if underlay is not None:
        from sbnet.agent.brphy import UnderlayRefused, setup_underlay_bridge
        try:
            setup_underlay_bridge(ovs, netns, underlay[0], underlay[1], tunnel_ip,
                                  underlay[2], say)
        except UnderlayRefused as exc:
            raise HostRefused(str(exc)) from None
    dp = adopt_bridge(ovs, bridge, datapath_type)
    have = dp.ports()
    for kind, ofport in TUNNEL_OFPORTS.items():
        if f"{kind}0" not in have:
            dp.add_tunnel_port(f"{kind}0", kind, ofport)
    check_ovs_tunnel_ip(ovs, netns, dp, tunnel_ip)
    from sbnet.agent.slowpath import ServicePort
    svc = ServicePort(netns)
    name = svc.create()
    if name not in have:
        dp.add_port(name, SERVICE_OFPORT)
    from sbnet.agent.ovsdb import IfaceWatcher
    watcher = IfaceWatcher(f"{rundir}/db.sock", bridge).start()
    return dp, watcher, svc


def _daemon_netns(pidfile: str) -> str | None:
    """The network namespace of the daemon whose pid file this is, when not ours (the
    slow-path port must be where ovs-vswitchd sees interfaces)."""
    try:
        path = f"/proc/{int(open(pidfile).read().strip())}/ns/net"
        if os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino:
            return path
    except (OSError, ValueError):
        pass
    return None


class HostRefused(Exception):
    """This host cannot carry tunnels as configured (the message says what and what to do)."""


def _addresses(netns: str | None) -> dict[str, str]:
    """Address -> interface in a network namespace (given by name or /proc path)."""
    import json

    from sbnet.agent.slowpath import _ip
    out = {}
    for link in json.loads(_ip(netns, "-j", "addr", "show").stdout or "[]"):
        for a in link.get("addr_info", ()):
            out[a["local"]] = link["ifname"]
    return out


def check_ovs_tunnel_ip(ovs, netns: str | None, dp, tunnel_ip: str) -> str:
    """The interface holding --tunnel-ip where ovs-vswitchd runs; HostRefused when it is
    no address there, or (userspace datapath) not on an OVS bridge, where tunnels from it
    would be lost without a word."""
    from sbnet.ovs.dummy import OVSError
    dev = _addresses(netns).get(tunnel_ip)
    if dev is None:
        raise HostRefused(f"--tunnel-ip {tunnel_ip} is not an address of this host (where "
                          f"ovs-vswitchd runs): tunnels from it cannot leave")
    if dp.datapath_type == "netdev":
        try:
            ovs.vsctl("br-exists", dev)
        except OVSError:
            raise HostRefused(
                f"--tunnel-ip {tunnel_ip} is on {dev}, not on an OVS bridge: the userspace "
                f"(netdev) datapath sends tunnels only from an address on an OVS bridge that "
                f"holds the underlay NIC (br-phy: see the README's OVS compute node)") from None
    return dev


def check_reference_underlay(netns: str | None, underlay: str, tunnel_ip: str,
                             prefix: str) -> None:
    """HostRefused when the underlay interface is missing or --tunnel-ip is not on the
    underlay subnet (the reference switch owns that address and ARPs for its peers)."""
    import ipaddress
    from sbnet.agent.vifs import links
    if underlay not in links(netns):
        raise HostRefused(f"--underlay {underlay}: no such interface"
                          + (f" in network namespace {netns}" if netns else ""))
    try:
        inside = ipaddress.ip_address(tunnel_ip) in ipaddress.ip_network(prefix, strict=False)
    except ValueError as exc:
        raise HostRefused(f"--tunnel-ip/--underlay-prefix: {exc}") from None
    if not inside:
        raise HostRefused(f"--tunnel-ip {tunnel_ip} is not in --underlay-prefix {prefix}: "
                          f"peers could not reach it on the underlay")


def _link_mac(netns: str | None, dev: str) -> str:
    import json

    from sbnet.agent.slowpath import _ip
    return json.loads(_ip(netns, "-j", "link", "show", dev).stdout)[0]["address"]


def _reference(underlay: str, underlay_mac: str, tunnel_ip: str, prefix: str, agent_ref: list,
               netns: str | None, say, switch_socket: str, priority: int):
    """The reference switch on AF_PACKET in a daemon of its own (started if none answers
    at `switch_socket`, taken up again after a restart: traffic goes on meanwhile): the
    underlay interface (its neighbours resolved by ARP), tunnel ports, the slow-path port,
    and VIFs found as tap interfaces named for bound ports (attached as they appear)."""
    from sbnet.agent.neighbours import UnderlayArp
    from sbnet.agent.switchd import SwitchClient
    from sbnet.datapath.tunnel import TunnelPort
    check_reference_underlay(netns, underlay, tunnel_ip, prefix)
    underlay_mac = underlay_mac or _link_mac(netns, underlay)
    dp = SwitchClient.connect(switch_socket, "br-sbnet", netns, priority=priority)
    have = dp.ports()
    underlay_ofport = 65000
    if underlay not in have:
        dp.attach(underlay_ofport, underlay)
        dp.underlay("add_port", underlay_ofport, underlay_mac)
        dp.underlay("add_local", tunnel_ip)
        dp.underlay("add_route", prefix, underlay_ofport, None, tunnel_ip)
    for kind, ofport in TUNNEL_OFPORTS.items():
        if f"{kind}0" not in have:
            dp.add_tunnel_port(TunnelPort(ofport, kind, key="flow"), f"{kind}0")
    from sbnet.agent.slowpath import ServicePort
    svc = ServicePort(netns)
    name = svc.create()
    if name not in have:
        dp.attach(SERVICE_OFPORT, name)
    arp = UnderlayArp(underlay, underlay_mac, tunnel_ip,
                      install=lambda ip, mac: dp.underlay("add_neighbour", ip, mac),
                      remove=lambda ip: dp.underlay("remove_neighbour", ip),
                      say=say, netns=netns).start()
    # VIFs the daemon already switches (a restart): taken up as they are.
    adopt = {n: o for n, o in have.items() if n.startswith("tap")}

    def peers(agent) -> None:
        """Peers' tunnel endpoints on the underlay subnet: the ones to keep resolved."""
        import ipaddress
        net = ipaddress.ip_network(prefix, strict=False)
        arp.want({h["tunnel_ip"] for h in agent.mirror.by_type.get("host", {}).values()
                  if h["id"] != agent.host and ipaddress.ip_address(h["tunnel_ip"]) in net})
    from sbnet.agent.vifs import tap_attacher
    vifs = tap_attacher(dp, agent_ref, netns, adopt, peers)
    return dp, vifs, svc, arp


def _ebpf(host: str, tunnel_ip: str, agent_ref: list, netns: str | None = None,
          xdp: str | None = None):
    """The kernel eBPF tier with the reference switch as its slow path, in this process.
    The underlay is the host's own: VXLAN through a kernel collect_md device, and the slow
    path's tunnel packets sent as UDP through the host's routes and neighbours.  Its maps
    are pinned under the host's name: a previous agent's program goes on forwarding until
    this one has taken up its ports, megaflows and connections.  netns: the namespace
    holding the host's devices and underlay (default: the agent's own).  xdp: "native" or
    "generic", the XDP program too on every port (EbpfDatapath's xdp)."""
    from sbnet.datapath.ebpf.datapath import EbpfDatapath
    from sbnet.datapath.ebpf.tier import available
    from sbnet.datapath.switch import Switch
    from sbnet.datapath.tunnel import TunnelPort
    why = available()
    if why is not None:
        raise typer.BadParameter(f"--datapath ebpf: {why} (--datapath reference runs anywhere)")
    dp = EbpfDatapath(Switch("br-sbnet"), netns=netns, pin=host, xdp=xdp)
    underlay_ofport, gateway = 65000, "169.254.0.1"
    dp.underlay("add_port", underlay_ofport, "02:00:00:00:00:01")
    dp.underlay("add_local", tunnel_ip)
    # Every tunnel packet of the slow path goes to one pseudo next hop; the kernel routes it.
    dp.underlay("add_route", "0.0.0.0/0", underlay_ofport, gateway, tunnel_ip)
    dp.underlay("add_neighbour", gateway, "02:00:00:00:00:02")
    for kind, ofport in TUNNEL_OFPORTS.items():
        dp.add_tunnel_port(TunnelPort(ofport, kind, key="flow"), f"sb{kind}0")
    from sbnet.agent.slowpath import ServicePort
    svc = ServicePort(netns)
    dp.attach(SERVICE_OFPORT, svc.create())
    # VIFs the previous agent switched keep their ports (its megaflows name them).
    adopt = {n: o for n, o in dp.kept_ports().items() if n.startswith("tap")}
    for name, ofport in adopt.items():
        dp.attach(ofport, name)
    from sbnet.agent.vifs import tap_attacher
    return dp.start(), tap_attacher(dp, agent_ref, netns, adopt=adopt), svc


def _nic_channel(listen: str, vfs: list[str], networks: list[str], api: str, headers: dict,
                 host: str):
    """The SmartNIC's channel to its server, answering on `listen` (ADDRESS:PORT)."""
    from sbnet.agent.nicside import NicChannel
    from sbnet.cni.client import JsonClient
    address, _, port = listen.rpartition(":")
    if not address or not port.isdigit():
        raise ValueError(f"{listen!r}: expected ADDRESS:PORT")
    pairs = dict(item.partition("=")[::2] for item in vfs)
    if not pairs or not all(pairs.values()):
        raise ValueError("give the server's VFs as --vf VF=REPRESENTOR")
    offered = {}
    for item in networks:
        name, _, groups = item.partition("=")
        offered[name] = groups.split(",") if groups else None
    if not offered:
        raise ValueError("offer at least one --container-network")
    return NicChannel(JsonClient(api, headers), host, pairs, offered).serve(address, int(port))


def register(app: typer.Typer) -> None:
    @app.command()
    def agent(
        host: str = typer.Option(..., help="this host's name (ports bind to it by binding:host_id)"),
        api: str = typer.Option("http://127.0.0.1:9696", help="the Neutron API's URL"),
        tunnel_ip: str = typer.Option(..., help="this host's tunnel endpoint address"),
        datapath: str = typer.Option("ovs", help="ovs | reference | ebpf"),
        xdp: str = typer.Option("", help="ebpf: the XDP program too on every port, native | "
                                "generic (off by default: on veths it does not help)"),
        bridge: str = typer.Option("br-int", help="OVS: the integration bridge (an existing "
                                   "one is used as it is, never changed: see README)"),
        datapath_type: str = typer.Option("netdev", help="OVS: the datapath type of a bridge "
                                          "the agent creates (netdev: userspace; system: "
                                          "the kernel module)"),
        ovs_rundir: str = typer.Option("/var/run/openvswitch", help="OVS: its run directory"),
        underlay: str = typer.Option("", help="reference: the underlay interface"),
        underlay_bridge: str = typer.Option("", help="OVS: set up this bridge for userspace "
                                            "tunnelling (e.g. br-phy: netdev, holding "
                                            "--underlay-interface and --tunnel-ip, with an "
                                            "ovs/route to --underlay-prefix); left as it is "
                                            "when already set up"),
        underlay_interface: str = typer.Option("", help="OVS: the underlay NIC to put on "
                                               "--underlay-bridge"),
        underlay_mac: str = typer.Option("", help="reference: the MAC tunnels are sent from "
                                         "(default: the underlay interface's)"),
        underlay_prefix: str = typer.Option("", help="reference, or OVS with --underlay-bridge: "
                                            "the underlay subnet (on-link)"),
        neighbour: list[str] = typer.Option([], help="reference: IP=MAC of a peer's tunnel "
                                            "endpoint (repeatable; optional: peers are "
                                            "resolved by ARP on the underlay)"),
        netns: str = typer.Option("", help="reference, ebpf: the network namespace holding "
                                  "the underlay and VIF interfaces (default: the agent's own)"),
        switch_socket: str = typer.Option("", help="reference: the switch daemon's socket "
                                          "(default /run/sbnet/HOST.sock); the daemon outlives "
                                          "the agent, so a restart does not stop traffic"),
        switch_priority: int = typer.Option(-10, help="reference: the niceness the switch "
                                            "daemon takes when the agent starts it (as "
                                            "ovs-ctl gives ovs-vswitchd: -10)"),
        physnet: list[str] = typer.Option([], help="NAME=OFPORT of a physical network's port"),
        profile: str = typer.Option("software", help="the host's NIC profile"),
        wait: float = typer.Option(1.0, help="long-poll seconds on the change feed"),
        stats_every: float = typer.Option(10.0, help="seconds between port counter reports"),
        metadata_url: str = typer.Option("", help="Nova's metadata service (e.g. "
                                         "http://controller:8775): VMs' http://169.254.169.254 "
                                         "is proxied there with their instance headers"),
        metadata_secret: str = typer.Option("", help="the secret shared with Nova "
                                            "(metadata_proxy_shared_secret) that signs "
                                            "X-Instance-ID"),
        token_file: str = typer.Option("", help="a file holding the token to send as "
                                       "X-Auth-Token (an API served with --require-token; "
                                       "the token must have the admin role)"),
        nic_channel: str = typer.Option("", help="SmartNIC mode: ADDRESS:PORT where the "
                                        "server's sbnet-cni asks for container interfaces "
                                        "(a link-local address on a link to the server only)"),
        vf: list[str] = typer.Option([], help="SmartNIC mode: VF=REPRESENTOR, a server-side "
                                     "interface and its representor here (repeat)"),
        container_network: list[str] = typer.Option([], help="SmartNIC mode: NETWORK[=GROUP,"
                                                    "GROUP] offered to the server's "
                                                    "containers, with their security groups "
                                                    "(default: the project's default group)"),
    ) -> None:
        """Follow the API's change feed; apply this host's compiled pipeline as diffs; report
        ports ACTIVE or DOWN.  Stops on SIGTERM/SIGINT; a restart reconciles, no flush."""
        import httpx
        from rich.console import Console
        from sbnet.agent.agent import ApiError, ApiSource, HostAgent
        console = Console(stderr=True, soft_wrap=True)   # one message, one line
        token = None
        if token_file:
            try:
                token = open(token_file).read().strip()
            except OSError as exc:
                raise typer.BadParameter(f"--token-file {token_file}: {exc.strerror}") from None
            if not token:
                raise typer.BadParameter(f"--token-file {token_file} is empty")
        if xdp and datapath != "ebpf":
            raise typer.BadParameter(f"--xdp is for --datapath ebpf, not {datapath}")
        if xdp and xdp not in ("native", "generic"):
            raise typer.BadParameter(f"--xdp must be native or generic, not {xdp!r}")
        ref: list = []
        arp = watcher = None
        say = lambda line: console.print(f"{host}: {line}", highlight=False)  # noqa: E731
        if datapath == "ovs":
            phy = None
            if underlay_bridge:
                if not (underlay_interface and underlay_prefix):
                    raise typer.BadParameter("--underlay-bridge needs --underlay-interface "
                                             "and --underlay-prefix")
                phy = (underlay_bridge, underlay_interface, underlay_prefix)
            try:
                dp, watcher, svc = _ovs(ovs_rundir, bridge, tunnel_ip, datapath_type, phy, say)
            except (BridgeRefused, HostRefused) as exc:
                say(str(exc))
                raise typer.Exit(1) from None
            vifs = watcher.iface_ids
            if vf:              # representors are plugged by the agent (they carry no iface-id)
                from sbnet.agent.vifs import tap_attacher
                reps = tap_attacher(dp, ref, svc.netns, representors_only=True)
                vifs = lambda: {**watcher.iface_ids(), **reps()}  # noqa: E731
        elif datapath == "reference":
            if not (underlay and underlay_prefix):
                raise typer.BadParameter("--datapath reference needs --underlay and "
                                         "--underlay-prefix")
            try:
                dp, vifs, svc, arp = _reference(underlay, underlay_mac, tunnel_ip,
                                                underlay_prefix, ref, netns or None, say,
                                                switch_socket or f"/run/sbnet/{host}.sock",
                                                switch_priority)
            except HostRefused as exc:
                say(str(exc))
                raise typer.Exit(1) from None
            for item in neighbour:
                ip, _, mac = item.partition("=")
                dp.underlay("add_neighbour", ip, mac)
        elif datapath == "ebpf":
            dp, vifs, svc = _ebpf(host, tunnel_ip, ref, netns or None, xdp or None)
        else:
            raise typer.BadParameter("--datapath must be ovs, reference or ebpf")
        source = ApiSource(httpx.Client(base_url=api, timeout=wait + 60), token=token)
        a = HostAgent(host, dp, source, tunnel_ip, _physnets(physnet), profile, vifs=vifs,
                      service_ofport=SERVICE_OFPORT, slow_path=svc.start())
        ref.append(a)
        proxy = None
        if metadata_url:
            from sbnet.agent.metadata import MetadataProxy
            proxy = MetadataProxy(metadata_url, metadata_secret, a.port_at, svc.netns).start()
        channel = None
        if nic_channel:
            try:
                channel = _nic_channel(nic_channel, vf, container_network, api, source.headers,
                                       host)
            except (ValueError, OSError) as exc:
                raise typer.BadParameter(f"--nic-channel: {exc}") from None
        import faulthandler
        faulthandler.register(signal.SIGUSR1)         # `kill -USR1`: where is it stuck?
        stop = lambda *_: a.stopping.set()  # noqa: E731
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        def report(exc: Exception) -> None:
            console.print(f"[red]{host}: {exc}")

        def shutdown() -> None:
            if channel is not None:
                channel.close()
            if proxy is not None:
                proxy.close()
            if arp is not None:
                arp.close()
            if watcher is not None:
                watcher.close()
            svc.close()
            if datapath == "reference":
                dp.close()
            elif datapath == "ebpf":
                dp.close(keep=True)     # the program forwards on; the next agent takes it up
        try:
            up = a.start_when_up(lambda line: console.print(line, highlight=False))
        except ApiError as exc:
            console.print(f"{host}: the API refused this agent ({exc.status}): "
                          + ("give --token-file with an admin token" if exc.status in (401, 403)
                             else str(exc)), highlight=False)
            shutdown()
            raise typer.Exit(1) from None
        if not up:
            shutdown()
            return
        console.print(f"{host}: following {api} on {datapath}")
        import time
        reported = time.monotonic()
        while not a.stopping.is_set():
            try:
                r = a.step(wait)
                if time.monotonic() - reported >= stats_every:
                    reported = time.monotonic()
                    a.report_counters()
            except Exception as exc:           # keep following; the next revision may be fine
                report(exc)
                a.stopping.wait(1.0)
                continue
            if r is not None and len(a.history) == 1:
                # The first sync made the long-lived objects (the pipeline, the mirror):
                # keep the collector's full passes off them (they would stall later syncs).
                import gc
                gc.collect()
                gc.freeze()
                if datapath == "ebpf" and dp.reopened:
                    n = dp.revalidate_kept()
                    console.print(f"{host}: took up {n} kernel megaflows and "
                                  f"{dp.connections_in_kernel()} connections", highlight=False)
            if r is not None:
                console.print(f"{host}: revision {r.revision}: +{r.added} ~{r.modified} "
                              f"-{r.deleted} flows, up {len(r.up)}, down {len(r.down)} "
                              f"({r.seconds * 1000:.0f} ms)")
        shutdown()
