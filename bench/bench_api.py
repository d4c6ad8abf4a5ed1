"""Port-create throughput and latency of the Neutron API on SQLite and on PostgreSQL.

Run: python bench/bench_api.py [--repeat 5] [--backend sqlite|postgres|both]
     (300 concurrent clients in 30 projects, 2 port creates each; --clients, --per-client,
     --projects to change that; the tail's spread over several runs with --repeat)
     python bench/bench_api.py --clients 0 [--ports 2000] [--concurrency 16]   (16 threads)
     python bench/bench_api.py --cpu 400 --workers 1   (CPU per create: server, database, client)
Each backend gets a fresh server process (`sbnet serve`'s app under uvicorn) and database; the
PostgreSQL one is a private throwaway server (Debian postgresql, started as user postgres).
Each is measured twice in the same run: "before" runs the sources of an older commit
(--before, from this git checkout) in its one server process, and "after" the current ones
as `sbnet serve` runs them (its default --workers: one process per two CPUs on PostgreSQL,
one on SQLite; --workers N to choose); the load average is printed with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Callable
from pathlib import Path

import httpx

from sbnet.api.process import spawn, stop
from sbnet.cli.serve import default_workers
from sbnet.store.pgtemp import create_database, temp_postgres

ADMIN = {"X-Project-Id": "bench", "X-Roles": "admin"}


def run(url: str, ports: int, concurrency: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, headers=ADMIN, timeout=120, limits=limits) as c:
        net = c.post("/v2.0/networks", json={"network": {"name": "bench"}}).json()["network"]
        c.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.64.0.0/16"}})
        # Every port goes in one project: lift its port quota (Neutron's default, 500, is
        # below --ports) as an operator would; an older tree without quotas has no such route.
        r = c.put("/v2.0/quotas/bench", json={"quota": {"port": -1}})
        assert r.status_code in (200, 404), r.text

        def create(i: int) -> float:
            t0 = time.perf_counter()
            r = c.post("/v2.0/ports", json={"port": {"network_id": net["id"], "name": f"b{i}"}})
            assert r.status_code == 201, r.text
            return time.perf_counter() - t0

        for i in range(20):  # warm-up: connections, default security group, caches
            create(-i)
        with ThreadPoolExecutor(concurrency) as pool:
            t0 = time.perf_counter()
            lat = sorted(pool.map(create, range(ports)))
            wall = time.perf_counter() - t0
    return {"ports": ports, "concurrency": concurrency, "creates_per_s": round(ports / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 1),
            "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1)}


def run_clients(url: str, clients: int, per_client: int, projects: int = 30,
                client: str = "asyncio", meter: Callable[[], list[dict]] | None = None) -> dict:
    """`clients` concurrent clients (each its own connection, in one of `projects` projects),
    each creating `per_client` ports on its project's network one after another; then
    checks IPAM is exact: every port has one address, no address is given twice.

    client "asyncio": each client a coroutine on one keep-alive HTTP/1.1 connection of its
    own (the bench's CPU is taken from the cores the server runs on: 300 httpx clients in
    threads cost 2 to 4 ms of CPU a request under this load); "httpx": each a thread with an
    httpx.Client, as the figures before 2026-12-06 were measured.

    meter: CPU seconds by process of the server and of the database server (_cpu_seconds),
    read before and after the clients run: their CPU per create is reported."""
    nets = {}
    with httpx.Client(base_url=url, headers=ADMIN, timeout=300) as c:
        for p in range(projects):
            hdr = {"X-Project-Id": f"p{p}", "X-Roles": "member"}
            net = c.post("/v2.0/networks", json={"network": {"name": f"n{p}"}}, headers=hdr).json()
            c.post("/v2.0/subnets", headers=hdr, json={"subnet": {
                "network_id": net["network"]["id"], "cidr": f"10.{p}.0.0/16"}})
            nets[p] = net["network"]["id"]
    runner = _clients_asyncio if client == "asyncio" else _clients_httpx
    cpu0 = meter() if meter else []
    lat, wall = runner(url, clients, per_client, projects, nets)
    cpu = [_spent(a, b) for a, b in zip(cpu0, meter())] if meter else []
    with httpx.Client(base_url=url, headers=ADMIN, timeout=300) as c:
        ports = c.get("/v2.0/ports", params={"fields": ["id", "fixed_ips"]}).json()["ports"]
    ips = [(f["subnet_id"], f["ip_address"]) for p in ports for f in p["fixed_ips"]]
    exact = len(ports) == clients * per_client and len(ips) == len(set(ips)) == len(ports)
    lat.sort()
    return {"ports": len(lat), "concurrency": clients, "creates_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 1),
            "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1), "ipam_exact": exact,
            **{k: round(1000 * x / len(lat), 2) for k, x in zip(("server_cpu_ms", "db_cpu_ms"), cpu)}}


def _clients_httpx(url: str, clients: int, per_client: int, projects: int,
                   nets: dict) -> tuple[list[float], float]:
    # Every client's connection pool is built before the clock starts (an httpx.Client costs
    # tens of milliseconds of CPU to build, its TLS context; 300 of them built during the
    # run took that CPU from the server on the same cores), then all start at once.
    pools = [httpx.Client(base_url=url, timeout=300, verify=False,
                          headers={"X-Project-Id": f"p{i % projects}", "X-Roles": "member"})
             for i in range(clients)]
    start = threading.Barrier(clients)

    def client(i: int) -> list[float]:
        c, out = pools[i], []
        start.wait()
        for k in range(per_client):
            t0 = time.perf_counter()
            r = c.post("/v2.0/ports", json={"port": {"network_id": nets[i % projects],
                                                     "name": f"c{i}-{k}"}})
            assert r.status_code == 201, r.text
            out.append(time.perf_counter() - t0)
        return out

    try:
        with ThreadPoolExecutor(clients) as pool:
            t0 = time.perf_counter()
            lat = [x for xs in pool.map(client, range(clients)) for x in xs]
            wall = time.perf_counter() - t0
    finally:
        for c in pools:
            c.close()
    return lat, wall


def _clients_asyncio(url: str, clients: int, per_client: int, projects: int,
                     nets: dict) -> tuple[list[float], float]:
    import asyncio

    import uvloop

    host, port = url.split("//", 1)[1].split(":")

    def request(i: int, k: int) -> bytes:
        body = json.dumps({"port": {"network_id": nets[i % projects],
                                    "name": f"c{i}-{k}"}}).encode()
        return (f"POST /v2.0/ports HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"X-Project-Id: p{i % projects}\r\nX-Roles: member\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body

    async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = {k.strip().lower(): v.strip() for k, v in fields.items()}["content-length"]
        return status, await reader.readexactly(int(length))

    async def main() -> tuple[list[float], float]:
        # Every connection is open before the clock starts; then all clients start at once.
        conns = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]
        go = asyncio.Event()

        async def client(i: int) -> list[float]:
            reader, writer = conns[i]
            out = []
            await go.wait()
            for k in range(per_client):
                t0 = time.perf_counter()
                writer.write(request(i, k))
                status, body = await response(reader)
                assert status == 201, body
                assert json.loads(body)["port"]["fixed_ips"], body
                out.append(time.perf_counter() - t0)
            return out

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        go.set()
        lat = [x for xs in await asyncio.gather(*tasks) for x in xs]
        wall = time.perf_counter() - t0
        for _, writer in conns:
            writer.close()
        return lat, wall

    return uvloop.run(main())


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU of each of these processes so far (those still there)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between the two readings (by processes that started meanwhile too)."""
    return sum(after[p] - before.get(p, 0.0) for p in after)


