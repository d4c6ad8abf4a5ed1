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

    # Keystone's implied roles: admin implies member, member implies reader.  A request
    # naming no role at all (noauth headers without X-Roles) acts as a member of its project.

    @property
    def is_member(self) -> bool:
        return self.is_admin or "member" in self.roles or not self.roles

    @property
    def is_reader(self) -> bool:
        return self.is_member or "reader" in self.roles

    @property
    def is_service(self) -> bool:
        """Neutron's service role (agents, advanced services): may set what ports need."""
        return "service" in self.roles


class TokenValidator(Protocol):
    """Maps a token to a context, or None when the token is not valid (a Keystone one can plug in)."""

    def validate(self, token: str) -> Context | None: ...


class StaticTokens:
    """Tokens from a YAML/JSON file: {token: {project_id: ..., roles: [...], user_id: ...}}."""

    def __init__(self, mapping: Mapping[str, Mapping]) -> None:
        if not isinstance(mapping, Mapping):
            raise ValueError("a token file maps each token to {project_id, roles, user_id}")
        self._tokens = {}
        for tok, v in mapping.items():
            if not isinstance(v, Mapping) or not isinstance(v.get("project_id"), (str, int)):
                raise ValueError(f"token {str(tok)[:8]}...: needs a project_id")
            roles = v.get("roles", ())
            if isinstance(roles, str):          # "roles: admin" means one role, not five
                roles = [r.strip() for r in roles.split(",") if r.strip()]
            if not isinstance(roles, (list, tuple)) or not all(isinstance(r, str) for r in roles):
                raise ValueError(f"token {str(tok)[:8]}...: roles must be a list of names")
            self._tokens[str(tok)] = Context(str(v["project_id"]), tuple(roles),
                                             str(v.get("user_id", "")))

    @classmethod
    def from_file(cls, path: str | Path) -> "StaticTokens":
        """Tokens from a file; a file that cannot be read or parsed is a ValueError naming it."""
        try:
            text = Path(path).read_text()
            data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
            return cls(data or {})
        except (OSError, UnicodeError, ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def validate(self, token: str) -> Context | None:
        return self._tokens.get(token)


class Authenticator:
    """Turns request headers into a Context.

    A token wins; without one, X-Project-Id and X-Roles are trusted (Neutron's noauth strategy),
    and a request with neither acts as an admin of DEFAULT_PROJECT so `--os-auth-type none` works.
    With require_token, only valid tokens are accepted.  With a token validator but without
    require_token, headers are still trusted, but a request with no credentials at all is
    refused (it must not become an admin because a token was left out).
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
            if self.validator is not None:
                raise Unauthorized()
            return Context(DEFAULT_PROJECT, roles or ("admin",))
        return Context(project, roles, headers.get("x-user-id", ""))
