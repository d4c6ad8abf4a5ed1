"""GET /v2.0/sbnet/offload: the embedded hosts' offload report (admin only), when the process has hosts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from sbnet.model.errors import Forbidden, NotFound


def extra_routes(router: APIRouter, api) -> None:
    @router.get("/v2.0/sbnet/offload")
    async def offload(request: Request) -> Any:
        """Per port, security-group rule and network: packets and megaflows on the NIC and in
        software, with the reasons (sbnet.offload.report)."""
        return await api.call(request, _report, api)


def _report(ctx, _request, api) -> dict:
    if not ctx.is_admin:
        raise Forbidden("rule:get_offload is disallowed by policy")
    provider = getattr(api, "offload_report", None)
    if provider is None:
        raise NotFound("This process has no embedded hosts: no offload report.")
    return {"offload": provider()}
