"""A real neutron-server with sbnet's drivers, run from its own virtualenv (tests, bench, trying it out).

neutron 29 serves its API as a WSGI application (neutron.wsgi.api:application, here under
gunicorn); neutron-periodic-workers runs the plug-ins' workers beside it (sbnet's sync
worker).  noauth, oslo.messaging's fake transport, SQLite.  Both processes are started in
their own process groups and stopped by those ids."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "neutron-venv"

NEUTRON_CONF = """\
[DEFAULT]
core_plugin = ml2
service_plugins = {service_plugins}
auth_strategy = noauth
transport_url = fake:/
api_paste_config = {paste}
state_path = {state}
host = sbnet-neutron
debug = {debug}
log_file = {log}
allow_overlapping_ips = true
notify_nova_on_port_status_changes = {notify}
notify_nova_on_port_data_changes = false
send_events_interval = 1
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0

[database]
connection = {db}

[oslo_concurrency]
lock_path = {state}/lock

[nova]
auth_type = none
endpoint = {nova_url}

[ml2]
type_drivers = flat,vlan,vxlan,geneve,gre
tenant_network_types = vxlan
mechanism_drivers = sbnet
extension_drivers = port_security,qos

[ml2_type_flat]
flat_networks = *

[ml2_type_vlan]
network_vlan_ranges = physnet1:100:199

[ml2_type_vxlan]
vni_ranges = 1:1000

[ml2_type_geneve]
vni_ranges = 1:1000
max_header_size = 38

[ml2_type_gre]
tunnel_id_ranges = 1:1000

[sfc]
drivers = sbnet

[flowclassifier]
drivers = sbnet

[sbnet]
url = {sbnet_url}
maintenance_interval = {maintenance}
"""


def venv_python() -> str:
    """The neutron venv's python (created by scripts/neutron-venv on first use)."""
    out = subprocess.run([str(SCRIPT)], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def tail_logs(directory: Path, names: tuple[str, ...], lines: int = 30) -> str:
    """The last lines of each log a server process left in `directory`."""
    text = ""
    for name in names:
        path = directory / name
        if path.exists():
            text += f"--- {name}\n" + "\n".join(
                path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    return text


def stop_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a process started in its own session, and its group: TERM, KILL after `timeout`."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    else:
        try:                            # children it left behind in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NeutronServer:
    """neutron-server (API and periodic workers) in `workdir`, writing to sbnet at sbnet_url."""

    def __init__(self, workdir: str | Path, sbnet_url: str, *, maintenance: int = 60,
                 nova_url: str | None = None, db_url: str | None = None,
                 service_plugins: str = "sbnet-router,qos,trunk,flow_classifier,sfc",
                 debug: bool = False) -> None:
        """db_url: Neutron's database (default SQLite in workdir, which takes one writer at a
        time: fine for tests, "database is locked" under concurrent writes; give a
        postgresql:// URL for those)."""
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.python = venv_python()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = self.dir / "neutron.conf"
        self.log = self.dir / "neutron.log"
        self.procs: list[subprocess.Popen] = []
        self.db_url = db_url or f"sqlite:///{self.dir / 'neutron.sqlite'}?timeout=60"
        self._fresh = True
        venv = Path(self.python).parent.parent
        self.conf.write_text(NEUTRON_CONF.format(
            service_plugins=service_plugins, paste=venv / "etc" / "neutron" / "api-paste.ini",
            state=self.dir, db=self.db_url.replace("postgresql://", "postgresql+psycopg2://"),
            log=self.log,
            debug=str(debug).lower(), notify=str(bool(nova_url)).lower(),
            nova_url=nova_url or "http://127.0.0.1:1", sbnet_url=sbnet_url,
            maintenance=maintenance))
        (self.dir / "lock").mkdir(exist_ok=True)

    def _env(self) -> dict:
        env = dict(os.environ, OS_NEUTRON_CONFIG_DIR=str(self.dir),
                   OS_NEUTRON_CONFIG_FILES="neutron.conf")
        env.pop("PYTHONPATH", None)        # the venv has sbnet (editable) and its own packages
        return env

    def _bin(self, name: str) -> str:
        return str(Path(self.python).parent / name)

    def init_db(self) -> None:
        """Neutron's tables, made from its models (its migrations need MySQL or PostgreSQL)."""
        out = subprocess.run([self.python, "-m", "sbnet.neutron.dbinit",
                              self.db_url.replace("postgresql://", "postgresql+psycopg2://")],
                             capture_output=True, text=True, env=self._env())
        if out.returncode:
            raise RuntimeError(f"creating Neutron's tables failed: {out.stderr[-2000:]}")

    def start(self, timeout: float = 120.0) -> "NeutronServer":
        if self._fresh:
            self.init_db()
            self._fresh = False
        # One at a time: both fill the type drivers' allocation tables at start, and SQLite
        # takes one writer.
        self.start_api()
        self.wait_ready(timeout)
        self.start_workers()
        self.wait_workers(timeout)
        return self

    def start_api(self) -> None:
        out = open(self.dir / "api.out", "ab")
        self.api = subprocess.Popen(
            [self.python, "-m", "gunicorn", "--workers", "1", "--threads", "8",
             "--timeout", "300", "--bind", f"127.0.0.1:{self.port}",
             "sbnet.neutron.wsgi:application"],
            env=self._env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.api)

    def _started_workers(self) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count("sbnet sync worker: following")

    def start_workers(self) -> None:
        self._workers_before = self._started_workers()
        out = open(self.dir / "workers.out", "ab")
        self.workers = subprocess.Popen(
            [self._bin("neutron-periodic-workers"), "--config-file", str(self.conf)],
            env=self._env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.workers)

    def stop_workers(self) -> None:
        """Stop the periodic workers (sbnet's sync worker with them); start_workers() again."""
        self._stop(self.workers)
        self.procs.remove(self.workers)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"neutron-server exited ({p.args[-1]}): "
                                       f"{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2.0/networks", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"neutron-server not answering after {timeout}s: {self.tail()}")

    def wait_workers(self, timeout: float = 120.0) -> None:
        """Until the periodic workers run sbnet's sync worker (it says so in the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.workers.poll() is not None:
                raise RuntimeError(f"neutron-periodic-workers exited: {self.tail()}")
            if self._started_workers() > self._workers_before:
                return
            time.sleep(0.5)
        raise TimeoutError(f"sbnet's sync worker did not start in {timeout}s: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return tail_logs(self.dir, ("api.out", "workers.out", "neutron.log"), lines)

    def _stop(self, proc: subprocess.Popen) -> None:
        stop_group(proc)

    def stop(self) -> None:
        """Stop the API and the workers side by side: each takes seconds to shut down
        gracefully (gunicorn waits for its worker, oslo.service for its threads)."""
        stoppers = [threading.Thread(target=self._stop, args=(p,)) for p in self.procs]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()

    def __enter__(self) -> "NeutronServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ApiThread:
    """sbnet's API on a store, served by uvicorn in a thread of this process (the copy a
    neutron-server writes to, the feed agents follow); stop() and start() again keep the
    port, as an sbnet outage and its end."""

    def __init__(self, store, port: int | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.thread: threading.Thread | None = None

    def start(self) -> "ApiThread":
        import uvicorn

        from sbnet.api.app import create_app
        config = uvicorn.Config(create_app(store=self.store), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="sbnet-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("sbnet's API did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
