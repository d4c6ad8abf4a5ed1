"""`sbnet agent`: one host's agent following a Neutron API, on Open vSwitch or the reference switch."""

from __future__ import annotations

import os
import signal

import typer

from sbnet.agent.slowpath import ServicePort
from sbnet.compiler.topology import SERVICE_OFPORT, TUNNEL_OFPORTS


def _physnets(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, ofport = item.partition("=")
        if not name or not ofport.isdigit():
            raise typer.BadParameter(f"--physnet {item!r}: expected NAME=OFPORT")
        out[name] = int(ofport)
    return out


def _ovs(rundir: str, bridge: str, tunnel_ip: str):
    from sbnet.ovs.backend import OvsDatapath
    from sbnet.ovs.system import RunningOVS
    ovs = RunningOVS(rundir)
    dp = OvsDatapath(ovs, bridge, "netdev")           # --may-exist: an existing bridge is kept
    have = dp.ports()
    for kind, ofport in TUNNEL_OFPORTS.items():
        if f"{kind}0" not in have:
            dp.add_tunnel_port(f"{kind}0", kind, ofport)
    svc = ServicePort(_daemon_netns(f"{rundir}/ovs-vswitchd.pid"))
    name = svc.create()
    if name not in have:
        dp.add_port(name, SERVICE_OFPORT)
    return dp, lambda: ovs.iface_ids(bridge), svc


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


def _tap_attacher(dp, agent_ref: list):
    """vifs() for the agent: tap interfaces named for its bound ports, attached to `dp` as
    they appear and detached when they go."""
    from sbnet.agent.agent import vif_name
    attached: dict[str, int] = {}

    def vifs() -> dict[str, int]:
        agent = agent_ref[0]
        present = set(os.listdir("/sys/class/net"))
        for pid in agent.mirror.by_type.get("port", {}):
            name = vif_name(pid)
            if name in present and pid not in attached:
                ofport = max([0, *attached.values()]) + 1
                dp.attach(ofport, name)
                attached[pid] = ofport
        for pid in [p for p, _ in attached.items() if vif_name(p) not in present]:
            dp.detach(attached.pop(pid))
        return dict(attached)
    return vifs


def _reference(underlay: str, underlay_mac: str, tunnel_ip: str, prefix: str, agent_ref: list):
    """The reference switch on AF_PACKET in this process: the underlay interface, tunnel
    ports, and VIFs found as tap interfaces named for bound ports (attached as they appear)."""
    from sbnet.datapath.afpacket import AfPacketDatapath
    from sbnet.datapath.switch import Switch
    from sbnet.datapath.tunnel import TunnelPort
    dp = AfPacketDatapath(Switch("br-sbnet")).start()
    underlay_ofport = 65000
    dp.attach(underlay_ofport, underlay)
    dp.underlay("add_port", underlay_ofport, underlay_mac)
    dp.underlay("add_local", tunnel_ip)
    dp.underlay("add_route", prefix, underlay_ofport, None, tunnel_ip)
    for kind, ofport in TUNNEL_OFPORTS.items():
        dp.add_tunnel_port(TunnelPort(ofport, kind, key="flow"), f"{kind}0")
    svc = ServicePort()
    dp.attach(SERVICE_OFPORT, svc.create())
    return dp, _tap_attacher(dp, agent_ref), svc


def _ebpf(tunnel_ip: str, agent_ref: list):
    """The kernel eBPF tier with the reference switch as its slow path, in this process.
    The underlay is the host's own: VXLAN through a kernel collect_md device, and the slow
    path's tunnel packets sent as UDP through the host's routes and neighbours."""
    from sbnet.datapath.ebpf.datapath import EbpfDatapath
    from sbnet.datapath.ebpf.tier import available
    from sbnet.datapath.switch import Switch
    from sbnet.datapath.tunnel import TunnelPort
    why = available()
    if why is not None:
        raise typer.BadParameter(f"--datapath ebpf: {why} (--datapath reference runs anywhere)")
    dp = EbpfDatapath(Switch("br-sbnet")).start()
    underlay_ofport, gateway = 65000, "169.254.0.1"
    dp.underlay("add_port", underlay_ofport, "02:00:00:00:00:01")
    dp.underlay("add_local", tunnel_ip)
    # Every tunnel packet of the slow path goes to one pseudo next hop; the kernel routes it.
    dp.underlay("add_route", "0.0.0.0/0", underlay_ofport, gateway, tunnel_ip)
    dp.underlay("add_neighbour", gateway, "02:00:00:00:00:02")
    for kind, ofport in TUNNEL_OFPORTS.items():
        dp.add_tunnel_port(TunnelPort(ofport, kind, key="flow"), f"sb{kind}0")
    svc = ServicePort()
    dp.attach(SERVICE_OFPORT, svc.create())
    return dp, _tap_attacher(dp, agent_ref), svc


def register(app: typer.Typer) -> None:
    @app.command()
    def agent(
        host: str = typer.Option(..., help="this host's name (ports bind to it by binding:host_id)"),
        api: str = typer.Option("http://127.0.0.1:9696", help="the Neutron API's URL"),
        tunnel_ip: str = typer.Option(..., help="this host's tunnel endpoint address"),
        datapath: str = typer.Option("ovs", help="ovs | reference | ebpf"),
        bridge: str = typer.Option("br-int", help="OVS: the integration bridge"),
        ovs_rundir: str = typer.Option("/var/run/openvswitch", help="OVS: its run directory"),
        underlay: str = typer.Option("", help="reference: the underlay interface"),
        underlay_mac: str = typer.Option("", help="reference: the MAC tunnels are sent from"),
        underlay_prefix: str = typer.Option("", help="reference: the underlay subnet (on-link)"),
        neighbour: list[str] = typer.Option([], help="reference: IP=MAC of a peer's tunnel "
                                            "endpoint (repeatable)"),
        physnet: list[str] = typer.Option([], help="NAME=OFPORT of a physical network's port"),
        profile: str = typer.Option("software", help="the host's NIC profile"),
        wait: float = typer.Option(1.0, help="long-poll seconds on the change feed"),
        stats_every: float = typer.Option(10.0, help="seconds between port counter reports"),
        token_file: str = typer.Option("", help="a file holding the token to send as "
                                       "X-Auth-Token (an API served with --require-token; "
                                       "the token must have the admin role)"),
    ) -> None:
        """Follow the API's change feed; apply this host's compiled pipeline as diffs; report
        ports ACTIVE or DOWN.  Stops on SIGTERM/SIGINT; a restart reconciles, no flush."""
        import httpx
        from rich.console import Console
        from sbnet.agent.agent import ApiError, ApiSource, HostAgent
        console = Console(stderr=True)
        token = None
        if token_file:
            try:
                token = open(token_file).read().strip()
            except OSError as exc:
                raise typer.BadParameter(f"--token-file {token_file}: {exc.strerror}") from None
            if not token:
                raise typer.BadParameter(f"--token-file {token_file} is empty")
        ref: list = []
        if datapath == "ovs":
            dp, vifs, svc = _ovs(ovs_rundir, bridge, tunnel_ip)
        elif datapath == "reference":
            if not (underlay and underlay_mac and underlay_prefix):
                raise typer.BadParameter("--datapath reference needs --underlay, "
                                         "--underlay-mac and --underlay-prefix")
            dp, vifs, svc = _reference(underlay, underlay_mac, tunnel_ip, underlay_prefix, ref)
            for item in neighbour:
                ip, _, mac = item.partition("=")
                dp.underlay("add_neighbour", ip, mac)
        elif datapath == "ebpf":
            dp, vifs, svc = _ebpf(tunnel_ip, ref)
        else:
            raise typer.BadParameter("--datapath must be ovs, reference or ebpf")
        source = ApiSource(httpx.Client(base_url=api, timeout=wait + 60), token=token)
        a = HostAgent(host, dp, source, tunnel_ip, _physnets(physnet), profile, vifs=vifs,
                      service_ofport=SERVICE_OFPORT, slow_path=svc.start())
        ref.append(a)
        import faulthandler
        faulthandler.register(signal.SIGUSR1)         # `kill -USR1`: where is it stuck?
        stop = lambda *_: a._stop.set()  # noqa: E731
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        def report(exc: Exception) -> None:
            console.print(f"[red]{host}: {exc}")
        try:
            up = a.start_when_up(lambda line: console.print(line, highlight=False))
        except ApiError as exc:
            console.print(f"{host}: the API refused this agent ({exc.status}): "
                          + ("give --token-file with an admin token" if exc.status in (401, 403)
                             else str(exc)), highlight=False)
            svc.close()
            if datapath in ("reference", "ebpf"):
                dp.close()
            raise typer.Exit(1) from None
        if not up:
            svc.close()
            return
        console.print(f"{host}: following {api} on {datapath}")
        import time
        reported = time.monotonic()
        while not a._stop.is_set():
            try:
                r = a.step(wait)
                if time.monotonic() - reported >= stats_every:
                    reported = time.monotonic()
                    a.report_counters()
            except Exception as exc:           # keep following; the next revision may be fine
                report(exc)
                a._stop.wait(1.0)
                continue
            if r is not None and len(a.history) == 1:
                # The first sync made the long-lived objects (the pipeline, the mirror):
                # keep the collector's full passes off them (they would stall later syncs).
                import gc
                gc.collect()
                gc.freeze()
            if r is not None:
                console.print(f"{host}: revision {r.revision}: +{r.added} ~{r.modified} "
                              f"-{r.deleted} flows, up {len(r.up)}, down {len(r.down)} "
                              f"({r.seconds * 1000:.0f} ms)")
        svc.close()
        if datapath in ("reference", "ebpf"):
            dp.close()
