"""`sbnet offload show`: where packets ran (NIC or software) per port, security-group rule and network, and why."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table as RichTable

offload_app = typer.Typer(no_args_is_help=True, help="The NIC offload tier: placement and counts.")


def register(app: typer.Typer) -> None:
    app.add_typer(offload_app, name="offload")


@offload_app.command("show")
def show(
    url: str = typer.Option(None, "--url", help="A running `sbnet run --serve` API "
                            "(GET /v2.0/sbnet/offload), e.g. http://127.0.0.1:9696."),
    scenario: str = typer.Option(None, "--scenario", help="Run a named scenario here instead "
                                 "(web)."),
    profile: str = typer.Option("smartnic", "--profile", help="NIC profile of the scenario's "
                                "hosts (sriov, software, smartnic)."),
    connections: int = typer.Option(200, "--connections", help="Scenario connections."),
    token: str = typer.Option(None, "--token", help="X-Auth-Token for --url."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Per port, security-group rule and network: megaflows and packets on the NIC and in
    software, with the reasons the software ones stayed there."""
    console = Console()
    if (url is None) == (scenario is None):
        console.print("[red]give one of --url (a running sbnet) or --scenario NAME[/red]")
        raise typer.Exit(2)
    if url:
        data = _fetch(console, url, token)
    else:
        from sbnet.offload.compare import run_scenario
        from sbnet.offload.report import cluster_report
        try:
            m = run_scenario(scenario, profile, connections)
        except KeyError as exc:
            console.print(f"[red]{exc.args[0]}[/red]")
            raise typer.Exit(2)
        if m.refused:
            console.print(f"[yellow]{profile}: binding refused: {m.refused}[/yellow]")
            raise typer.Exit(1)
        data = cluster_report(m.cloud.cluster)
    if as_json:
        import json
        typer.echo(json.dumps(data, indent=1, default=list))
        return
    render(console, data)


def _fetch(console: Console, url: str, token: str | None) -> dict:
    import httpx
    headers = {"X-Auth-Token": token} if token else {}
    try:
        r = httpx.get(url.rstrip("/") + "/v2.0/sbnet/offload", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        console.print(f"[red]{url}: {exc}[/red]")
        raise typer.Exit(1)
    if r.status_code != 200:
        console.print(f"[red]{url}: {r.status_code} {r.text[:300]}[/red]")
        raise typer.Exit(1)
    return r.json()["offload"]


def render(console: Console, data: dict) -> None:
    h = RichTable(title="Hosts")
    for col in ("host", "profile", "NIC packets", "software packets", "NIC share",
                "NIC connections", "conntrack refused"):
        h.add_column(col, justify="left" if col in ("host", "profile") else "right")
    for r in data["hosts"]:
        tot = r["nic_packets"] + r["software_packets"]
        h.add_row(r["host"], r["profile"], f"{r['nic_packets']:,}", f"{r['software_packets']:,}",
                  f"{r['nic_packets'] / tot:.1%}" if tot else "-", f"{r['nic_connections']:,}",
                  f"{r['conntrack_refused']:,}")
    console.print(h)
    t = RichTable(title="Per resource (megaflows that ran its flows)")
    for col in ("kind", "id", "hosts", "megaflows NIC/sw", "packets NIC", "packets sw",
                "why in software"):
        t.add_column(col, overflow="fold")
    for r in data["resources"]:
        why = "; ".join(f"{reason} [{n:,} pkts]" for reason, n in r["reasons"].items())
        t.add_row(r["kind"], r["id"][:13], ",".join(r["hosts"]),
                  f"{r['megaflows_nic']}/{r['megaflows_software']}", f"{r['packets_nic']:,}",
                  f"{r['packets_software']:,}", why)
    console.print(t)
