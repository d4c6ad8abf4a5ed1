"""The lane in front of the app's middleware: an unexpected error is Neutron's JSON 500, and what the middleware changes still goes through it."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import text

from apihelpers import ADMIN
from sbnet.api import create_app
from sbnet.model.attrs import LIMITS


def test_an_internal_error_on_a_direct_route_is_a_json_500(tmp_path) -> None:
    app = create_app(f"sqlite:///{tmp_path}/x.db")
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/v2.0/networks", json={"network": {"name": "a"}},
                      headers=ADMIN).status_code == 201
        with app.state.api.store.engine.begin() as conn:   # the database loses a table
            conn.execute(text("DROP TABLE sbnet_resources"))
        r = c.get("/v2.0/networks", headers=ADMIN)
        assert r.status_code == 500
        assert r.json()["NeutronError"]["type"] == "HTTPInternalServerError"


def test_suffix_and_body_limits_still_apply_in_front_of_the_middleware(tmp_path) -> None:
    with TestClient(create_app(f"sqlite:///{tmp_path}/x.db")) as c:
        made = c.post("/v2.0/networks.json", json={"network": {"name": "a"}}, headers=ADMIN)
        assert made.status_code == 201
        assert c.get("/v2.0/networks.json", headers=ADMIN).json()["networks"][0]["name"] == "a"
        big = b'{"network": {"name": "' + b"x" * LIMITS.body_bytes + b'"}}'
        r = c.post("/v2.0/networks", content=big, headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 413

        def chunks():   # no Content-Length: counted as it streams in
            yield big[:100]
            yield big[100:]
        r = c.post("/v2.0/networks", content=chunks(), headers=ADMIN)
        assert r.status_code == 413
        assert [n["name"] for n in c.get("/v2.0/networks", headers=ADMIN).json()["networks"]] == ["a"]
