"""An HTTP client of sbnet's southbound endpoints (/v2.0/sbnet/southbound, hosts, changes)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ADMIN = {"X-Project-Id": "neutron", "X-Roles": "admin"}


class SouthboundError(RuntimeError):
    """sbnet answered with an error (status and Neutron's error body), or could not be reached
    (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"sbnet {status or 'unreachable'}: {message}")
        self.status = status


def _error_message(raw: bytes) -> str:
    """Neutron's error body ({"NeutronError": {type, message}}), Octavia's ({"faultstring"}),
    or the start of whatever else came."""
    try:
        body = json.loads(raw)
        if "NeutronError" in body:
            return f"{body['NeutronError']['type']}: {body['NeutronError']['message']}"
        return str(body["faultstring"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")


class Southbound:
    """Writes Neutron's resources into sbnet's store and reads back what the agents report."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.headers = dict(ADMIN, **({"X-Auth-Token": token} if token else {}))
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, params: dict | None = None,
                timeout: float | None = None) -> Any:
        url = f"{self.url}/v2.0/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=dict(
            self.headers, **({"Content-Type": "application/json"} if data else {})))
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            message = _error_message(raw)
            raise SouthboundError(exc.code, message) from None
        except (urllib.error.URLError, OSError) as exc:
            raise SouthboundError(0, f"{url}: {getattr(exc, 'reason', exc)}") from None
        return json.loads(raw) if raw else {}

    # --- the copy ---

    def put(self, typ: str, body: dict) -> str:
        """Write one resource as Neutron has it; "created", "updated", "unchanged" or "stale"."""
        try:
            return self.request("PUT", f"sbnet/southbound/{typ}/{body['id']}",
                                {"resource": body})["outcome"]
        except SouthboundError as exc:
            if exc.status == 409:
                return "stale"
            raise

    def delete(self, typ: str, ident: str) -> bool:
        return self.request("DELETE", f"sbnet/southbound/{typ}/{ident}")["deleted"]

    def inventory(self) -> dict[str, dict[str, dict]]:
        """type -> id -> {"revision_number": Neutron's revision of the copy, "status" (ports)}."""
        return self.request("GET", "sbnet/southbound")["resources"]

    def revision(self) -> int:
        """The store's revision now (where to start following the change feed)."""
        return self.request("GET", "sbnet/southbound")["revision"]

    def bind(self, host: str, port: dict, network: dict, segment: dict) -> dict:
        """Ask sbnet how `host` binds `port`: {"vif_type", "vif_details"} or {"refused": reason}."""
        return self.request("POST", "sbnet/southbound/bind",
                            {"host": host, "port": port, "network": network, "segment": segment})

    # --- what the agents say ---

    def changes(self, since: int, wait: float = 0.0) -> tuple[list[dict], int]:
        out = self.request("GET", "sbnet/changes", params={"since": since, "wait": wait},
                           timeout=wait + self.timeout)
        return out["changes"], out["revision"]

    def hosts(self) -> list[dict]:
        return self.request("GET", "sbnet/hosts")["hosts"]
