"""Fixtures for the API tests: in-process apps, a real `sbnet` server process, a private PostgreSQL."""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from sbnet.api import create_app
from sbnet.store.pgtemp import create_database, pg_bindir, temp_postgres

from apihelpers import ADMIN, Api, start_server, stop_server


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
    proc, url = start_server(f"sqlite:///{db}", via_cli=True)  # the real `sbnet serve`
    yield url
    stop_server(proc)


# --- PostgreSQL, started by the tests in a private directory ---

@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields a URL of its `postgres` database."""
    if pg_bindir() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL (Debian package postgresql) is required in CI")
        pytest.skip("PostgreSQL not installed")
    with temp_postgres() as url:
        yield url


@pytest.fixture
def pg_db(postgres: str) -> str:
    """A fresh, empty database on the private server."""
    return create_database(postgres, "t" + uuid.uuid4().hex[:12])
