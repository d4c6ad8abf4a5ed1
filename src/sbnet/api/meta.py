"""Discovery and feed endpoints: version document, resource index, extensions, change feed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from sbnet.api.context import Context
from sbnet.model.errors import BadRequest, Forbidden, NotFound
from sbnet.model.resources import ALL

# (alias, name, description): what this server implements, so clients may ask before using it.
EXTENSIONS = (
    ("address-scope", "Address scope", "Address scopes extension."),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("binding-extended", "Port Bindings Extended", "Expose port bindings of a virtual port to external application"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode", "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway"),
    ("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    ("extraroute-atomic", "Atomically add/remove extra routes", "Edit extra routes of a router on server side by atomically adding/removing extra routes"),
    ("extra_dhcp_opt", "Neutron Extra DHCP options", "Extra options configuration for DHCP. For example PXE boot options to DHCP clients can be specified (e.g. tftp-server, server-ip-address, bootfile-name)"),
    ("fields", "Fields", "Support fields query parameter"),
    ("flow_classifier", "Flow Classifier", "Flow Classifier Extension."),
    ("sfc", "Port Chain", "Service Function Chains Extension."),
    ("service-type", "Neutron Service Type Management", "API for retrieving service providers for Neutron advanced services"),
    ("ip-substring-filtering", "IP address substring filtering", "Provides IP address substring filtering when listing ports"),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("net-mtu-writable", "Network MTU (writable)", "Provides a writable MTU attribute for a network resource."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support for network."),
    ("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    ("port-security", "Port Security", "Provides port security"),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    ("qos", "Quality of Service", "The Quality of Service extension."),
    ("qos-bw-limit-direction", "Direction for QoS bandwidth limit rule", "Allow to configure QoS bandwidth limit rule with specific direction: ingress or egress"),
    ("qos-bw-minimum-ingress", "Ingress direction for QoS minimum bandwidth rule", "Allow to configure QoS minumum bandwidth rule with ingress direction."),
    ("qos-default", "QoS default policy", "Expose the QoS default policy per project"),
    ("qos-rule-type-details", "Details of QoS rule types", "Expose details about QoS rule types supported by loaded backend drivers"),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
    ("rbac-policies", "RBAC Policies", "Allows creation and modification of policies that control tenant access to resources."),
    ("revision-if-match", "If-Match constraints based on revision_number", "Extension indicating that If-Match based on revision_number is supported."),
    ("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway."),
    ("security-group", "security-group", "The security groups extension."),
    ("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
    ("subnet_allocation", "Subnet Allocation", "Enables allocation of subnets from a subnet pool"),
    ("default-subnetpools", "Default Subnetpools", "Provides ability to mark and use a subnetpool as the default."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display the revision number of neutron resources."),
    ("standard-attr-tag", "Tag support for resources with standard attribute: subnet, trunk, network_segment_range, router, network, policy, subnetpool, port, security_group, floatingip", "Enables to set tag on resources with standard attribute."),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
    ("stateful-security-group", "Stateful security group", "Indicates if the security group is stateful or not"),
    ("tag-creation", "Tag support on create", "Enables to set tag on resources during creation"),
    ("trunk", "Trunk Extension", "Provides support for trunk ports"),
    ("trunk-details", "Trunk port details", "Expose trunk port details"),
)


def _ext(alias: str, name: str, desc: str) -> dict:
    return {"alias": alias, "name": name, "description": desc, "updated": "2013-02-03T10:00:00-00:00",
            "links": []}


RULE_TYPES = {
    "bandwidth_limit": ["max_kbps", "max_burst_kbps", "direction"],
    "dscp_marking": ["dscp_mark"],
    "minimum_bandwidth": ["min_kbps", "direction"],
}


# service-type: which provider implements each service this server offers (all of them sbnet).
SERVICE_TYPES = ("L3_ROUTER_NAT", "QOS", "TRUNK", "FLOW_CLASSIFIER", "SFC")

MAX_WAIT = 60  # seconds a long poll of the change feed may hold a worker thread


def extra_routes(router: APIRouter, api: Any) -> None:
    @router.get("/", include_in_schema=True)
    async def versions(request: Request) -> dict:
        base = str(request.base_url).rstrip("/")
        return {"versions": [{"id": "v2.0", "status": "CURRENT",
                              "links": [{"href": f"{base}/v2.0/", "rel": "self"}]}]}

    @router.get("/v2.0")
    @router.get("/v2.0/")
    async def index(request: Request) -> dict:
        base = str(request.base_url).rstrip("/")
        return {"resources": [{"name": s.name, "collection": s.collection, "links": [
            {"href": f"{base}/v2.0/{s.path}", "rel": "self"}]} for s in ALL if not s.parent]}

    @router.get("/v2.0/extensions")
    async def extensions(request: Request) -> dict:
        api.context(request)
        return {"extensions": [_ext(*e) for e in EXTENSIONS]}

    @router.get("/v2.0/extensions/{alias}")
    async def extension(request: Request, alias: str) -> dict:
        api.context(request)
        for e in EXTENSIONS:
            if e[0] == alias:
                return {"extension": _ext(*e)}
        raise NotFound(f"Extension with alias {alias} does not exist", type_name="ExtensionNotFound")

    @router.get("/v2.0/service-providers")
    async def service_providers(request: Request) -> dict:
        api.context(request)
        wanted = request.query_params.getlist("service_type")
        return {"service_providers": [{"service_type": t, "name": "sbnet", "default": True}
                                      for t in SERVICE_TYPES if not wanted or t in wanted]}

    @router.get("/v2.0/qos/rule-types")
    async def rule_types(request: Request) -> dict:
        api.context(request)
        return {"rule_types": [{"type": t} for t in RULE_TYPES]}

    @router.get("/v2.0/qos/rule-types/{rule_type}")
    async def rule_type(request: Request, rule_type: str) -> dict:
        api.context(request)
        if rule_type not in RULE_TYPES:
            raise NotFound(f"QoS rule type {rule_type} could not be found.",
                           type_name="QosRuleTypeNotFound")
        params = [{"parameter_name": p, "parameter_type": "range" if "kbps" in p else "choices",
                   "parameter_values": {"start": 0, "end": 2**31 - 1} if "kbps" in p else
                   (["egress", "ingress"] if p == "direction" else
                    [0, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 46, 48, 56])}
                  for p in RULE_TYPES[rule_type]]
        return {"rule_type": {"type": rule_type, "drivers": [
            {"name": "sbnet", "supported_parameters": params}]}}

    def do_changes(ctx: Context, request: Request) -> tuple[int, int, float]:
        if not ctx.is_admin:
            raise Forbidden("rule:get_changes is disallowed by policy")
        try:
            since = int(request.query_params.get("since", "0"))
            limit = int(request.query_params.get("limit", "0"))
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            raise BadRequest("since, limit and wait must be numbers") from None
        if not (0 <= since < 2**63 and 0 <= limit < 2**31) or not 0 <= wait <= MAX_WAIT:
            raise BadRequest(f"since must be 0 to 2^63-1, limit 0 to 2^31-1, wait 0 to {MAX_WAIT}")
        return since, limit, wait

    def fetch_changes(since: int, limit: int) -> tuple[list[dict], int]:
        return api.store.changes_since(since, limit or None), api.store.current_revision()

    @router.get("/v2.0/sbnet/changes")
    async def changes(request: Request) -> Any:
        """The change feed for host agents: changes after `since`, oldest first (admin only);
        `wait=S` holds the request up to S seconds until there is one."""
        since, limit, wait = await api.call(request, do_changes)
        deadline = time.monotonic() + wait
        while True:
            # Sleep on the event loop between polls so waiting agents hold no worker thread.
            rows, revision = await run_in_threadpool(fetch_changes, since, limit)
            if rows or time.monotonic() >= deadline:
                return {"changes": rows, "revision": revision}
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
