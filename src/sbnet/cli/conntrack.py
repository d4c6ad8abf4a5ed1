"""`sbnet conntrack`: replay traffic through a flow file, then list, filter or flush the connection table."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("conntrack")(conntrack)


def conntrack(
    flows: Path = typer.Argument(..., help="Flow file in ovs-ofctl syntax (with ct() actions)."),
    pcap: list[Path] = typer.Option(..., "--pcap", help="pcap to replay; repeat as PORT:FILE to "
                                    "replay a file on another port (default port 1)."),
    ports: int = typer.Option(4, "--ports"),
    zone: int = typer.Option(None, "--zone", help="Only connections in this zone."),
    grep: str = typer.Option(None, "--filter", help="Only lines containing this text "
                             "(e.g. 'dst=10.0.0.2' or 'state=ESTABLISHED')."),
    flush_zone: int = typer.Option(None, "--flush-zone", help="Flush this zone after the replay "
                                   "and before listing."),
    batch: int = typer.Option(256, "--batch"),
) -> None:
    """List the connection table after a replay, like `ovs-appctl dpctl/dump-conntrack`."""
    from sbnet.cli.replay import load_switch, replay_files

    sw = load_switch(flows, ports)
    replay_files(sw, pcap, batch)
    if flush_zone is not None:
        sw.conntrack.flush(zone=flush_zone)
    for line in sw.conntrack.dump(zone=zone):
        if grep is None or grep in line:
            typer.echo(line)
