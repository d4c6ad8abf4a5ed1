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


# --- a real Keystone (from the separate venv, scripts/openstack-venv) in front of `sbnet serve` ---

@pytest.fixture(scope="session")
def keystone_sbnet() -> Iterator[tuple]:
    """(Keystone, sbnet URL): a private Keystone issuing tokens, `sbnet serve --keystone-config`."""
    from sbnet.api.openstack import keystone_and_sbnet, venv
    try:
        venv()
    except Exception as exc:  # no registry to install Keystone and tempest from
        if os.environ.get("CI") == "true":
            pytest.fail(f"the OpenStack venv (scripts/openstack-venv) is required in CI: {exc}")
        pytest.skip(f"the OpenStack venv could not be created: {exc}")
    with keystone_and_sbnet() as pair:
        yield pair
