"""Fixtures for the API tests: in-process apps, a real `sbnet` server process, a private PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from sbnet.api import create_app

from apihelpers import Api, ADMIN, free_port, start_server, stop_server  # noqa: F401


@pytest.fixture
def app_client() -> Iterator[TestClient]:
    with TestClient(create_app("sqlite://"), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def api(app_client: TestClient) -> Api:
    return Api(app_client, ADMIN)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("db") / "sbnet.db"
    proc, url = start_server(f"sqlite:///{db}")
    yield url
    stop_server(proc)


# --- PostgreSQL, started by the tests in a private directory ---

def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    return Path(exe).parent if exe else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; drop to the Debian `postgres` user when we are root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields a URL of its `postgres` database."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL (Debian package postgresql) is required in CI")
        pytest.skip("PostgreSQL not installed")
    root = Path(tempfile.mkdtemp(prefix="sbnet-pg-"))
    root.chmod(0o755)
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                                 "postgres", "--no-sync"]), check=True, capture_output=True)
    port = free_port()
    opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                                 "-o", opts, "-w", "start"]), check=True, capture_output=True)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        os.kill(pid, signal.SIGINT)  # fast shutdown of our own postmaster
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_db(postgres: str) -> str:
    """A fresh, empty database on the private server."""
    import psycopg2

    name = "t" + uuid.uuid4().hex[:12]
    dsn = postgres.replace("postgresql+psycopg2", "postgresql")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return postgres.rsplit("/", 1)[0] + "/" + name
