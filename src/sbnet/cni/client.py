"""A small JSON-over-HTTP client (stdlib only, so the plugin starts fast) for the Neutron API and the NIC's channel."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request

from sbnet.cni.spec import API_REFUSED, INVALID_CONFIG, TRY_AGAIN_LATER, CniError


class NotFound(CniError):
    """The resource asked for is not there (404)."""


class JsonClient:
    """GET/POST/PUT/DELETE of JSON against a base URL with fixed headers; answers as dicts.
    An unreachable endpoint is CNI's "try again later" (11); an error answer is 100 with the
    server's message (404: NotFound)."""

    def __init__(self, url: str, headers: dict | None = None, timeout: float = 10.0,
                 what: str = "the API") -> None:
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise CniError(INVALID_CONFIG, f"{what}: {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.headers = {"Accept": "application/json", **(headers or {})}
        self.timeout = timeout
        self.what = what

    def request(self, method: str, path: str, body: dict | None = None,
                params: dict | None = None) -> tuple[dict, dict]:
        """(JSON answer, response headers)."""
        url = self.url + path + (("?" + urllib.parse.urlencode(params, doseq=True))
                                 if params else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers, **({"Content-Type": "application/json"} if data else {}))
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                return (json.loads(raw) if raw else {}), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                err = json.loads(text)
            except ValueError:
                err = {}
            if not isinstance(err, dict):
                err = {}
            if isinstance(err.get("code"), int) and isinstance(err.get("msg"), str):
                # A CNI error result (the NIC's agent answers with them): passed on as it is.
                raise (NotFound if exc.code == 404 else CniError)(
                    err["code"], err["msg"], str(err.get("details") or "")) from None
            msg = (err.get("NeutronError") or {}).get("message") or err.get("detail") or text
            cls = NotFound if exc.code == 404 else CniError
            raise cls(API_REFUSED, f"{self.what} refused {method} {path}: {exc.code}",
                      str(msg)[:500]) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise CniError(TRY_AGAIN_LATER, f"{self.what} at {self.url} cannot be reached",
                           str(why)) from None

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params=params)[0]

    def post(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)[0]

    def put(self, path: str, body: dict) -> dict:
        return self.request("PUT", path, body)[0]

    def delete(self, path: str) -> None:
        self.request("DELETE", path)


def neutron(config: dict) -> JsonClient:
    """The Neutron API as the network configuration says: `api` URL and one of `token`,
    `token_file`, `auth` (Keystone v3 password: auth_url, username, password,
    project_name, user_domain_name, project_domain_name) or, with no authentication on
    the API, `project_id` and `roles` (X-Project-Id / X-Roles)."""
    api, timeout = config.get("api"), float(config.get("timeout", 10))
    if "token" in config:
        headers = {"X-Auth-Token": str(config["token"])}
    elif "token_file" in config:
        try:
            headers = {"X-Auth-Token": open(config["token_file"]).read().strip()}
        except OSError as exc:
            raise CniError(INVALID_CONFIG, f"token_file {config['token_file']}: "
                                           f"{exc.strerror}") from None
    elif "auth" in config:
        headers = {"X-Auth-Token": keystone_token(config["auth"], timeout)}
    else:
        roles = config.get("roles", ["admin"])
        headers = {"X-Project-Id": str(config.get("project_id", "admin")),
                   "X-Roles": ",".join(roles) if isinstance(roles, list) else str(roles)}
    return JsonClient(api, headers, timeout)


def keystone_token(auth: dict, timeout: float) -> str:
    """A token from Keystone v3 (password method, project scope)."""
    if not isinstance(auth, dict) or not all(isinstance(auth.get(k), str) for k in
                                             ("auth_url", "username", "password",
                                              "project_name")):
        raise CniError(INVALID_CONFIG, "auth needs auth_url, username, password, project_name")
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": auth["username"], "password": auth["password"],
            "domain": {"name": auth.get("user_domain_name", "Default")}}}},
        "scope": {"project": {"name": auth["project_name"],
                              "domain": {"name": auth.get("project_domain_name", "Default")}}}}}
    ks = JsonClient(auth["auth_url"], timeout=timeout, what="Keystone")
    _, headers = ks.request("POST", "/v3/auth/tokens", body)
    token = {k.lower(): v for k, v in headers.items()}.get("x-subject-token")
    if not token:
        raise CniError(API_REFUSED, "Keystone gave no X-Subject-Token")
    return token
