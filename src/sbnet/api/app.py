"""The FastAPI app factory: store, authentication, error rendering and every family's routes."""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sbnet.api import crud
from sbnet.api.context import Authenticator, Context, StaticTokens, TokenValidator
from sbnet.api.handlers import HandlerPool
from sbnet.api.hosts import Heartbeats
from sbnet.api.lane import FastJSON, Lane
from sbnet.api.quotas import Quotas
from sbnet.model.attrs import LIMITS
from sbnet.model.errors import NeutronError
from sbnet.model.segments import SegmentConfig
from sbnet.store import Store

log = logging.getLogger("sbnet.api")

# One module per resource family; each has HOOKS (Hooks classes) and may have extra_routes().
FAMILIES = ("networks", "address_scopes", "subnetpools", "ports", "security", "l3", "qos", "rbac",
            "trunks", "sfc", "meta", "quotas", "hosts", "offload", "southbound", "lbaas", "bindings")

# Seconds an idle client connection stays open (uvicorn's default is 5): clients keep pools of
# connections, and a server closing one just as a client reuses it makes that request fail
# with "Server disconnected without sending a response".
KEEP_ALIVE_S = 75
# Handler threads per process, for writes and for reads apart (a read never waits for a
# lock, so writers queued behind a whole-store write never hold up reads).  Few: every
# runnable thread competes with the event loop for the GIL, and with 40 of them under 300
# clients the loop took requests in up to 0.8 s late (bench_api: p99 2.5 times p50); with
# 8, writers waiting for their project's locks left the cores idle (300 clients in 30
# projects: 16 gave 590-630 creates/s and p99 0.56-0.61 s, 8 233-466/s and 1.08-1.31 s).
WRITE_THREADS = 16
READ_THREADS = 8
# FastAPI's own OpenTelemetry instrumentation (0.16x) asks the global providers whether one
# is configured on every request (8% of a port create's server CPU); sbnet configures none.
NO_TELEMETRY = {"telemetry": {"tracing": False, "metrics": False, "logs": False}} \
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {}

HTTP_TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden",
              404: "HTTPNotFound", 405: "HTTPMethodNotAllowed", 409: "HTTPConflict",
              413: "HTTPRequestEntityTooLarge", 415: "HTTPUnsupportedMediaType"}


class Api:
    """What every endpoint needs: the store, the segment config, the authenticator, the hooks."""

    def __init__(self, store: Store, auth: Authenticator, segments: SegmentConfig,
                 quotas: Quotas | None = None) -> None:
        self.store = store
        self.quotas = quotas or Quotas()
        self.auth = auth
        self.segments = segments
        self.hooks: dict[str, crud.Hooks] = {}
        self.host_profiles: dict = {}         # host -> NIC Profile (port binding)
        self.heartbeats = Heartbeats.of(store)  # hosts' agents: alive, and their datapath
        # The handlers' threads, handed work directly (anyio's worker threads, and asyncio's
        # executors, cost more CPU a call).
        self.writers = HandlerPool(WRITE_THREADS, "sbnet-write")
        self.readers = HandlerPool(READ_THREADS, "sbnet-read")

    def context(self, request: Request) -> Context:
        """Who is asking (sbnet.api.context), worked out once a request."""
        scope = request.scope
        ctx = scope.get(_CONTEXT)
        if ctx is None:
            # Starlette's Headers scans and decodes the whole list on every lookup; the
            # first of a repeated header wins, as there.
            headers = {k.decode("latin-1"): v.decode("latin-1")
                       for k, v in reversed(scope["headers"])}
            ctx = scope[_CONTEXT] = self.auth.context(headers)
        return ctx

    async def call(self, request: Request, fn: Callable[..., Any], *args: Any) -> Any:
        """Authenticate, then run the (blocking) handler in a thread, a reader's for GET
        (again if the database picked its transaction as a deadlock victim)."""
        ctx = self.context(request)
        pool = self.readers if request.method == "GET" else self.writers
        return await pool.run(self.store.retrying, fn, ctx, request, *args)

    def close(self) -> None:
        self.writers.close()
        self.readers.close()
        self.store.dispose()


_CONTEXT = "sbnet.context"   # where a request's Context is kept in its ASGI scope


