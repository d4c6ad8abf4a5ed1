"""Keystone authentication: keystonemiddleware's auth_token in front of the API, as in Neutron."""

from __future__ import annotations

import io
from typing import Any

from starlette.concurrency import run_in_threadpool

# Neutron serves its version document without authentication; everything under /v2.0 needs a token.
OPEN_PATHS = ("/",)
# Identity headers a client might send to impersonate someone: never passed through.
IDENTITY_HEADERS = {b"x-project-id", b"x-tenant-id", b"x-roles", b"x-user-id", b"x-identity-status",
                    b"x-project-name", b"x-domain-id", b"x-user-name"}


def authtoken_section(url: str, user: str, password: str, project: str,
                      cache_seconds: int = 300) -> str:
    """A [keystone_authtoken] section (as in neutron.conf) for a service user of the default
    domain: what `sbnet serve --keystone URL` configures auth_token with."""
    return ("[keystone_authtoken]\n"
            f"www_authenticate_uri = {url}\nauth_url = {url}\nauth_type = password\n"
            f"username = {user}\npassword = {password}\nproject_name = {project}\n"
            "user_domain_id = default\nproject_domain_id = default\n"
            f"service_token_roles_required = true\ntoken_cache_time = {cache_seconds}\n")


def _passed(environ: dict, start_response: Any) -> list[bytes]:
    """The WSGI app auth_token wraps: reached only when the token was confirmed."""
    environ["sbnet.identity"] = {
        "project_id": environ.get("HTTP_X_PROJECT_ID") or "",
        "roles": environ.get("HTTP_X_ROLES") or "",
        "user_id": environ.get("HTTP_X_USER_ID") or "",
    }
    start_response("200 OK", [])
    return [b""]


class KeystoneAuth:
    """ASGI middleware: each request's X-Auth-Token is validated by keystonemiddleware's
    auth_token (configured by the [keystone_authtoken] section of config_file, exactly as in
    neutron.conf); the token's project, user and roles then reach the API as the X-Project-Id,
    X-User-Id and X-Roles headers, which replace anything the client sent.  A missing, expired,
    revoked or forged token gets auth_token's own 401."""

    def __init__(self, app: Any, config_file: str) -> None:
        from keystonemiddleware import auth_token

        self.app = app
        self.auth_token = auth_token.AuthProtocol(_passed, {
            "oslo_config_project": "sbnet", "oslo_config_file": config_file,
            "delay_auth_decision": "false"})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        status, headers, body, identity = await run_in_threadpool(self._check, scope)
        if identity is None:
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k.lower().encode(), v.encode()) for k, v in headers]})
            await send({"type": "http.response.body", "body": body})
            return
        if not identity["project_id"]:
            body = (b'{"NeutronError": {"type": "HTTPForbidden", "message": "A project-scoped '
                    b'token is required", "detail": ""}}')
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        kept = [(k, v) for k, v in scope["headers"] if k.lower() not in IDENTITY_HEADERS]
        kept += [(b"x-project-id", identity["project_id"].encode()),
                 (b"x-roles", identity["roles"].encode()),
                 (b"x-user-id", identity["user_id"].encode())]
        await self.app(dict(scope, headers=kept), receive, send)

    def _check(self, scope: dict) -> tuple[int, list, bytes, dict | None]:
        """Run auth_token on the request's headers (it never reads the body)."""
        environ = {
            "REQUEST_METHOD": scope["method"], "SCRIPT_NAME": "", "PATH_INFO": scope["path"],
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": (scope.get("server") or ("localhost", 80))[0],
            "SERVER_PORT": str((scope.get("server") or ("localhost", 80))[1]),
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for key, value in scope["headers"]:
            name = key.decode("latin-1").upper().replace("-", "_")
            if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[name] = value.decode("latin-1")
            else:
                environ["HTTP_" + name] = value.decode("latin-1")
        started: dict = {}

        def start_response(status: str, headers: list, exc_info: Any = None) -> None:
            started["status"], started["headers"] = int(status.split()[0]), headers

        body = b"".join(self.auth_token(environ, start_response))
        return started["status"], started["headers"], body, environ.get("sbnet.identity")
