"""`sbnet run`: the API on SQLite and embedded hosts following its store, in one process."""

from __future__ import annotations

import json
import signal
import socket
import shutil
import tempfile
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

DEMO_TOPOLOGY = Path(__file__).resolve().parents[3] / "examples" / "demo-topology.yaml"


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    db: str = typer.Option(None, help="SQLite file or SQLAlchemy URL; default a fresh "
                           "sbnet.db in a temporary directory."),
    host: str = typer.Option("127.0.0.1", help="Address the API listens on."),
    port: int = typer.Option(9696, help="API port (0: any free port)."),
    hosts: int = typer.Option(3, help="Embedded hosts (host1..hostN), reference switches."),
    topology: Path = typer.Option(None, help="YAML topology file to load at start."),
    demo: bool = typer.Option(False, help="Load the demo topology, drive generated traffic "
                              "through it, print what was forwarded and dropped, then exit."),
    serve: bool = typer.Option(False, help="With --demo: keep serving afterwards."),
    scale: int = typer.Option(1, help="With --demo: multiply the generated flows."),
    report: Path = typer.Option(None, help="With --demo: also write the results as JSON here."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
    real: bool = typer.Option(False, help="With --demo: build the demo on Linux network "
                              "stacks in namespaces (root) instead of embedded hosts."),
    backend: str = typer.Option("ovs", help="With --real: ovs, reference or ebpf (the kernel tier)."),
    host_profile: list[str] = typer.Option(None, help="HOST=PROFILE: the host's NIC profile "
                                           "(sriov, software, smartnic; repeat)."),
) -> None:
    """Serve the Neutron API with embedded hosts that follow it (each change is compiled
    and applied to every host's switch); --demo shows a whole cloud at work."""
    from sbnet.datapath.jit import compile_ahead
    if not real:
        # A fresh machine compiles the fast path first: on two cores at once.
        compile_ahead("sbnet.agent.embedded")
    from sbnet.agent.embedded import Cluster
    from sbnet.agent.follow import Follower
    from sbnet.api.local import LocalApi
    from sbnet.api.topology import TopologyError, load_file
    from sbnet.store.db import Store

    plain = Console()
    # Piped output (logs, CI) gets room for the tables; a terminal keeps its own width.
    console = plain if plain.is_terminal else Console(width=160)
    if real:
        from sbnet.cli.realdemo import run_real
        results = run_real(console, topology or DEMO_TOPOLOGY, backend, hosts)
        if report:
            report.write_text(json.dumps(results, indent=1))
        return
    started = time.monotonic()
    url = _db_url(db)
    # The default database lives in a temporary directory this run owns and removes.
    scratch = Path(url.removeprefix("sqlite:///")).parent if db is None else None
    store = Store(url)
    names = [f"host{i + 1}" for i in range(hosts)]
    from sbnet.offload.binding import parse_host_profiles, resolve_profiles
    from sbnet.offload.report import cluster_provider
    try:
        profiles = parse_host_profiles(host_profile)
        resolve_profiles(profiles)
    except (ValueError, KeyError) as exc:
        raise typer.BadParameter(str(exc.args[0])) from None
    # A NIC tier inserts flows at its profile's rate: its hosts need time that passes.
    clock = {"clock": time.monotonic} if profiles else {}
    cluster = Cluster(names, physnets=("physnet1",), offload=profiles or None, **clock)
    quiet = threading.Event()         # the demo prints its own summary of the first syncs

    def on_sync(r) -> None:
        if not quiet.is_set():
            console.print(f"[dim]hosts at {r.summary()}[/dim]")

    def on_error(revision: int, exc: Exception) -> None:
        console.print(f"[red]hosts could not apply revision {revision}[/red]: {exc!r}")

    follower = Follower(store, cluster, on_sync, on_error)
    sock = _listen(console, host, port, fallback=demo and not serve)
    server, api_thread = _start_api(store, sock, log_level, host_profiles=profiles,
                                    offload_report=cluster_provider(cluster))
    if not server.started:
        console.print("[red]the API did not start[/red]")
        raise typer.Exit(1)
    bound = sock.getsockname()[1]
    console.print(f"[bold]sbnet[/bold]: Neutron API on http://{host}:{bound}/v2.0 ({url}); "
                  f"{hosts} embedded hosts ({', '.join(names)}) following the store")
    quiet.set()
    follower.catch_up()
    follower.start()
    try:
        files = [DEMO_TOPOLOGY] if demo else []
        files += [topology] if topology else []
        demo_model = None
        for path in files:
            seen = len(follower.history)
            try:
                loaded = load_file(LocalApi(store), path)
            except (TopologyError, OSError) as exc:
                console.print(f"[red]topology refused[/red]: {exc}")
                raise typer.Exit(2) from None
            if not follower.wait_for(store.current_revision()):
                console.print("[red]the hosts did not catch up with the store[/red]"
                              + (f": {follower.error[1]!r}" if follower.error else ""))
                raise typer.Exit(1)
            _print_loaded(console, path, loaded, follower.history[seen:])
            demo_model = demo_model or loaded
        if demo:
            results = _run_demo(console, cluster, follower, store, demo_model, scale)
            if report:
                report.write_text(json.dumps(results, indent=1))
        quiet.clear()
        if serve or not demo:
            console.print(f"serving; Ctrl-C to stop (took {time.monotonic() - started:.1f}s "
                          "to start)")
            _wait_for_signal()
        else:
            console.print(f"done in {time.monotonic() - started:.1f}s")
    finally:
        follower.stop()
        server.should_exit = True
        api_thread.join(timeout=10)
        sock.close()
        store.dispose()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _db_url(db: str | None) -> str:
    if db is None:
        return f"sqlite:///{Path(tempfile.mkdtemp(prefix='sbnet-')) / 'sbnet.db'}"
    return db if "://" in db else f"sqlite:///{Path(db).resolve()}"