class NeutronApp(FastAPI):
    """FastAPI with sbnet's lane (sbnet.api.lane) in front of its whole middleware stack,
    unless a middleware must see every request first (lane_outermost False: the lane is
    then added as the innermost middleware)."""

    lane_outermost = True

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        return Lane(stack, fastapi_app=self, outermost=True) if self.lane_outermost else stack


class StripJsonSuffix:
    """Older clients (neutronclient, the sdk's cloud layer) ask for /v2.0/networks.json."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith(".json") \
                and scope["path"] != "/openapi.json":
            scope = dict(scope, path=scope["path"][:-5], raw_path=scope["raw_path"][:-5]
                         if scope.get("raw_path", b"").endswith(b".json") else scope.get("raw_path"))
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses request bodies above LIMITS.body_bytes with 413, as Neutron's sizelimit
    middleware does: by Content-Length up front, or while a chunked body streams in."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        most = LIMITS.body_bytes
        length = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > most:
            await _too_large(scope, receive, send, most)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > most:
                raise _TooLarge()
            return message
        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(scope, receive, send, most)


class _TooLarge(Exception):
    pass


async def _too_large(scope: dict, receive: Any, send: Any, most: int) -> None:
    await _error(413, "HTTPRequestEntityTooLarge",
                 f"Request is too large: the body may be at most {most} bytes.")(scope, receive, send)


def _error(status: int, type_name: str, message: str) -> JSONResponse:
    return JSONResponse({"NeutronError": {"type": type_name, "message": message, "detail": ""}},
                        status_code=status)


def create_app(db_url: str = "sqlite:///sbnet.db", *, store: Store | None = None,
               token_validator: TokenValidator | None = None, token_file: str | None = None,
               require_token: bool = False, segments: SegmentConfig | None = None,
               host_profiles: dict | None = None, offload_report: Callable | None = None,
               keystone_config: str | None = None,
               quota_defaults: dict[str, int] | None = None) -> FastAPI:
    """Build the Neutron v2.0 API on the database at db_url (migrated on startup).

    host_profiles: host -> NIC profile (name or Profile) that vnic_type direct ports bind
    against; offload_report: a callable returning the embedded hosts' offload report,
    served (admin only) at GET /v2.0/sbnet/offload; keystone_config: a file whose
    [keystone_authtoken] section puts keystonemiddleware's auth_token in front of the API;
    quota_defaults: each project's limits where the admin set none (Neutron's by default)."""
    if token_file and token_validator is None:
        token_validator = StaticTokens.from_file(token_file)
    api = Api(store or Store(db_url), Authenticator(token_validator, require_token),
              segments or SegmentConfig(), Quotas(quota_defaults))
    app = NeutronApp(title="sbnet Neutron v2.0 API", version="2.0", default_response_class=FastJSON,
                  **NO_TELEMETRY, description=(
        f"Request bodies: at most {LIMITS.body_bytes} bytes (413 above), JSON nested at most "
        f"{LIMITS.depth} levels, at most {LIMITS.bulk} resources per bulk create; list and "
        "string attributes carry their caps as maxItems and maxLength."))
    app.state.api = api
    from sbnet.offload.binding import resolve_profiles
    api.host_profiles = resolve_profiles(host_profiles)
    api.offload_report = offload_report
    router = app.router
    for name in FAMILIES:
        mod = importlib.import_module(f"sbnet.api.{name}")
        for cls in getattr(mod, "HOOKS", ()):
            api.hooks[cls.spec.name] = cls(api)
        if hasattr(mod, "extra_routes"):
            mod.extra_routes(router, api)
    for hooks in api.hooks.values():
        crud.register(router, api, hooks)

    @app.exception_handler(NeutronError)
    async def _neutron(_req: Request, exc: NeutronError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, HTTP_TYPES.get(exc.status_code, "HTTPError"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "HTTPBadRequest", f"Invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def _crash(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, "HTTPInternalServerError",
                      "Request Failed: internal server error while processing your request.")

    if keystone_config:   # Keystone's middleware sees every request before the lane
        app.lane_outermost = False
        app.add_middleware(Lane, fastapi_app=app)   # innermost: after the body limit and auth
    app.add_middleware(StripJsonSuffix)
    if keystone_config:
        from sbnet.api.keystone import KeystoneAuth
        app.add_middleware(KeystoneAuth, config_file=keystone_config)
    app.add_middleware(BodyLimit)

    @app.on_event("shutdown")
    async def _close() -> None:
        api.close()

    return app
