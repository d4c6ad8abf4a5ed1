"""The API's hot path: resource requests found by an index of the routes and answered by orjson."""

from __future__ import annotations

import json
from typing import Any, Callable

import orjson
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sbnet.model.attrs import LIMITS

# What marks an endpoint the lane may call directly: it takes the Request alone (its path
# parameters in request.path_params) and returns a Response or plain JSON data.
_DIRECT = "_sbnet_direct"


def direct(endpoint: Callable) -> Callable:
    """Mark an endpoint as one the lane may call directly (see _DIRECT)."""
    setattr(endpoint, _DIRECT, True)
    return endpoint


class FastJSON(JSONResponse):
    """JSONResponse rendered by orjson (the same compact UTF-8 bytes for plain data, several
    times faster); what orjson does not take (sets, big integers...) as FastAPI would."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:
            return super().render(jsonable_encoder(content))


class _Node:
    __slots__ = ("static", "param", "routes")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.routes: list[tuple[int, Route]] = []


class RouteIndex:
    """The app's routes as a tree of path segments: the route a request goes to, as the
    router's scan in order would find it (the first whose path and method match), in a
    few dictionary lookups instead of a regular expression per route (there are 265)."""

    def __init__(self, routes: list[Any]) -> None:
        self.root: _Node | None = _Node()
        for i, route in enumerate(routes):
            if type(route).__name__ not in ("Route", "APIRoute") or not isinstance(route, Route):
                self.root = None     # a mount or a websocket: the router's own scan decides
                return
            node = self.root
            for seg in route.path.split("/"):
                if seg.startswith("{") and seg.endswith("}") and seg.count("{") == 1 \
                        and ":" not in seg:
                    node.param = node.param or _Node()
                    node = node.param
                elif "{" in seg:      # a parameter inside a segment: not indexed
                    self.root = None
                    return
                else:
                    node = node.static.setdefault(seg, _Node())
            node.routes.append((i, route))

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route for this request and its path parameters; None when none matches
        both (the router answers 404, 405 or a slash redirect)."""
        if self.root is None:
            return None
        segs = path.split("/")
        best: tuple[int, Route, list[str]] | None = None
        stack: list[tuple[_Node, int, list[str]]] = [(self.root, 0, [])]
        while stack:
            node, depth, values = stack.pop()
            if depth == len(segs):
                for i, route in node.routes:
                    if route.methods and method in route.methods and (best is None or i < best[0]):
                        best = (i, route, values)
                continue
            seg = segs[depth]
            nxt = node.static.get(seg)
            if nxt is not None:
                stack.append((nxt, depth + 1, values))
            if node.param is not None and seg:
                stack.append((node.param, depth + 1, [*values, seg]))
        if best is None:
            return None
        _, route, values = best
        names = [s[1:-1] for s in route.path.split("/") if s.startswith("{")]
        return route, dict(zip(names, values))


class Lane:
    """ASGI middleware in front of FastAPI's router: a request whose route is a direct
    endpoint (sbnet.api.crud's) is answered here, with the app's own exception handlers;
    any other goes on to the router (unchanged behaviour, at the framework's cost).

    outermost: the lane sits in front of the whole middleware stack (where no middleware
    must see a request first, e.g. Keystone's): it then takes only what those layers
    would pass unchanged (a body of a stated length within LIMITS.body_bytes, no ".json"
    suffix), and answers an unexpected error with the app's 500 handler as Starlette's
    ServerErrorMiddleware would.  FastAPI's and Starlette's layers cost a tenth of the
    event loop's time a port create."""

    def __init__(self, app: Any, fastapi_app: Any, outermost: bool = False) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.outermost = outermost
        self.index: RouteIndex | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD" or scope.get("root_path") \
                or (self.outermost and not self._passed_unchanged(scope)):
            await self.app(scope, receive, send)
            return
        if self.index is None:
            self.index = RouteIndex(self.fastapi_app.router.routes)
        found = self.index.find(scope["method"], scope["path"])
        if found is None or not getattr(found[0].endpoint, _DIRECT, False):
            await self.app(scope, receive, send)
            return
        route, params = found
        scope["path_params"] = params
        scope["endpoint"] = route.endpoint
        scope["route"] = route
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
            if not isinstance(response, Response):
                response = FastJSON(response, status_code=getattr(route, "status_code", None) or 200)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                if self.outermost:
                    crash = await self.fastapi_app.exception_handlers[Exception](request, exc)
                    await crash(scope, receive, send)
                raise           # the app's 500 handler, in ServerErrorMiddleware; logged
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _passed_unchanged(self, scope: dict) -> bool:
        if scope["path"].endswith(".json"):
            return False
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return False
        return length is None or (length.isdigit() and int(length) <= LIMITS.body_bytes)

    def _handler(self, exc: Exception) -> Callable | None:
        handlers = self.fastapi_app.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None


def loads(raw: bytes) -> Any:
    """A request body's JSON, or ValueError/UnicodeError/RecursionError.  orjson first; what
    it refuses, and anything holding a number (orjson reads integers beyond 64 bits as floats),
    by the json module, so the outcome is always json's."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    else:
        if not _has_number(payload, float):
            return payload
    return _json_loads(raw)


def _has_number(value: Any, kind: type) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, kind):
            return True
    return False


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _json_loads(raw: bytes) -> Any:
    payload = json.loads(raw, parse_constant=_no_constant)
    # Lone surrogates parse but cannot be stored or sent back as UTF-8: refuse them here.
    json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return payload
