"""Who is asking: the request context built from a token or from X-Project-Id / X-Roles headers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

import yaml

from sbnet.model.errors import BadRequest, Unauthorized

DEFAULT_PROJECT = "admin"  # project of unauthenticated requests in noauth mode


@dataclass(frozen=True)
class Context:
    project_id: str
    roles: tuple[str, ...] = ()
    user_id: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


class TokenValidator(Protocol):
    """Maps a token to a context, or None when the token is not valid (a Keystone one can plug in)."""

    def validate(self, token: str) -> Context | None: ...


class StaticTokens:
    """Tokens from a YAML/JSON file: {token: {project_id: ..., roles: [...], user_id: ...}}."""

    def __init__(self, mapping: Mapping[str, Mapping]) -> None:
        self._tokens = {tok: Context(str(v["project_id"]), tuple(v.get("roles", ())),
                                     str(v.get("user_id", ""))) for tok, v in mapping.items()}

    @classmethod
    def from_file(cls, path: str | Path) -> "StaticTokens":
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls(data or {})

    def validate(self, token: str) -> Context | None:
        return self._tokens.get(token)


class Authenticator:
    """Turns request headers into a Context.

    A token wins; without one, X-Project-Id and X-Roles are trusted (Neutron's noauth strategy),
    and a request with neither acts as an admin of DEFAULT_PROJECT so `--os-auth-type none` works.
    With require_token, only valid tokens are accepted.
    """

    def __init__(self, validator: TokenValidator | None = None, require_token: bool = False) -> None:
        self.validator = validator
        self.require_token = require_token

    def context(self, headers: Mapping[str, str]) -> Context:
        token = headers.get("x-auth-token")
        if token and self.validator is not None:
            ctx = self.validator.validate(token)
            if ctx is None:
                raise Unauthorized("Authentication required: invalid token")
            return ctx
        if self.require_token:
            raise Unauthorized()
        project = headers.get("x-project-id") or headers.get("x-tenant-id")
        if project is not None and (len(project) > 255 or not project.isprintable()):
            raise BadRequest("X-Project-Id must be at most 255 printable characters")
        roles = tuple(r.strip() for r in headers.get("x-roles", "").split(",") if r.strip())
        if project is None:
            return Context(DEFAULT_PROJECT, roles or ("admin",))
        return Context(project, roles, headers.get("x-user-id", ""))