def _family(pid: int) -> list[int]:
    """A process and its children (a server's workers, a PostgreSQL server's backends)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [pid, *map(int, f.read().split())]


def _postmaster(db: str) -> int | None:
    if not db.startswith("postgresql"):
        return None
    import psycopg2

    conn = psycopg2.connect(db.replace("postgresql+psycopg2", "postgresql"))
    try:
        with open(f"/proc/{conn.get_backend_pid()}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    finally:
        conn.close()


def run_cpu(url: str, db: str, server_pid: int, creates: int) -> dict:
    """`creates` port creates one after another: the CPU each costs the server (all its
    processes), the database server (all its processes) and this client."""
    with httpx.Client(base_url=url, headers={"X-Project-Id": "cpu", "X-Roles": "member"},
                      timeout=120) as c:
        net = c.post("/v2.0/networks", json={"network": {"name": "cpu"}}).json()["network"]
        c.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.66.0.0/16"}})

        def create() -> None:
            r = c.post("/v2.0/ports", json={"port": {"network_id": net["id"]}})
            assert r.status_code == 201, r.text
        for _ in range(10):  # warm-up
            create()
        pg = _postmaster(db)
        server, database = _family(server_pid), _family(pg) if pg else []
        s0, d0, c0 = _cpu_seconds(server), _cpu_seconds(database), time.process_time()
        t0 = time.perf_counter()
        for _ in range(creates):
            create()
        wall = time.perf_counter() - t0
        spent = (_spent(s0, _cpu_seconds(server)), _spent(d0, _cpu_seconds(database)),
                 time.process_time() - c0)
    per = [round(1000 * x / creates, 2) for x in spent]
    return {"creates": creates, "wall_ms": round(1000 * wall / creates, 2),
            "server_cpu_ms": per[0], "db_cpu_ms": per[1], "client_cpu_ms": per[2]}


# The last commit before writes took scoped locks and commit-time revisions (issue 16): the
# "before" servers run its sources, extracted with `git archive`, beside the current ones.
BEFORE = "c7dbca8"
REPO = Path(__file__).resolve().parents[1]


def before_sources(stack: ExitStack, ref: str) -> str | None:
    """A directory holding `ref`'s src/ (for PYTHONPATH), or None when git cannot give it."""
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sbnet-before-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"],
                             capture_output=True)
    if archive.returncode != 0:
        print(f"before: no sources for {ref} ({archive.stderr.decode().strip()}); skipped")
        return None
    subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
    return str(Path(tmp) / "src")


