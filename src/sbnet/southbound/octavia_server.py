"""A real Octavia (API and driver agent) with sbnet as its provider, run from its own virtualenv (bench, trying it out).

octavia-api (its simple server) and octavia-driver-agent, noauth, its tables made as its
functional tests make them (sbnet.octavia.dbinit), the network driver talking to sbnet's
Neutron API.  Both processes are started in their own process groups and stopped by those ids."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from sbnet.southbound.neutron_server import free_port, stop_group, tail_logs

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "octavia-venv"

# [neutron] takes its credentials from [service_auth] (auth_section): keystoneauth's `none`
# plugin brings an `endpoint` option that clashes with Octavia's own [neutron] endpoint.
# Octavia calls Neutron with the user's token (any, for an sbnet without Keystone).
OCTAVIA_CONF = """\
[DEFAULT]
debug = false
transport_url = fake:/
log_file = {log}

[api_settings]
auth_strategy = noauth
bind_host = 127.0.0.1
bind_port = {port}
enabled_provider_drivers = sbnet:sbnet distributed L4 load balancing
default_provider_driver = sbnet

[database]
connection = {db}
{db_extra}

[driver_agent]
status_socket_path = {dir}/status.sock
stats_socket_path = {dir}/stats.sock
get_socket_path = {dir}/get.sock
enabled_provider_agents =

[service_auth]
auth_type = none
endpoint = {sbnet_url}

[neutron]
auth_section = service_auth
endpoint_override = {sbnet_url}
"""


def venv_python() -> str:
    """The octavia venv's python (created by scripts/octavia-venv on first use)."""
    out = subprocess.run([str(SCRIPT)], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


class OctaviaError(RuntimeError):
    def __init__(self, status: int, body: dict | str) -> None:
        super().__init__(f"Octavia {status}: {body}")
        self.status, self.body = status, body


class OctaviaServer:
    """Octavia's API and driver agent in `workdir`, with the `sbnet` provider at sbnet_url
    (status reports every `status_interval` seconds)."""

    def __init__(self, workdir: str | Path, sbnet_url: str, status_interval: float = 1.0,
                 db_url: str | None = None) -> None:
        """db_url: Octavia's database (default SQLite in workdir, which takes one writer at a
        time: the driver agent's status writes and the API's then collide now and then, as
        "database is locked"; give a postgresql:// URL for anything but a quick look)."""
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.python = venv_python()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sbnet_url, self.status_interval = sbnet_url, status_interval
        self.db = (db_url or f"sqlite:///{self.dir / 'octavia.sqlite'}").replace(
            "postgresql://", "postgresql+psycopg2://")
        self.conf = self.dir / "octavia.conf"
        self.conf.write_text(OCTAVIA_CONF.format(
            log=self.dir / "octavia.log", port=self.port, db=self.db, dir=self.dir,
            # SQLAlchemy takes no pool timeout for SQLite's NullPool
            db_extra="pool_timeout =" if self.db.startswith("sqlite") else "",
            sbnet_url=sbnet_url))
        self.procs: list[subprocess.Popen] = []

    def _env(self) -> dict:
        return dict(os.environ, PYTHONPATH=str(REPO / "src"), SBNET_URL=self.sbnet_url,
                    SBNET_STATUS_INTERVAL=str(self.status_interval))

    def _bin(self, name: str) -> str:
        return str(Path(self.python).parent / name)

    def start(self, timeout: float = 120.0) -> "OctaviaServer":
        out = subprocess.run([self.python, "-m", "sbnet.octavia.dbinit", self.db],
                             capture_output=True, text=True, env=self._env())
        if out.returncode:
            raise RuntimeError(f"creating Octavia's tables failed: {out.stderr[-2000:]}")
        for name in ("octavia-driver-agent", "octavia-api"):
            log = open(self.dir / f"{name}.out", "ab")
            self.procs.append(subprocess.Popen(
                [self._bin(name), "--config-file", str(self.conf)], env=self._env(),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited: {self.tail()}")
            if (self.dir / "status.sock").exists():
                try:
                    self.request("GET", "providers")
                    return
                except (OSError, OctaviaError):
                    pass
            time.sleep(0.2)
        raise TimeoutError(f"Octavia not answering after {timeout}s: {self.tail()}")

    def request(self, method: str, path: str, body: dict | None = None,
                project: str = "p1", roles: str = "member") -> dict:
        """Octavia's v2 API as a user of `project` (noauth: the identity is in the headers)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.url}/v2/lbaas/{path}", data=data, method=method,
            headers={"X-Project-Id": project, "X-Roles": roles, "X-Auth-Token": "sbnet",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err: dict | str = json.loads(raw)
            except ValueError:
                err = raw[:300].decode(errors="replace")
            raise OctaviaError(exc.code, err) from None
        return json.loads(raw) if raw else {}

    def tail(self, lines: int = 30) -> str:
        return tail_logs(self.dir, ("octavia-api.out", "octavia-driver-agent.out",
                                    "octavia.log"), lines)

    def stop(self) -> None:
        # The driver agent, TERMed, may wait on its listeners for good: KILL it soon.
        for p in self.procs:
            stop_group(p, timeout=5)
        self.procs.clear()

    def __enter__(self) -> "OctaviaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
