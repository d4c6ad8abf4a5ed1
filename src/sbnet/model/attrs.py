"""Attribute declarations and the converters that validate and normalise request values."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from sbnet.model.errors import BadRequest

REQUIRED = object()  # marks an attribute a POST must carry


@dataclass
class Limits:
    """Caps on what one request may carry (Neutron's defaults where Neutron has one)."""

    body_bytes: int = 114688        # oslo.middleware's max_request_body_size: 413 above
    depth: int = 16                 # JSON nesting of a request body
    bulk: int = 100                 # resources in one bulk create
    fixed_ips: int = 5              # max_fixed_ips_per_port
    address_pairs: int = 10         # max_allowed_address_pair
    dns_nameservers: int = 5        # max_dns_nameservers
    host_routes: int = 20           # max_subnet_host_routes
    routes: int = 30                # max_routes (extraroute)
    tags: int = 50                  # neutron-lib's MAX_TAGS
    list_items: int = 100           # any other list attribute
    dict_bytes: int = 4096          # a free-form dict (binding:profile, parameters) as JSON


LIMITS = Limits()


class Invalid(ValueError):
    """A converter's complaint; the caller names the attribute in the 400 it becomes."""


@dataclass(frozen=True)
class Attr:
    """One attribute of a resource, declared once as data (like Neutron's attribute maps)."""

    name: str
    convert: Callable[[Any], Any] | None = None
    default: Any = None  # REQUIRED, a value, or a callable returning a fresh value
    post: bool = True
    put: bool = True
    schema: dict | None = None  # JSON schema for the OpenAPI document

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


def fail(attr: str, reason: str) -> BadRequest:
    return BadRequest(f"Invalid input for {attr}. Reason: {reason}.")


# --- converters: each takes a JSON value, returns the stored value or raises Invalid ---

def to_str(max_len: int = 255) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if not isinstance(v, str):
            raise Invalid(f"'{str(v)[:64]}' is not a valid string")
        if len(v) > max_len:
            raise Invalid(f"'{v[:20]}...' exceeds maximum length of {max_len}")
        return v
    conv.openapi = lambda: {"type": "string", "maxLength": max_len}  # type: ignore[attr-defined]
    return conv


def to_str_or_none(max_len: int = 255) -> Callable[[Any], str | None]:
    inner = to_str(max_len)
    return lambda v: None if v is None else inner(v)


def to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0"):
        return v.lower() in ("true", "1")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise Invalid(f"'{v}' cannot be converted to boolean")


def to_int(lo: int | None = None, hi: int | None = None, nullable: bool = False) -> Callable:
    def conv(v: Any) -> int | None:
        if v is None and nullable:
            return None
        if isinstance(v, bool):
            raise Invalid(f"'{v}' is not an integer")
        try:
            n = int(v) if isinstance(v, (int, str)) else None
        except ValueError:
            n = None
        if n is None or (isinstance(v, float)):
            raise Invalid(f"'{v}' is not an integer")
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise Invalid(f"'{n}' is not in range {lo} through {hi}")
        return n
    return conv


def to_port_or_none(v: Any) -> int | None:
    """A port range bound, as Neutron's convert_validate_port_value: None or 0-65535."""
    if v is None:
        return None
    try:
        n = int(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else None
    except ValueError:
        n = None
    if n is None or not 0 <= n <= 65535:
        raise Invalid(f"Invalid value for port {v}")
    return n


def to_protocol_or_none(v: Any) -> str | None:
    """An IP protocol as a name or a number (17 or "17"), kept as a string as Neutron stores it."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str) or len(v) > 40:
        raise Invalid(f"'{v}' is not a valid protocol name or number")
    return v.lower()


def to_list_or_null(conv: Callable[[Any], Any], cap: str = "list_items") -> Callable[[Any], list]:
    """A list where null means empty (Neutron's convert_none_to_empty_list)."""
    inner = list_of(conv, cap=cap)
    return lambda v: [] if v is None else inner(v)


def to_choice(*choices: Any, nullable: bool = False) -> Callable:
    def conv(v: Any) -> Any:
        if v is None and nullable:
            return None
        if v not in choices:
            raise Invalid(f"'{v}' is not in {list(choices)}")
        return v
    return conv


def to_uuid(v: Any) -> str:
    if not isinstance(v, str):
        raise Invalid(f"'{v}' is not a valid UUID")
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise Invalid(f"'{v}' is not a valid UUID") from None


def to_uuid_or_none(v: Any) -> str | None:
    return None if v is None else to_uuid(v)


def to_uuid_list(v: Any) -> list[str]:
    if not isinstance(v, list):
        raise Invalid(f"'{str(v)[:64]}' is not a list")
    if len(v) > LIMITS.list_items:
        raise Invalid(f"{len(v)} items exceed the maximum of {LIMITS.list_items}")
    out = [to_uuid(x) for x in v]
    if len(set(out)) != len(out):
        raise Invalid(f"Duplicate items in the list: '{', '.join(out)}'")
    return out


_ADDR_CHARS = re.compile(r"[0-9A-Fa-f:./]+")


def _plain(v: Any, what: str) -> str:
    """An address as Neutron accepts it: no whitespace, no IPv6 scope (%zone), nothing but
    hex digits, dots, colons and a prefix slash."""
    if not isinstance(v, str) or len(v) > 64 or not _ADDR_CHARS.fullmatch(v):
        raise Invalid(f"'{str(v)[:64]}' is not a valid {what}")
    return v


def to_ip(v: Any, version: int | None = None) -> str:
    """An IP address, returned canonical; IPv4 must already be (no leading zeros, four
    parts), as Neutron's validator insists."""
    v = _plain(v, "IP address")
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        raise Invalid(f"'{v}' is not a valid IP address") from None
    if version and ip.version != version:
        raise Invalid(f"'{v}' is not an IPv{version} address")
    if ip.version == 4 and str(ip) != v:
        raise Invalid(f"'{v}' is not a valid IP address")
    return str(ip)


def to_ip_or_none(v: Any) -> str | None:
    return None if v is None else to_ip(v)


def to_cidr(v: Any, strict: bool = True) -> str:
    """A network in CIDR form; a host address with a mask is refused as Neutron does."""
    if not isinstance(v, str) or "/" not in v:
        raise Invalid(f"'{v}' is not a valid IP subnet")
    v = _plain(v, "IP subnet")
    try:
        iface = ipaddress.ip_interface(v)
    except ValueError:
        raise Invalid(f"'{v}' is not a valid IP subnet") from None
    net = iface.network
    if strict and iface.ip != net.network_address:
        raise Invalid(f"'{v}' isn't a recognized IP subnet cidr, '{net}' is recommended")
    return str(net)


def to_prefix_or_none(v: Any) -> str | None:
    """remote_ip_prefix and friends: a bare address means a host prefix; host bits are dropped."""
    if v is None:
        return None
    v = _plain(v, "IP prefix")
    try:
        return str(ipaddress.ip_network(v, strict=False))
    except ValueError:
        raise Invalid(f"'{v}' is not a valid IP prefix") from None


_MAC = re.compile(r"^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$", re.I)


def to_mac(v: Any) -> str:
    if not isinstance(v, str) or not _MAC.fullmatch(v):
        raise Invalid(f"'{v}' is not a valid MAC address")
    mac = v.lower().replace("-", ":")
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise Invalid(f"'{v}' is not a valid unicast MAC address")
    return mac


def to_dict(v: Any) -> dict:
    if not isinstance(v, dict):
        raise Invalid(f"'{str(v)[:64]}' is not a dictionary")
    if len(json.dumps(v)) > LIMITS.dict_bytes:
        raise Invalid(f"the dictionary exceeds {LIMITS.dict_bytes} bytes")
    return v


def to_dict_or_none(v: Any) -> dict | None:
    return None if v is None else to_dict(v)


def list_of(conv: Callable[[Any], Any], unique: bool = True, cap: str = "list_items") -> Callable[[Any], list]:
    """A list of conv's values, at most LIMITS.<cap> of them."""
    def inner(v: Any) -> list:
        if not isinstance(v, list):
            raise Invalid(f"'{str(v)[:64]}' is not a list")
        most = getattr(LIMITS, cap)
        if len(v) > most:
            raise Invalid(f"{len(v)} items exceed the maximum of {most}")
        out = [conv(x) for x in v]
        if unique and len({repr(x) for x in out}) != len(out):
            raise Invalid(f"Duplicate items in the list: '{str(v)[:64]}'")
        return out
    inner.openapi = lambda: {"type": "array", "maxItems": getattr(LIMITS, cap)}  # type: ignore[attr-defined]
    return inner


def to_tag(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v) > 255 or "," in v or "/" in v:
        raise Invalid(f"'{v}' is not a valid tag")
    return v


def to_tags(v: Any) -> list[str]:
    return sorted(set(list_of(to_tag, unique=False, cap="tags")(v)))


def to_route(v: Any) -> dict:
    d = to_dict(v)
    if set(d) != {"destination", "nexthop"}:
        raise Invalid(f"'{v}' must have exactly the keys destination and nexthop")
    dest = to_cidr(d["destination"], strict=False)
    hop = to_ip(d["nexthop"])
    if ipaddress.ip_network(dest).version != ipaddress.ip_address(hop).version:
        raise Invalid(f"'{v}' mixes IP versions")
    return {"destination": dest, "nexthop": hop}


def schema_of(conv: Callable | None) -> dict:
    """The OpenAPI schema of a converter's values, with the caps it enforces."""
    if hasattr(conv, "openapi"):
        return conv.openapi()
    if conv is to_tags:
        return {"type": "array", "items": {"type": "string"}, "maxItems": LIMITS.tags}
    if conv is to_uuid_list:
        return {"type": "array", "items": {"type": "string"}, "maxItems": LIMITS.list_items}
    return SCHEMA_OF.get(conv, {})


SCHEMA_OF = {to_bool: {"type": "boolean"}, to_uuid: {"type": "string", "format": "uuid"},
             to_dict: {"type": "object"}, to_uuid_list: {"type": "array", "items": {"type": "string"}},
             to_tags: {"type": "array", "items": {"type": "string"}}}


def validate_body(attrs: dict[str, Attr], body: Any, *, create: bool, resource: str) -> dict:
    """Check a POST or PUT body against the declarations; fill defaults on POST.
    Who may set what is sbnet.api.policy's business, checked afterwards."""
    if not isinstance(body, dict):
        raise BadRequest(f"Resource body required: expected an object '{resource}'")
    unknown = sorted(k for k in body if k not in attrs)
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    out: dict[str, Any] = {}
    for name, value in body.items():
        a = attrs[name]
        if not (a.post if create else a.put):
            raise BadRequest(f"Attribute '{name}' not allowed in {'POST' if create else 'PUT'}")
        try:
            out[name] = a.convert(value) if a.convert else value
        except Invalid as exc:
            raise fail(name, str(exc)) from None
    if create:
        for name, a in attrs.items():
            if name in out or not a.post:
                continue
            if a.default is REQUIRED:
                raise BadRequest(f"Failed to parse request. Required attribute '{name}' not specified")
            out[name] = a.default_value()
    return out