def measure(backend: str, args: argparse.Namespace, src: str | None) -> dict:
    """One fresh database and server process (running the sources in src, or the current)."""
    with ExitStack() as stack:
        if backend == "sqlite":
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            db = f"sqlite:///{Path(tmp) / 'bench.db'}"
        else:
            db = create_database(stack.enter_context(temp_postgres()), "bench")
        if src is None:   # the current code as an operator runs it: `sbnet serve`'s defaults
            workers = args.workers or default_workers(db)
            proc, url = spawn(db, via_cli=True, extra=["--workers", str(workers)])
        else:             # the older code's own server process (it had no --workers)
            workers = 1
            proc, url = spawn(db, env={"PYTHONPATH": src})
        try:
            if args.cpu:
                out = run_cpu(url, db, proc.pid, args.cpu)
            elif args.clients:
                pg = _postmaster(db)
                out = run_clients(url, args.clients, args.per_client, args.projects,
                                  client=args.client, meter=lambda: [
                                      _cpu_seconds(_family(proc.pid)),
                                      _cpu_seconds(_family(pg)) if pg else {}])
            else:
                out = run(url, args.ports, args.concurrency)
            return {"workers": workers, **out}
        finally:
            stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=300,
                    help="concurrent clients in --projects projects, each creating --per-client "
                         "ports one after another; checks IPAM is exact (0: --ports creates "
                         "from --concurrency threads instead)")
    ap.add_argument("--per-client", type=int, default=2)
    ap.add_argument("--projects", type=int, default=30,
                    help="with --clients: the clients' projects, one network each (1 to 255; "
                         "fewer means more creates waiting for the same project's locks)")
    ap.add_argument("--client", choices=("asyncio", "httpx"), default="asyncio",
                    help="with --clients: coroutines on raw keep-alive connections (default; "
                         "least CPU taken from the server), or a thread with httpx each")
    ap.add_argument("--ports", type=int, default=2000, help="with --clients 0")
    ap.add_argument("--concurrency", type=int, default=16, help="with --clients 0")
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--before", default=BEFORE, metavar="REF",
                    help=f"also measure the server of this git commit (default {BEFORE}, before "
                         "scoped write locks; several, comma-separated), in the same run; '' to skip")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure each server N times, taking turns (before, after, before...), "
                         "and sum up each one's runs: p99's least, median and most, and in how "
                         "many it was under 1 s")
    ap.add_argument("--cpu", type=int, default=0, metavar="N",
                    help="instead: N port creates one after another, and the CPU each costs "
                         "the server, the database server and the client (e.g. 400)")
    ap.add_argument("--workers", type=int, default=0,
                    help="server processes for the current code (default: `sbnet serve`'s, "
                         "one per two CPUs on PostgreSQL, 1 on SQLite)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    if not 1 <= args.projects <= 255:
        ap.error("--projects: 1 to 255")
    if args.clients < 0 or args.per_client < 1 or args.repeat < 1:
        ap.error("--clients must be 0 or more, --per-client and --repeat 1 or more")
    results = []
    table = Table(args, quiet=args.json)
    with ExitStack() as stack:
        refs = [r for r in args.before.split(",") if r]
        srcs = [(ref, before_sources(stack, ref)) for ref in refs]
        cases = []
        for backend in ("sqlite", "postgres"):
            if args.backend in (backend, "both"):
                cases += [(backend, f"before {ref}", src) for ref, src in srcs if src is not None]
                cases.append((backend, "after", None))
        for _ in range(args.repeat):
            for backend, code, src in cases:
                load = os.getloadavg()[0]
                result = {"backend": backend, "code": code, "load": round(load, 2),
                          **measure(backend, args, src)}
                results.append(result)
                table.row(result)
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2))
        return
    table.summary(results)


