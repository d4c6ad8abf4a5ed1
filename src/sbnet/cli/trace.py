"""`sbnet trace`: follow one packet through a flow file's tables, like ofproto/trace."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)


def trace(
    flows: Path = typer.Argument(..., help="Flow file in ovs-ofctl syntax."),
    packet: str = typer.Argument(..., help="The packet as hex bytes, or a flow "
                                 "(\"in_port=1,tcp,nw_dst=10.0.0.2,tp_dst=80\")."),
    in_port: int = typer.Option(1, "--in-port"),
    ports: int = typer.Option(4, "--ports"),
) -> None:
    """Print the tables visited, rules hit, actions, the megaflow and the datapath actions."""
    from sbnet.datapath.switch import Switch
    from sbnet.flows.ofctl import FlowSyntaxError

    console = Console()
    from sbnet.datapath.packets import packet_from_flow

    try:
        raw = bytes.fromhex(packet.replace(":", "").replace(" ", ""))
    except ValueError:
        try:
            in_port, raw = packet_from_flow(packet)
        except (FlowSyntaxError, ValueError) as exc:
            console.print(f"[red]packet is neither hex nor a flow: {exc}[/red]")
            raise typer.Exit(2)
    sw = Switch()
    for p in range(1, ports + 1):
        sw.add_port(p)
    try:
        sw.load(flows.read_text())
    except (FlowSyntaxError, ValueError) as exc:
        console.print(f"[red]{flows}: {exc}[/red]")
        raise typer.Exit(2)
    t = sw.trace(in_port, raw)
    # Plain output: trace lines must not be wrapped or styled (people grep and diff them).
    typer.echo(t.text)
    typer.echo(f"\nMegaflow: {t.megaflow}")
    typer.echo(f"Datapath actions: {t.datapath_actions()}")
