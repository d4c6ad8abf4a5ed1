"""`sbnet compare`: the same workload and feature tests under the sriov, software and smartnic profiles (modelled), and the kernel eBPF tier (measured on real namespaces)."""

from __future__ import annotations

import shlex
import sys

import typer
from rich.console import Console
from rich.table import Table as RichTable


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def compare(
    connections: int = typer.Option(10_000, "--connections", help="TCP connections in the workload."),
    seed: int = typer.Option(1, "--seed", help="Seed of the Pareto segment counts and ISNs."),
    cap: int = typer.Option(1000, "--cap", help="Most data segments of one connection."),
    profiles: str = typer.Option("sriov,software,smartnic", "--profiles",
                                 help="Comma-separated NIC profiles; ebpf adds the kernel tier "
                                      "measured on real namespaces (root, BPF)."),
    real_connections: int = typer.Option(1000, "--real-connections",
                                         help="Connections of the ebpf column's real run."),
    features: bool = typer.Option(True, "--features/--no-features",
                                  help="Also run each feature's packet test per profile."),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown instead of tables."),
) -> None:
    """Throughput per host CPU, host cores per Mpps, NIC share in steady state and latency per
    tier for one workload under each profile, and the mission's feature table, every cell
    from a run."""
    from sbnet.offload import compare as C
    from sbnet.offload.profile import builtin_profiles

    names = [p.strip() for p in profiles.split(",") if p.strip()]
    unknown = [p for p in names if p not in builtin_profiles() and p not in C.REAL]
    if unknown:
        Console(stderr=True).print(f"[red]unknown profile(s): {', '.join(unknown)}[/red]")
        raise typer.Exit(2)
    result = C.compare(connections, seed, cap, tuple(names), features, real_connections)
    command = "sbnet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if markdown:
        typer.echo(C.markdown(result, command), nl=False)
        return
    console = Console()
    head, body = C.rows(result)
    t = RichTable(title=f"{connections:,} TCP connections, two hosts, VXLAN, stateful groups")
    for col in head:
        t.add_column(col, justify="left" if col == "" else "right")
    for r in body:
        t.add_row(*r)
    console.print(t)
    for p, m in result.measured.items():
        if m.refused:
            console.print(f"{p}: binding refused: {m.refused}")
    for text, ok in result.acceptance():
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/]: {text}")
    if result.features:
        f = RichTable(title="Features (each cell from a packet test)")
        f.add_column("feature")
        for p in names:
            f.add_column(p)
        for name, cells in result.features.items():
            f.add_row(name, *[cells[p].verdict for p in names])
        console.print(f)
