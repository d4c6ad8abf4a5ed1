"""Helpers shared by the API tests: a JSON client, server processes, project headers."""

from __future__ import annotations

import subprocess

import httpx
from fastapi.testclient import TestClient

from sbnet.api.process import spawn, stop

ADMIN = {"X-Project-Id": "admin-project", "X-Roles": "admin"}


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


def start_server(db_url: str, via_cli: bool = False) -> tuple[subprocess.Popen, str]:
    """The API under uvicorn in its own process on a free port (as `sbnet serve` runs it)."""
    return spawn(db_url, via_cli=via_cli)


def stop_server(proc: subprocess.Popen) -> None:
    stop(proc)