class Table:
    """The results as a table, a row printed as each run ends; with --repeat, a summary."""

    def __init__(self, args: argparse.Namespace, quiet: bool) -> None:
        self.args = args
        self.quiet = quiet
        self.started = False

    def row(self, r: dict) -> None:
        if self.quiet:
            return
        if not self.started:
            self.started = True
            print(self._head(), flush=True)
        if self.args.cpu:
            print(f"{r['backend']:10} {r['code']:16} {r['workers']:>5} {r['creates']:>7} "
                  f"{r['wall_ms']:>8} {r['server_cpu_ms']:>13} {r['db_cpu_ms']:>9} "
                  f"{r['client_cpu_ms']:>13} {r['load']:>6}", flush=True)
        else:
            clients = (f" {str(r['ipam_exact']):>10} {r['server_cpu_ms']:>10} "
                       f"{r['db_cpu_ms'] if r['backend'] == 'postgres' else '-':>6}"
                       if self.args.clients else "")
            print(f"{r['backend']:10} {r['code']:16} {r['workers']:>5} {r['ports']:>6} "
                  f"{r['concurrency']:>5} {r['creates_per_s']:>10} {r['p50_ms']:>8} "
                  f"{r['p99_ms']:>8}" + clients + f" {r['load']:>6}", flush=True)

    def _head(self) -> str:
        if self.args.cpu:
            return (f"{'backend':10} {'code':16} {'procs':>5} {'creates':>7} {'wall ms':>8} "
                    f"{'server CPU ms':>13} {'db CPU ms':>9} {'client CPU ms':>13} "
                    f"{'load':>6}   (per create; load: 1-minute average at the start)")
        return (f"{'backend':10} {'code':16} {'procs':>5} {'ports':>6} {'conc':>5} "
                f"{'creates/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
                + (f" {'IPAM exact':>10} {'server CPU':>10} {'db CPU':>6}" if self.args.clients
                   else "")
                + f" {'load':>6}   (CPU: ms a create; load: 1-minute average at the start)")

    def summary(self, results: list[dict]) -> None:
        print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f} "
              f"({os.cpu_count()} CPUs)")
        if self.args.repeat == 1 or self.args.cpu:
            return
        print(f"\n{'backend':10} {'code':16} {'runs':>4} {'p99 < 1 s':>9} {'p99 ms least':>12} "
              f"{'median':>8} {'most':>8} {'p50 median':>10} {'creates/s median':>16} "
              f"{'load':>10}" + (f" {'IPAM exact':>10} {'server CPU median':>17}"
                                 if self.args.clients else ""))
        seen: dict[tuple[str, str], list[dict]] = {}
        for r in results:
            seen.setdefault((r["backend"], r["code"]), []).append(r)
        for (backend, code), runs in seen.items():
            p99 = sorted(r["p99_ms"] for r in runs)
            loads = [r["load"] for r in runs]
            def median(key: str) -> float:
                return round(statistics.median(r[key] for r in runs), 2)
            print(f"{backend:10} {code:16} {len(runs):>4} "
                  f"{sum(x < 1000 for x in p99):>9} {p99[0]:>12} "
                  f"{round(statistics.median(p99), 1):>8} {p99[-1]:>8} "
                  f"{median('p50_ms'):>10} {median('creates_per_s'):>16} "
                  f"{min(loads):>4}-{max(loads):<5}"
                  + (f" {str(all(r['ipam_exact'] for r in runs)):>10} "
                     f"{median('server_cpu_ms'):>17}" if self.args.clients else ""))


if __name__ == "__main__":
    main()
