"""`sbnet neutron-sync`: compare a neutron-server's resources with sbnet's copy, and repair the copy."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import typer


def register(app: typer.Typer) -> None:
    app.command("neutron-sync")(neutron_sync)


def neutron_get(url: str, token: str | None):
    """GET a Neutron collection as an admin; None where Neutron does not serve it (404)."""
    def get(path: str):
        headers = {"X-Auth-Token": token} if token else {}
        req = urllib.request.Request(f"{url.rstrip('/')}/v2.0/{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
    return get


def neutron_sync(
    neutron: str = typer.Option(..., "--neutron", help="neutron-server's API, e.g. http://controller:9696."),
    sbnet: str = typer.Option("http://127.0.0.1:9696", "--sbnet", help="sbnet's API (the copy)."),
    repair: bool = typer.Option(False, "--repair", help="Write what differs into sbnet's copy."),
    neutron_token: str = typer.Option(None, "--neutron-token", envvar="OS_TOKEN",
                                      help="An admin token for neutron-server (none with noauth)."),
    sbnet_token: str = typer.Option(None, "--sbnet-token", help="A token for sbnet's API."),
) -> None:
    """Neutron's database is the truth: list what sbnet's copy lacks, holds at another
    revision, or holds that Neutron does not; with --repair, fix the copy (the host agents
    follow it).  Exit status 0 when nothing differs (after a repair: when it converged),
    1 otherwise, 2 when an API cannot be reached."""
    from sbnet.southbound.client import Southbound, SouthboundError
    from sbnet.southbound.sync import compare, read_neutron_rest, repair as do_repair

    sb = Southbound(sbnet, sbnet_token)
    try:
        copy = sb.inventory()              # the copy first: see sbnet.neutron.maintenance
        truth = read_neutron_rest(neutron_get(neutron, neutron_token))
    except (SouthboundError, urllib.error.URLError, OSError, ValueError) as exc:
        print(f"neutron-sync: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    drift = compare(truth, copy)
    for line in drift.lines():
        print(line)
    print(f"{drift.count} difference(s) between Neutron and sbnet's copy")
    if not repair or not drift.count:
        raise typer.Exit(1 if drift.count else 0)
    try:
        writes = do_repair(drift, truth, sb)
        left = compare(read_neutron_rest(neutron_get(neutron, neutron_token)), sb.inventory())
    except (SouthboundError, urllib.error.URLError, OSError) as exc:
        print(f"neutron-sync: repair stopped: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"repaired with {writes} write(s); {left.count} difference(s) left")
    raise typer.Exit(1 if left.count else 0)
