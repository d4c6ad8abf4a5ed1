"""Service function chaining as networking-sfc defines it: pairs, groups, classifiers, chains."""

from __future__ import annotations

import ipaddress

from sbnet.api.context import Context
from sbnet.api.crud import Hooks, fetch
from sbnet.model import attrs as a
from sbnet.model import secgroups
from sbnet.model.errors import BadRequest, Conflict
from sbnet.model.resources import FLOW_CLASSIFIER, PORT, PORT_CHAIN, PORT_PAIR, PORT_PAIR_GROUP
from sbnet.store import Tx


def _in_use(label: str, ident: str) -> Conflict:
    return Conflict(f"{label} {ident} in use.", type_name=f"{label.replace(' ', '')}InUse")


def _params(given: dict, defaults: dict, attr: str) -> dict:
    unknown = set(given) - set(defaults)
    if unknown:
        raise a.fail(attr, f"Unrecognized parameter(s) {sorted(unknown)}")
    return {**defaults, **given}


def _users(tx: Tx, typ: str, field: str, ident: str, skip: str | None = None) -> list[dict]:
    return [x for x in tx.list(typ) if ident in x[field] and x["id"] != skip]


def _next_id(tx: Tx, typ: str, field: str) -> int:
    return max([x[field] for x in tx.list(typ)] + [0]) + 1


class _Referenced(Hooks):
    """A resource that others list by id; deleting it while listed is 409 <Label>InUse."""

    used_by: tuple[str, str] | None = None  # (type, attribute) that holds references to us

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        if self.used_by and _users(tx, *self.used_by, obj["id"]):
            raise _in_use(self.spec.label, obj["id"])
        tx.delete(self.spec.name, obj)


class PortPairHooks(_Referenced):
    spec = PORT_PAIR
    used_by = ("port_pair_group", "port_pairs")

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        for side in ("ingress", "egress"):
            fetch(tx, ctx, PORT, body[side], write=True)
        params = _params(body["service_function_parameters"], {"correlation": None, "weight": 1},
                         "service_function_parameters")
        if params["correlation"] not in (None, "mpls", "nsh"):
            raise a.fail("service_function_parameters", "correlation must be mpls, nsh or null")
        try:
            params["weight"] = a.to_int(0, 2**31 - 1)(params["weight"])
        except a.Invalid as exc:
            raise a.fail("service_function_parameters", str(exc)) from None
        body["service_function_parameters"] = params
        return super().create(tx, ctx, body)


class PortPairGroupHooks(_Referenced):
    spec = PORT_PAIR_GROUP
    used_by = ("port_chain", "port_pair_groups")

    def _pairs(self, tx: Tx, ctx: Context, body: dict) -> None:
        for pid in body["port_pairs"]:
            fetch(tx, ctx, PORT_PAIR, pid)
            if _users(tx, "port_pair_group", "port_pairs", pid, skip=body["id"]):
                raise _in_use("Port Pair", pid)

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        self._pairs(tx, ctx, body)
        body["port_pair_group_parameters"] = _params(
            body["port_pair_group_parameters"],
            {"lb_fields": [], "ppg_n_tuple_mapping": {"ingress_n_tuple": {}, "egress_n_tuple": {}}},
            "port_pair_group_parameters")
        body["group_id"] = _next_id(tx, "port_pair_group", "group_id")
        return super().create(tx, ctx, body)

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        self._pairs(tx, ctx, {**old, **changes})
        return super().update(tx, ctx, old, changes)


class FlowClassifierHooks(_Referenced):
    spec = FLOW_CLASSIFIER
    used_by = ("port_chain", "flow_classifiers")

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        for side in ("logical_source_port", "logical_destination_port"):
            if body.get(side):
                fetch(tx, ctx, PORT, body[side])
        if body.get("protocol") == "any":
            body["protocol"] = None
        secgroups.protocol_number(body.get("protocol"))
        for end in ("source", "destination"):
            lo, hi = body.get(f"{end}_port_range_min"), body.get(f"{end}_port_range_max")
            if lo is not None and hi is not None and lo > hi:
                raise BadRequest(f"{end}_port_range_min must be <= {end}_port_range_max",
                                 type_name="FlowClassifierInvalidPortRange")
            prefix = body.get(f"{end}_ip_prefix")
            if prefix and f"IPv{ipaddress.ip_network(prefix).version}" != body["ethertype"]:
                raise BadRequest(f"{end}_ip_prefix {prefix} does not match ethertype "
                                 f"{body['ethertype']}", type_name="FlowClassifierIpPrefixConflict")
        return super().create(tx, ctx, body)


class PortChainHooks(Hooks):
    spec = PORT_CHAIN

    def _members(self, tx: Tx, ctx: Context, body: dict) -> None:
        if not body["port_pair_groups"]:
            raise a.fail("port_pair_groups", "at least one port pair group is required")
        for spec, field in ((PORT_PAIR_GROUP, "port_pair_groups"), (FLOW_CLASSIFIER, "flow_classifiers")):
            for ident in body[field]:
                fetch(tx, ctx, spec, ident)
                if _users(tx, "port_chain", field, ident, skip=body["id"]):
                    raise _in_use(spec.label, ident)

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        self._members(tx, ctx, body)
        body["chain_parameters"] = _params(body["chain_parameters"],
                                           {"correlation": "mpls", "symmetric": False},
                                           "chain_parameters")
        if not body["chain_id"]:
            body["chain_id"] = _next_id(tx, "port_chain", "chain_id")
        elif any(c["chain_id"] == body["chain_id"] for c in tx.list("port_chain")):
            raise Conflict(f"Chain id {body['chain_id']} in use.", type_name="PortChainChainIdInUse")
        return super().create(tx, ctx, body)

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        self._members(tx, ctx, {**old, **changes})
        return super().update(tx, ctx, old, changes)


HOOKS: tuple[type[Hooks], ...] = (PortPairHooks, PortPairGroupHooks, FlowClassifierHooks,
                                  PortChainHooks)
