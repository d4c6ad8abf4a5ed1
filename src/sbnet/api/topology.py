"""YAML topology files: projects' networks, groups, ports, routers, made through the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sbnet.api.local import ApiError, LocalApi

# What each item may say; anything else is a mistake in the file, not something to ignore.
KEYS = {
    "project": {"networks", "security_groups", "ports", "routers", "floating_ips",
                "qos_policies"},
    "network": {"name", "type", "physnet", "segmentation_id", "external", "shared",
                "port_security", "mtu", "qos_policy", "subnets"},
    "subnet": {"name", "cidr", "gateway", "enable_dhcp", "allocation_pools", "dns_nameservers",
               "host_routes", "ipv6_address_mode", "ipv6_ra_mode"},
    "security_group": {"name", "description", "stateful", "rules"},
    "rule": {"direction", "protocol", "ethertype", "port", "port_range_min", "port_range_max",
             "remote_ip_prefix", "remote_group", "description"},
    "port": {"name", "network", "host", "security_groups", "fixed_ip", "fixed_ips",
             "port_security", "allowed_address_pairs", "mac_address", "qos_policy",
             "device_owner"},
    "router": {"name", "external_gateway", "enable_snat", "interfaces", "routes"},
    "floating_ip": {"name", "network", "port", "address", "fixed_ip"},
    "qos_policy": {"name", "shared", "description", "rules"},
    "qos_rule": {"type", "max_kbps", "max_burst_kbps", "direction", "dscp_mark", "min_kbps"},
}
REQUIRED = {
    "network": {"name"}, "subnet": {"name", "cidr"}, "security_group": {"name"},
    "rule": {"direction"}, "port": {"name", "network"}, "router": {"name"},
    "floating_ip": {"network"}, "qos_policy": {"name"}, "qos_rule": {"type"},
}
QOS_RULE_TYPES = ("bandwidth_limit", "dscp_marking", "minimum_bandwidth")


class TopologyError(ValueError):
    """A file the loader refused: where (line) and why."""

    def __init__(self, line: int | None, reason: str, source: str = "") -> None:
        self.line = line
        self.reason = reason
        self.source = source
        where = f"{source}:" if source else ""
        super().__init__(f"{where}{line}: {reason}" if line else f"{where} {reason}".strip())


class Item(dict):
    """A YAML mapping that remembers its line (1-based) and the line of each key."""

    line: int = 0
    key_lines: dict

    def key_line(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Item:
    out = Item()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for k, v in node.value:
        key = loader.construct_object(k, deep=True)
        if key in out:
            raise TopologyError(k.start_mark.line + 1, f"duplicate key {key!r}")
        out[key] = loader.construct_object(v, deep=True)
        out.key_lines[key] = k.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


@dataclass
class Loaded:
    """What a file made, by kind and name (each body as the API returned it)."""

    projects: list[str] = field(default_factory=list)
    networks: dict[str, dict] = field(default_factory=dict)
    subnets: dict[str, dict] = field(default_factory=dict)
    security_groups: dict[tuple[str, str], dict] = field(default_factory=dict)
    ports: dict[str, dict] = field(default_factory=dict)
    routers: dict[str, dict] = field(default_factory=dict)
    floating_ips: dict[str, dict] = field(default_factory=dict)
    qos_policies: dict[str, dict] = field(default_factory=dict)


def parse(text: str, source: str = "") -> Item:
    """The document as Items (line-aware dicts), with every key checked; no API calls."""
    try:
        doc = yaml.load(text, Loader=_Loader)
    except TopologyError as exc:
        raise TopologyError(exc.line, exc.reason, source) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise TopologyError(line, f"not valid YAML: {exc.problem}", source) from None
    if not isinstance(doc, Item) or set(doc) - {"projects"} or not isinstance(
            doc.get("projects"), Item):
        raise TopologyError(getattr(doc, "line", 1), "the file must be a mapping with one key, "
                            "'projects' (project name -> its resources)", source)
    try:
        for name, project in doc["projects"].items():
            line = doc["projects"].key_line(name)
            _check(project, "project", line)
            for kind in ("networks", "security_groups", "ports", "routers", "floating_ips",
                         "qos_policies"):
                item_kind = kind[:-1] if kind != "qos_policies" else "qos_policy"
                for item in _list(project, kind):
                    _check(item, item_kind, project.key_line(kind))
                    sub = {"network": ("subnets", "subnet"), "security_group": ("rules", "rule"),
                           "qos_policy": ("rules", "qos_rule")}.get(item_kind)
                    if sub:
                        for child in _list(item, sub[0]):
                            _check(child, sub[1], item.key_line(sub[0]))
    except TopologyError as exc:
        raise TopologyError(exc.line, exc.reason, source) from None
    return doc


def _list(item: Item, key: str) -> list:
    value = item.get(key) or []
    if not isinstance(value, list):
        raise TopologyError(item.key_line(key), f"{key} must be a list")
    return value


def _check(item: Any, kind: str, line: int) -> None:
    if item is None and kind == "project":
        return
    if not isinstance(item, Item):
        raise TopologyError(line, f"a {kind.replace('_', ' ')} must be a mapping, not {item!r}")
    unknown = sorted(set(item) - KEYS[kind], key=str)
    if unknown:
        raise TopologyError(item.key_line(unknown[0]), f"unknown key {unknown[0]!r} in a "
                            f"{kind.replace('_', ' ')} (known: {', '.join(sorted(KEYS[kind]))})")
    missing = sorted(REQUIRED.get(kind, set()) - set(item))
    if missing:
        raise TopologyError(item.line, f"a {kind.replace('_', ' ')} needs {missing[0]!r}")


def load_file(api: LocalApi, path: str | Path) -> Loaded:
    path = Path(path)
    return load(api, path.read_text(), str(path))


def load(api: LocalApi, text: str, source: str = "") -> Loaded:
    """Create everything the file describes through the API; names become ids.  Kinds go in
    dependency order across projects (an external network of one project can be another's
    router gateway); the first refusal stops the load with the line of its item."""
    doc = parse(text, source)
    builder = _Builder(api, doc["projects"])
    try:
        builder.run()
    except TopologyError as exc:
        raise TopologyError(exc.line, exc.reason, source) from None
    return builder.out


class _Builder:
    def __init__(self, api: LocalApi, projects: Item) -> None:
        self.api = api
        self.projects = {name: p or Item() for name, p in projects.items()}
        self.out = Loaded(projects=list(self.projects))
        self.network_project: dict[str, str] = {}

    def items(self, kind: str):
        for pname, project in self.projects.items():
            for item in project.get(kind) or ():
                yield pname, item

    def call(self, item: Item, what: str, fn, *args, **kw) -> dict:
        try:
            return fn(*args, **kw)
        except ApiError as exc:
            err = exc.body.get("NeutronError", {}) if isinstance(exc.body, dict) else {}
            msg = err.get("message") if isinstance(err, dict) else None
            raise TopologyError(item.line, f"{what}: the API refused it ({exc.status}): "
                                f"{msg or exc.body}") from None

    def run(self) -> None:
        for pname, item in self.items("qos_policies"):
            self.qos_policy(pname, item)
        groups = list(self.items("security_groups"))
        for pname, item in groups:
            self.security_group(pname, item)
        for pname, item in groups:
            for rule in item.get("rules") or ():
                self.sg_rule(pname, item, rule)
        for pname, item in self.items("networks"):
            self.network(pname, item)
        for pname, item in self.items("ports"):
            self.port(pname, item)
        for pname, item in self.items("routers"):
            self.router(pname, item)
        for pname, item in self.items("floating_ips"):
            self.floating_ip(pname, item)

    # --- name resolution ---------------------------------------------------------------

    def ref(self, table: dict, name: Any, kind: str, item: Item, key: str, scope: str = "") -> dict:
        if not isinstance(name, str) or name not in table:
            known = ", ".join(sorted(map(str, table))) or "none"
            raise TopologyError(item.key_line(key), f"unknown {kind} {name!r}{scope} "
                                f"(known: {known})")
        return table[name]

    def group(self, project: str, name: Any, item: Item, key: str) -> dict:
        if (project, name) not in self.out.security_groups and name == "default":
            self.out.security_groups[(project, name)] = self.default_group(project)
        known = {n: g for (p, n), g in self.out.security_groups.items() if p == project}
        return self.ref(known, name, "security group", item, key, f" in project {project}")

    def default_group(self, project: str) -> dict:
        groups = self.api.request("GET", "security-groups?name=default", project=project,
                                  admin=False)["security_groups"]
        return next(g for g in groups if g["project_id"] == project)

    def unique(self, table: dict, name: Any, kind: str, item: Item) -> None:
        if name in table:
            raise TopologyError(item.key_line("name"), f"{kind} {name!r} is defined twice")

    # --- resources -----------------------------------------------------------------------

    def qos_policy(self, project: str, item: Item) -> None:
        self.unique(self.out.qos_policies, item["name"], "QoS policy", item)
        attrs = {k: item[k] for k in ("name", "shared", "description") if k in item}
        pol = self.call(item, f"QoS policy {item['name']}", self.api.create, "qos/policies",
                        project=project, **attrs)
        for rule in item.get("rules") or ():
            kind = rule["type"]
            if kind not in QOS_RULE_TYPES:
                raise TopologyError(rule.key_line("type"), f"unknown QoS rule type {kind!r} "
                                    f"(known: {', '.join(QOS_RULE_TYPES)})")
            body = {k: v for k, v in rule.items() if k != "type"}
            self.call(rule, f"QoS rule of {item['name']}", self.api.request, "POST",
                      f"qos/policies/{pol['id']}/{kind}_rules", {f"{kind}_rule": body},
                      project=project)
        self.out.qos_policies[item["name"]] = pol

    def security_group(self, project: str, item: Item) -> None:
        name = item["name"]
        self.unique({n: 1 for (p, n) in self.out.security_groups if p == project}, name,
                    "security group", item)
        if name == "default":
            # The project's default group exists already (the API makes it): add to it.
            self.out.security_groups[(project, name)] = self.default_group(project)
            return
        attrs = {k: item[k] for k in ("name", "description", "stateful") if k in item}
        self.out.security_groups[(project, name)] = self.call(
            item, f"security group {name}", self.api.create, "security-groups",
            project=project, **attrs)

    def sg_rule(self, project: str, group_item: Item, rule: Item) -> None:
        group = self.out.security_groups[(project, group_item["name"])]
        body: dict = {"security_group_id": group["id"]}
        for k in ("direction", "protocol", "ethertype", "port_range_min", "port_range_max",
                  "remote_ip_prefix", "description"):
            if k in rule:
                body[k] = rule[k]
        if "port" in rule:
            lo, _, hi = str(rule["port"]).partition("-")
            try:
                body["port_range_min"], body["port_range_max"] = int(lo), int(hi or lo)
            except ValueError:
                raise TopologyError(rule.key_line("port"), f"port must be N or N-M, not "
                                    f"{rule['port']!r}") from None
        if "remote_group" in rule:
            body["remote_group_id"] = self.group(project, rule["remote_group"], rule,
                                                 "remote_group")["id"]
        self.call(rule, f"rule of security group {group_item['name']}", self.api.create,
                  "security-group-rules", project=project, **body)

    def network(self, project: str, item: Item) -> None:
        name = item["name"]
        self.unique(self.out.networks, name, "network", item)
        attrs: dict = {"name": name}
        for key, api_key in (("type", "provider:network_type"),
                             ("physnet", "provider:physical_network"),
                             ("segmentation_id", "provider:segmentation_id"),
                             ("external", "router:external"), ("shared", "shared"),
                             ("port_security", "port_security_enabled"), ("mtu", "mtu")):
            if key in item:
                attrs[api_key] = item[key]
        if "qos_policy" in item:
            attrs["qos_policy_id"] = self.ref(self.out.qos_policies, item["qos_policy"],
                                              "QoS policy", item, "qos_policy")["id"]
        net = self.call(item, f"network {name}", self.api.create, "networks", project=project,
                        **attrs)
        self.out.networks[name] = net
        self.network_project[name] = project
        for sub in item.get("subnets") or ():
            self.subnet(project, net, sub)

    def subnet(self, project: str, net: dict, item: Item) -> None:
        name = item["name"]
        self.unique(self.out.subnets, name, "subnet", item)
        attrs = {k: item[k] for k in KEYS["subnet"] - {"gateway"} if k in item}
        attrs["ip_version"] = 6 if ":" in str(item["cidr"]) else 4
        if "gateway" in item:
            attrs["gateway_ip"] = item["gateway"]
        self.out.subnets[name] = self.call(item, f"subnet {name}", self.api.create, "subnets",
                                           project=project, network_id=net["id"], **attrs)

    def port(self, project: str, item: Item) -> None:
        name = item["name"]
        self.unique(self.out.ports, name, "port", item)
        net = self.ref(self.out.networks, item["network"], "network", item, "network")
        attrs: dict = {"name": name, "network_id": net["id"]}
        if "host" in item:
            attrs["binding:host_id"] = item["host"]
            attrs.setdefault("device_owner", "compute:nova")
        for key, api_key in (("port_security", "port_security_enabled"),
                             ("mac_address", "mac_address"), ("device_owner", "device_owner")):
            if key in item:
                attrs[api_key] = item[key]
        if "security_groups" in item:
            names = item["security_groups"] or []
            if not isinstance(names, list):
                raise TopologyError(item.key_line("security_groups"), "security_groups must be "
                                    "a list of group names")
            attrs["security_groups"] = [self.group(project, g, item, "security_groups")["id"]
                                        for g in names]
        ips = item.get("fixed_ips") or ([item["fixed_ip"]] if "fixed_ip" in item else None)
        if ips is not None:
            attrs["fixed_ips"] = [{"ip_address": ip} if isinstance(ip, str) else
                                  self.fixed_ip(ip, item) for ip in ips]
        if "allowed_address_pairs" in item:
            attrs["allowed_address_pairs"] = [{"ip_address": p} if isinstance(p, str) else dict(p)
                                              for p in item["allowed_address_pairs"] or ()]
        if "qos_policy" in item:
            attrs["qos_policy_id"] = self.ref(self.out.qos_policies, item["qos_policy"],
                                              "QoS policy", item, "qos_policy")["id"]
        self.out.ports[name] = self.call(item, f"port {name}", self.api.create, "ports",
                                         project=project, **attrs)

    def fixed_ip(self, spec: Any, item: Item) -> dict:
        """{subnet: name, ip: address} -> {subnet_id, ip_address}."""
        if not isinstance(spec, dict) or set(spec) - {"subnet", "ip"}:
            raise TopologyError(item.key_line("fixed_ips"), "a fixed IP is an address or "
                                "{subnet: NAME, ip: ADDRESS}")
        out = {}
        if "subnet" in spec:
            out["subnet_id"] = self.ref(self.out.subnets, spec["subnet"], "subnet", item,
                                        "fixed_ips")["id"]
        if "ip" in spec:
            out["ip_address"] = spec["ip"]
        return out

    def router(self, project: str, item: Item) -> None:
        name = item["name"]
        self.unique(self.out.routers, name, "router", item)
        attrs: dict = {"name": name}
        if "external_gateway" in item:
            ext = self.ref(self.out.networks, item["external_gateway"], "network", item,
                           "external_gateway")
            attrs["external_gateway_info"] = {"network_id": ext["id"]}
            if "enable_snat" in item:
                attrs["external_gateway_info"]["enable_snat"] = item["enable_snat"]
        router = self.call(item, f"router {name}", self.api.create, "routers", project=project,
                           **attrs)
        for sub in item.get("interfaces") or ():
            subnet = self.ref(self.out.subnets, sub, "subnet", item, "interfaces")
            self.call(item, f"router {name} interface on {sub}", self.api.request, "PUT",
                      f"routers/{router['id']}/add_router_interface",
                      {"subnet_id": subnet["id"]}, project=project)
        if item.get("routes"):
            self.call(item, f"router {name} routes", self.api.request, "PUT",
                      f"routers/{router['id']}/add_extraroutes",
                      {"router": {"routes": list(item["routes"])}}, project=project)
        self.out.routers[name] = self.api.request("GET", f"routers/{router['id']}")["router"]

    def floating_ip(self, project: str, item: Item) -> None:
        name = item.get("name") or item.get("port") or f"fip-{len(self.out.floating_ips) + 1}"
        self.unique(self.out.floating_ips, name, "floating IP", item)
        ext = self.ref(self.out.networks, item["network"], "network", item, "network")
        attrs: dict = {"floating_network_id": ext["id"]}
        if "port" in item:
            attrs["port_id"] = self.ref(self.out.ports, item["port"], "port", item, "port")["id"]
        if "address" in item:
            attrs["floating_ip_address"] = item["address"]
        if "fixed_ip" in item:
            attrs["fixed_ip_address"] = item["fixed_ip"]
        self.out.floating_ips[name] = self.call(item, f"floating IP {name}", self.api.create,
                                                "floatingips", project=project, **attrs)