def _listen(console: Console, host: str, port: int, fallback: bool) -> socket.socket:
    """Bind before starting uvicorn: a busy port is said plainly, and a demo that does not
    keep serving can take any free port instead."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        if not fallback:
            console.print(f"[red]cannot listen on {host}:{port}[/red]: {exc.strerror}")
            raise typer.Exit(1) from None
        sock.bind((host, 0))
        console.print(f"[yellow]port {port} is busy; the demo's API uses "
                      f"{sock.getsockname()[1]}[/yellow]")
    sock.listen(128)
    return sock


def _start_api(store, sock: socket.socket, log_level: str, **app_options):
    import uvicorn

    from sbnet.api import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(store=store, **app_options),
                                           log_level=log_level,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="sbnet-api",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, thread


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def _print_loaded(console: Console, path: Path, loaded, syncs: list) -> None:
    counts = {k.replace("_", " "): len(v) for k, v in vars(loaded).items()
              if isinstance(v, dict) and v}
    console.print(f"loaded {path}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    if syncs:
        changes: dict[str, int] = {}
        for r in syncs:
            for h, n in r.diffs.items():
                changes[h] = changes.get(h, 0) + n
        active = sum(len(r.activated) for r in syncs)
        console.print(f"hosts at revision {syncs[-1].revision} after {len(syncs)} sync(s): flows "
                      "added/changed/removed " + ", ".join(f"{h} {n}" for h, n in changes.items())
                      + f"; {active} port(s) went ACTIVE")


def _run_demo(console: Console, cluster, follower, store, loaded, scale: int) -> dict:
    from sbnet.agent.report import DROP, FORWARD, drive
    from sbnet.agent.traffic import (
        OUTSIDE_IP,
        OUTSIDE_MAC,
        arp_reply_mac,
        arp_request,
        demo_traffic,
    )

    snapshot = store.snapshot()
    ports = {n: p["id"] for n, p in loaded.ports.items()}
    with follower.lock:
        def resolve(ip: str) -> str | None:
            d = cluster.send_external("physnet1", [arp_request(OUTSIDE_MAC, OUTSIDE_IP, ip)])
            return arp_reply_mac(d.external.get("physnet1", []), ip)

        probes = demo_traffic(loaded.ports, snapshot, resolve, scale=scale)
        t0 = time.monotonic()
        rep = drive(cluster, probes, ports, snapshot)
        took = time.monotonic() - t0
    flows = sum(p.first for p in probes)
    console.print(f"drove {len(probes)} frames ({flows} flows) through {len(cluster.hosts)} "
                  f"hosts in {took:.1f}s")

    t = Table(title="Traffic by kind: did each frame reach its receiver, and if not, where "
              "it was dropped", show_lines=False)
    for col in ("traffic", "sent", "should arrive", "arrived", "dropped", "as expected",
                "dropped by rule (host packets)"):
        t.add_column(col, justify="right" if col in ("sent", "should arrive", "arrived",
                                                     "dropped", "as expected") else "left")
    for c in rep.categories.values():
        ok = "[green]" if c.as_expected == c.sent else "[red]"
        by_rule: dict[str, list[str]] = {}
        for (h, rule), n in sorted(c.drops.items()):
            by_rule.setdefault(rule, []).append(f"{h} {n}")
        where = "; ".join(f"{rule} ({', '.join(hs)})" for rule, hs in by_rule.items())
        leak = f" [red]{c.leaked} copies leaked to other ports[/red]" if c.leaked else ""
        t.add_row(c.name, str(c.sent), str(c.expected_forward), str(c.forwarded),
                  str(c.dropped), f"{ok}{c.as_expected}/{c.sent}", where + leak)
    console.print(t)

    r = Table(title="Per host: packets each rule forwarded (output) or dropped, from the "
              "switches' rule counters")
    for col in ("host", "verdict", "rule (table: what made it)", "packets"):
        r.add_column(col, justify="right" if col == "packets" else "left")
    totals = rep.host_totals()
    for host in cluster.hosts:
        for v in (FORWARD, DROP):
            rows = sorted(((rule, n) for (h, vv, rule), n in rep.rules.items()
                           if h == host and vv == v), key=lambda x: -x[1])
            for rule, n in rows:
                colour = "green" if v == FORWARD else "red"
                r.add_row(host, f"[{colour}]{v}[/{colour}]", rule, str(n))
        tot = totals.get(host, {FORWARD: 0, DROP: 0})
        r.add_row(f"[bold]{host}[/bold]", "[bold]total[/bold]",
                  f"forwarded {tot[FORWARD]}, dropped {tot[DROP]}", "", end_section=True)
    console.print(r)
    if rep.copies_dropped:
        console.print("copies dropped by hosts with no use for them (the physical network "
                      "reaches every host), not lost traffic: " + ", ".join(
                          f"{h} {n}" for h, n in sorted(rep.copies_dropped.items())))
    wrong = [c.name for c in rep.categories.values() if c.as_expected != c.sent]
    if wrong:
        console.print("[yellow]not as a correct cloud would do:[/yellow] " + ", ".join(wrong)
                      + _why_wrong(cluster, wrong))
    return {"categories": {c.name: {"sent": c.sent, "should_arrive": c.expected_forward,
                                    "arrived": c.forwarded, "dropped": c.dropped,
                                    "as_expected": c.as_expected, "leaked": c.leaked,
                                    "dropped_by": [{"host": h, "rule": rule, "packets": n}
                                                   for (h, rule), n in c.drops.items()]}
                           for c in rep.categories.values()},
            "rules": [{"host": h, "verdict": v, "rule": rule, "packets": n}
                      for (h, v, rule), n in sorted(rep.rules.items())],
            "copies_dropped": dict(rep.copies_dropped)}


def _why_wrong(cluster, names: list[str]) -> str:
    from sbnet.compiler.tables import PIPELINE

    l3_flows = sum(1 for h in cluster.hosts.values() for f in h.installed.flows.values()
                   if f.priority and PIPELINE.spec(f.table).name.startswith("l3_"))
    if any(n.startswith(("routed", "floating")) for n in names) and not l3_flows:
        return " (no host has an L3 flow: the routing and NAT stage is not built yet)"
    return ""
