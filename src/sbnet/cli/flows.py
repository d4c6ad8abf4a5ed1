"""`sbnet flows`: per-flow analytics on a replay: live top talkers, PNG time series, IPFIX and metrics."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table as RichTable

flows_app = typer.Typer(no_args_is_help=True, help="Per-flow analytics: top talkers, plots, IPFIX.")


def register(app: typer.Typer) -> None:
    app.add_typer(flows_app, name="flows")


def _setup(flows: Path, ports: int, exact: bool, active: float, idle: float, max_records: int):
    from sbnet.analytics.granularity import per_five_tuple
    from sbnet.analytics.records import FlowMeter
    from sbnet.datapath.switch import Switch

    sw = Switch()
    for p in range(1, ports + 1):
        sw.add_port(p)
    sw.load(flows.read_text())
    if exact:
        per_five_tuple(sw)
    return sw, FlowMeter(sw, host=sw.name, active_timeout=active, idle_timeout=idle,
                         max_records=max_records)


def _packets(pcap: Path | None, in_port: int, flows_count: int, ports: int):
    from sbnet.analytics.traffic import flow_traffic
    from sbnet.cli.replay import read_capture

    if pcap:
        return [(t, f, in_port) for t, f in read_capture(pcap)]
    return flow_traffic(flows_count, ports=tuple(range(1, min(ports, 2) + 1)))


def top_table(records, by: str, n: int, title: str) -> RichTable:
    t = RichTable(title=title)
    for col in ("in", "src", "dst", "proto", "sport", "dport", "packets", "bytes", "tier", "verdict"):
        t.add_column(col, no_wrap=True,
                     justify="right" if col in ("in", "sport", "dport", "packets", "bytes") else "left")
    agg: dict[tuple, list] = {}
    for r in records:
        k = (r.in_port, r.src or f"eth 0x{r.eth_type:04x}", r.dst, r.proto, r.sport, r.dport,
             r.tier, r.reason)
        acc = agg.setdefault(k, [0, 0])
        acc[0] += r.packets
        acc[1] += r.bytes
    rows = sorted(agg.items(), key=lambda kv: -kv[1][0 if by == "packets" else 1])[:n]
    for (port, src, dst, proto, sp, dp, tier, reason), (pk, by_) in rows:
        t.add_row(str(port), src, dst, str(proto), str(sp), str(dp), f"{pk:,}", f"{by_:,}", tier,
                  "forwarded" if reason == "forwarded" else
                  "drop: " + (reason if len(reason) < 34 else reason[:31] + "..."))
    return t


@flows_app.command("top")
def top(
    flows: Path = typer.Argument(..., help="Flow file in ovs-ofctl syntax."),
    pcap: Path = typer.Option(None, "--pcap", help="pcap/pcapng to replay; generated flows if absent."),
    in_port: int = typer.Option(1, "--in-port", help="Port the pcap's packets arrive on."),
    ports: int = typer.Option(4, "--ports", help="Number of switch ports (1..N)."),
    by: str = typer.Option("bytes", "--by", help="Rank by bytes or packets."),
    n: int = typer.Option(15, "--n", help="Rows shown."),
    speed: float = typer.Option(0.0, "--speed", help="Replay speed (1 = real time; 0 = as fast as possible)."),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between refreshes (pcap time)."),
    exact: bool = typer.Option(True, "--exact/--megaflow", help="One record per 5-tuple, or per megaflow."),
    ipfix: str = typer.Option(None, "--ipfix", help="Also export IPFIX to HOST:PORT."),
    metrics_port: int = typer.Option(None, "--metrics-port", help="Serve Prometheus /metrics here."),
    count: int = typer.Option(2000, "--flows", help="Generated flows when no pcap is given."),
    once: bool = typer.Option(False, "--once", help="Print only the final table (no live view)."),
) -> None:
    """A live table of top talkers while packets are replayed through the reference switch."""
    from rich.live import Live

    from sbnet.analytics.replay import replay

    if by not in ("bytes", "packets"):
        raise typer.BadParameter("--by must be bytes or packets")
    console = Console() if Console().is_terminal else Console(width=160)
    sw, meter = _setup(flows, ports, exact, 60.0, 15.0, 100_000)
    packets = _packets(pcap, in_port, count, ports)
    exporter = server = None
    if ipfix:
        from sbnet.analytics.ipfix import IpfixExporter
        host, _, port = ipfix.rpartition(":")
        exporter = IpfixExporter(host or "127.0.0.1", int(port or 4739))
    if metrics_port is not None:
        from sbnet.analytics.metrics import MetricsServer, render
        server = MetricsServer(port=metrics_port)
        console.print(f"metrics on http://127.0.0.1:{server.port}/metrics")
    exported: list = []
    live = None if once else Live(console=console, refresh_per_second=4, transient=False)
    wall0 = time.monotonic()
    t0 = packets[0][0] if packets else 0.0

    def sink(records, now):
        exported.extend(records)
        if exporter is not None:
            exporter.export(records, now)

    def view(now):
        if speed > 0:
            time.sleep(max(0.0, (now - t0) / speed - (time.monotonic() - wall0)))
        if server is not None:
            server.update(render(meter, exporter))
        if live is not None:
            live.update(top_table(exported + meter.live(now), by, n,
                                  f"top talkers by {by} at t={now - t0:.1f}s"))

    if live is not None:
        live.start()
    try:
        res = replay(sw, meter, packets, poll_every=interval, sink=sink, sample_every=interval,
                     on_sample=lambda s: view(s.t))
    finally:
        if live is not None:
            live.stop()
    if once or live is None:
        console.print(top_table(res.records, by, n, f"top talkers by {by}"))
    fwd = sum(r.packets for r in res.records if not r.dropped)
    console.print(f"{res.processed} packets in {len(res.records)} flow records: {fwd} forwarded, "
                  f"{res.processed - fwd} dropped; {sw.upcalls} flow setups")
    if exporter is not None:
        console.print(f"IPFIX: {exporter.encoder.messages} messages, "
                      f"{exporter.encoder.records} records to {ipfix}")
        exporter.close()
    if server is not None:
        server.close()


@flows_app.command("plot")
def plot_cmd(
    flows: Path = typer.Argument(..., help="Flow file in ovs-ofctl syntax."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    pcap: Path = typer.Option(None, "--pcap", help="pcap/pcapng to replay; generated flows if absent."),
    in_port: int = typer.Option(1, "--in-port", help="Port the pcap's packets arrive on."),
    ports: int = typer.Option(4, "--ports", help="Number of switch ports (1..N)."),
    step: float = typer.Option(2.0, "--step", help="Seconds per point (pcap time)."),
    count: int = typer.Option(2000, "--flows", help="Generated flows when no pcap is given."),
    exact: bool = typer.Option(True, "--exact/--megaflow", help="One record per 5-tuple, or per megaflow."),
) -> None:
    """PNG time series of a replay: throughput per port, NIC vs software share of packets."""
    from sbnet.analytics.plot import plot
    from sbnet.analytics.replay import replay

    sw, meter = _setup(flows, ports, exact, 60.0, 15.0, 100_000)
    packets = _packets(pcap, in_port, count, ports)
    res = replay(sw, meter, packets, poll_every=step, sample_every=step)
    plot(res.samples, out, title=f"sbnet flows plot: {pcap.name if pcap else 'generated flows'} "
                                  f"through {flows.name}")
    Console().print(f"{out}: {len(res.samples)} samples, {res.processed} packets, "
                    f"{len(res.records)} flow records")
