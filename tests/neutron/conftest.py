"""A real neutron-server (its own venv) with sbnet's drivers, writing to an sbnet API served over HTTP."""

from __future__ import annotations

import json
import json as _json
import os
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sbnet.store import Store

IN_CI = os.environ.get("CI") == "true"


def require_neutron_venv() -> str:
    """The neutron venv's python; in CI a venv that cannot be made fails the test, elsewhere
    it skips it (scripts/test makes it)."""
    from sbnet.southbound.neutron_server import venv_python
    try:
        return venv_python()
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", "") or ""
        if IN_CI:
            pytest.fail(f"scripts/neutron-venv failed, and CI must run these tests: {exc} {err[-500:]}")
        pytest.skip(f"no neutron venv (scripts/neutron-venv failed: {exc})")


class Neutron:
    """neutron-server's REST API, as an admin (noauth)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/v2.0/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None
        return json.loads(raw) if raw else {}

    def get(self, collection: str, ident: str) -> dict:
        member = collection.rstrip("s")
        return self.request("GET", f"{collection}/{ident}")[member]

    def create(self, collection: str, **attrs) -> dict:
        member = collection.rstrip("s")
        return self.request("POST", collection, {member: attrs})[member]

    def osc(self, *args: str, json: bool = True) -> dict | list:
        """The openstack CLI against neutron-server (no Keystone: noauth), run in this
        process as its binary runs it (a process per command costs ~2 s of imports)."""
        from tests.api.oscrun import Osc
        rc, out, err = Osc(self.url).run(shlex.join([*args, *(["-f", "json"] if json else [])]))
        assert rc == 0, f"openstack {' '.join(args)}: {err[-800:]}"
        return _json.loads(out) if json and out.strip() else {}

    def wait_port_status(self, port_id: str, status: str, timeout: float = 60.0) -> float:
        """Seconds until Neutron shows the port in `status` (AssertionError at the timeout)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.get("ports", port_id)["status"] == status:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"port {port_id} not {status} in Neutron after {timeout}s")


class NovaStandIn:
    """Records what Neutron's Nova notifier sends (POST /os-server-external-events) and
    answers as Nova does."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        events = self.events = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                got = body.get("events", []) if self.path.endswith("/os-server-external-events") else []
                events.extend(got)
                out = _json.dumps({"events": [dict(e, code=200) for e in got]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def plugged(self, port_id: str, timeout: float = 30.0) -> dict | None:
        """The network-vif-plugged event for a port, once Neutron has sent it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("name") == "network-vif-plugged" and e.get("tag") == port_id:
                    return e
            time.sleep(0.2)
        return None

    def close(self) -> None:
        self.httpd.shutdown()


class Stack:
    """sbnet's API and store, and a real neutron-server writing to it."""

    def __init__(self, workdir: Path, maintenance: int) -> None:
        from sbnet.southbound.neutron_server import ApiThread, NeutronServer
        self.store = Store(f"sqlite:///{workdir / 'sbnet.db'}")
        self.sbnet = ApiThread(self.store).start()
        self.nova = NovaStandIn()
        self.server = NeutronServer(workdir / "neutron", self.sbnet.url, maintenance=maintenance,
                                    nova_url=self.nova.url)
        try:
            self.server.start(timeout=240)
        except Exception:
            self.close()
            raise
        self.neutron = Neutron(self.server.url)

    def close(self) -> None:
        self.server.stop()
        self.sbnet.stop()
        self.nova.close()
        self.store.dispose()


MAINTENANCE = 4          # seconds between the maintenance task's rounds in these tests


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    require_neutron_venv()
    s = Stack(tmp_path_factory.mktemp("neutron"), MAINTENANCE)
    yield s
    s.close()
