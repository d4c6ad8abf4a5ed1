"""`sbnet migrate` against a running server: the Nova sequence, its timeline, and a clean failure."""

from __future__ import annotations

import httpx
from typer.testing import CliRunner

from sbnet.cli.main import app
from tests.api.apihelpers import start_server, stop_server


class _Run:
    def __init__(self, res) -> None:
        self.returncode, self.stdout, self.stderr = res.exit_code, res.stdout, res.stderr


def _sbnet(*args: str) -> _Run:
    return _Run(CliRunner().invoke(app, list(args)))


def test_migrate_rolls_back_when_the_destination_never_gets_ready(tmp_path):
    proc, url = start_server(f"sqlite:///{tmp_path / 'db'}")
    try:
        c = httpx.Client(base_url=url)
        for h in ("src", "dst"):
            c.put(f"/v2.0/sbnet/hosts/{h}", json={"host": {"tunnel_ip": "192.0.2.1",
                                                           "datapath": "reference"}})
        net = c.post("/v2.0/networks", json={"network": {"name": "n"}}).json()["network"]
        c.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                 "cidr": "10.8.0.0/24"}})
        port = c.post("/v2.0/ports", json={"port": {
            "network_id": net["id"], "device_owner": "compute:nova",
            "binding:host_id": "src"}}).json()["port"]
        # No agent runs on dst: it never reports ready; the binding is taken back.
        res = _sbnet("migrate", port["id"], "--to", "dst", "--api", url, "--timeout", "0.5",
                     "--activation-strategy", "garp")
        assert res.returncode == 1
        assert "inactive binding on dst (tap), active on src" in res.stdout
        assert "rolled back: binding on dst deleted" in res.stdout
        assert res.stderr.strip() == "sbnet: migrate: dst not ready after 0.5 s"
        bindings = c.get(f"/v2.0/ports/{port['id']}/bindings",
                         headers={"X-Roles": "admin"}).json()["bindings"]
        assert [(b["host"], b["status"]) for b in bindings] == [("src", "ACTIVE")]
        # Bad input: one line, no traceback.
        res = _sbnet("migrate", port["id"], "--to", "dst", "--api", url,
                     "--activation-strategy", "magic")
        assert res.returncode == 2 and "rarp, garp" in res.stderr and "Traceback" not in res.stderr
        res = _sbnet("migrate", "no-such-port", "--to", "dst", "--api", url)
        assert res.returncode == 1 and res.stderr.startswith("sbnet: migrate: GET ports/")
        assert "PortNotFound" in res.stderr and "Traceback" not in res.stderr
    finally:
        stop_server(proc)
