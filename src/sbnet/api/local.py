"""An in-process client of the Neutron API (the main job's embedded mode, tests, topology files)."""

from __future__ import annotations

import warnings

from sbnet.store.db import Store


class ApiError(RuntimeError):
    """A request the API refused: the status and Neutron's error body."""

    def __init__(self, status: int, body: dict) -> None:
        err = body.get("NeutronError", {}) if isinstance(body, dict) else {}
        super().__init__(f"{status} {err.get('type', '')}: {err.get('message', body)}")
        self.status = status
        self.body = body


class LocalApi:
    """Calls the real API app (validation, IPAM, allocation) without a socket."""

    def __init__(self, store: Store | None = None, url: str = "sqlite://", **app_options) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fastapi.testclient import TestClient
        from sbnet.api.app import create_app
        self.store = store or Store(url)
        self.client = TestClient(create_app(store=self.store, **app_options))

    def request(self, method: str, path: str, body: dict | None = None,
                project: str = "admin", admin: bool = True) -> dict:
        headers = {"X-Project-Id": project, "X-Roles": "admin" if admin else "member"}
        r = self.client.request(method, f"/v2.0/{path}", json=body, headers=headers)
        out = r.json() if r.content else {}
        if r.status_code >= 400:
            raise ApiError(r.status_code, out)
        return out

    def create(self, collection: str, project: str = "admin", **attrs) -> dict:
        """POST one resource: create("networks", project="p1", name="n") -> the network."""
        member = member_of(collection)
        return self.request("POST", collection, {member: attrs}, project)[member]

    def update(self, collection: str, ident: str, **attrs) -> dict:
        member = member_of(collection)
        return self.request("PUT", f"{collection}/{ident}", {member: attrs})[member]

    def delete(self, collection: str, ident: str) -> None:
        self.request("DELETE", f"{collection}/{ident}")

    def action(self, path: str, body: dict) -> dict:
        return self.request("PUT", path, body)

    def snapshot(self) -> dict:
        return self.store.snapshot()


_MEMBERS = {
    "security-groups": "security_group", "security-group-rules": "security_group_rule",
    "floatingips": "floatingip", "qos/policies": "policy", "policies": "policy",
    "sfc/port_pairs": "port_pair", "sfc/port_pair_groups": "port_pair_group",
    "sfc/flow_classifiers": "flow_classifier", "sfc/port_chains": "port_chain",
    "rbac-policies": "rbac_policy", "address-scopes": "address_scope",
}


def member_of(collection: str) -> str:
    """The body key of a collection: ports -> port, qos/policies/<id>/dscp_marking_rules ->
    dscp_marking_rule."""
    return _MEMBERS.get(collection, collection.rsplit("/", 1)[-1].rstrip("s"))
