"""Helpers shared by the API tests: a JSON client, server processes, project headers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from fastapi.testclient import TestClient

ADMIN = {"X-Project-Id": "admin-project", "X-Roles": "admin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(name: str) -> dict:
    return {"X-Project-Id": name, "X-Roles": "member"}


class Api:
    """A thin client that returns parsed JSON and checks the status it was told to expect."""

    def __init__(self, client: TestClient | httpx.Client, headers: dict | None = None) -> None:
        self.client = client
        self.headers = headers or {}

    def as_(self, headers: dict) -> "Api":
        return Api(self.client, headers)

    def req(self, method: str, path: str, body: object = None, status: int | None = None,
            headers: dict | None = None, **kw: object) -> dict:
        r = self.client.request(method, f"/v2.0/{path}", json=body,
                                headers={**self.headers, **(headers or {})}, **kw)
        if status is not None:
            assert r.status_code == status, (r.status_code, r.text)
        return r.json() if r.content else {}

    def create(self, collection: str, member: str, **attrs: object) -> dict:
        return self.req("POST", collection, {member: attrs}, 201)[member]

    def err(self, method: str, path: str, body: object = None, status: int = 400) -> dict:
        out = self.req(method, path, body, status)
        assert set(out["NeutronError"]) == {"type", "message", "detail"}
        return out["NeutronError"]


def start_server(db_url: str, extra: str = "") -> tuple[subprocess.Popen, str]:
    """`sbnet serve`'s app under uvicorn in its own process on a free port."""
    port = free_port()
    code = ("import uvicorn; from sbnet.api import create_app; "
            f"uvicorn.run(create_app({db_url!r}{extra}), host='127.0.0.1', port={port}, "
            "log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
