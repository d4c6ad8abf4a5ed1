"""Extra DHCP options on ports (Neutron's extra_dhcp_opt): checked at the API, encoded for the native DHCP."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Callable

from sbnet.model.attrs import LIMITS, Invalid

NAME_MAX, VALUE_MAX = 64, 255
# Options whose value may be blank (Neutron's VALID_BLANK_EXTRA_DHCP_OPTS): "router" with ""
# tells the client there is no router.
BLANK_OK = ("router", "classless-static-route")
SIADDR = "server-ip-address"    # not an option: the BOOTP header's next-server address


def _ips(value: str) -> bytes:
    return b"".join(ipaddress.IPv4Address(v.strip()).packed for v in value.split(",") if v.strip())


def _text(value: str) -> bytes:
    return value.encode()


def _u8(value: str) -> bytes:
    return struct.pack("!B", int(value))


def _u16(value: str) -> bytes:
    return struct.pack("!H", int(value))


def _u32(value: str) -> bytes:
    return struct.pack("!I", int(value))


def _bool(value: str) -> bytes:
    return b"\x01" if value.strip().lower() in ("1", "true", "yes", "on") else b"\x00"


def _classless(value: str) -> bytes:
    """RFC 3442 from dnsmasq's form: dest/len,hop[,dest/len,hop...]."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if len(parts) % 2:
        raise ValueError("classless-static-route takes destination,next-hop pairs")
    out = b""
    for dest, hop in zip(parts[::2], parts[1::2]):
        net = ipaddress.IPv4Network(dest, strict=False)
        out += bytes((net.prefixlen,)) + net.network_address.packed[:(net.prefixlen + 7) // 8] \
            + ipaddress.IPv4Address(hop).packed
    return out


# dnsmasq's names for the DHCPv4 options Neutron users set, with their codes and encodings.
OPTIONS: dict[str, tuple[int, Callable[[str], bytes]]] = {
    "netmask": (1, _ips), "time-offset": (2, _u32), "router": (3, _ips),
    "dns-server": (6, _ips), "log-server": (7, _ips), "lpr-server": (9, _ips),
    "hostname": (12, _text), "boot-file-size": (13, _u16), "domain-name": (15, _text),
    "swap-server": (16, _ips), "root-path": (17, _text), "extension-path": (18, _text),
    "ip-forward-enable": (19, _bool), "mtu": (26, _u16), "broadcast": (28, _ips),
    "static-route": (33, _ips), "ntp-server": (42, _ips), "netbios-ns": (44, _ips),
    "netbios-nodetype": (46, _u8), "lease-time": (51, _u32), "T1": (58, _u32), "T2": (59, _u32),
    "tftp-server": (66, _text), "bootfile-name": (67, _text),
    "classless-static-route": (121, _classless), "tftp-server-address": (150, _ips),
}


def _ips6(value: str) -> bytes:
    return b"".join(ipaddress.IPv6Address(v.strip()).packed for v in value.split(",") if v.strip())


def _domains(value: str) -> bytes:
    """RFC 1035 names (RFC 3646's domain search list), uncompressed."""
    out = b""
    for name in (n.strip().rstrip(".") for n in value.split(",") if n.strip()):
        labels = name.split(".")
        if any(not 0 < len(x) < 64 for x in labels):
            raise ValueError(f"{name!r} is not a domain name")
        out += b"".join(bytes((len(x),)) + x.encode("ascii") for x in labels) + b"\x00"
    return out


# DHCPv6 (ip_version 6), dnsmasq's names for them.
OPTIONS6: dict[str, tuple[int, Callable[[str], bytes]]] = {
    "dns-server": (23, _ips6), "domain-search": (24, _domains), "sntp-server": (31, _ips6),
    "information-refresh-time": (32, _u32), "bootfile-url": (59, _text),
    "bootfile-param": (60, _text),
}


def _guess(value: str) -> bytes:
    """A numbered option's value as dnsmasq guesses it: addresses if it reads as IPv4
    addresses, else text."""
    try:
        return _ips(value) if value.strip() else b""
    except ValueError:
        return value.encode()


def _guess6(value: str) -> bytes:
    try:
        return _ips6(value) if value.strip() else b""
    except ValueError:
        return value.encode()


def code_of(name: str, version: int = 4) -> tuple[int, Callable[[str], bytes]] | None:
    """The DHCP option a name stands for: dnsmasq's name (with or without `option:` /
    `option6:`), or its number; None for names the native DHCP does not know (stored, not
    sent)."""
    name = name.removeprefix("option6:" if version == 6 else "option:")
    table, most, guess = (OPTIONS, 255, _guess) if version == 4 else (OPTIONS6, 65535, _guess6)
    if name in table:
        return table[name]
    if name.isdigit() and 0 < int(name) < most:
        return int(name), guess
    return None


def to_extra_dhcp_opts(v: Any) -> list[dict]:
    """Neutron's extra_dhcp_opts: [{opt_name, opt_value (None deletes on update), ip_version}]."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise Invalid(f"'{str(v)[:64]}' is not a list")
    if len(v) > LIMITS.list_items:
        raise Invalid(f"{len(v)} items exceed the maximum of {LIMITS.list_items}")
    out = []
    for item in v:
        if not isinstance(item, dict) or set(item) - {"opt_name", "opt_value", "ip_version"} \
                or "opt_name" not in item or "opt_value" not in item:
            raise Invalid(f"'{str(item)[:64]}' is not a dict of opt_name, opt_value and "
                          "optionally ip_version")
        name, value = item["opt_name"], item["opt_value"]
        if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX or "\n" in name:
            raise Invalid(f"'{str(name)[:64]}' is not a one-line option name of at most "
                          f"{NAME_MAX} characters")
        if value is not None and (not isinstance(value, str) or len(value) > VALUE_MAX
                                  or "\n" in value or (not value and name not in BLANK_OK)):
            raise Invalid(f"'{str(value)[:64]}' is not a one-line value of 1 to {VALUE_MAX} "
                          "characters")
        version = item.get("ip_version", 4)
        if isinstance(version, str) and version.isdigit():
            version = int(version)
        if version not in (4, 6) or isinstance(version, bool):
            raise Invalid(f"'{version}' is not a valid IP version")
        out.append({"opt_name": name, "opt_value": value, "ip_version": version})
    return out


def merge(old: list[dict], changes: list[dict]) -> list[dict]:
    """An update as Neutron applies it: an option named again (same ip_version) takes the new
    value, or goes when the value is None; new options are added; the rest stay."""
    out = [dict(o) for o in old]
    for upd in changes:
        same = next((o for o in out if (o["opt_name"], o["ip_version"]) ==
                     (upd["opt_name"], upd["ip_version"])), None)
        if same is None:
            if upd["opt_value"] is not None:
                out.append(dict(upd))
        elif upd["opt_value"] is None:
            out.remove(same)
        else:
            same["opt_value"] = upd["opt_value"]
    return out


def encode_v4(opts: list[dict]) -> tuple[dict[int, bytes], bytes | None]:
    """A port's IPv4 extra options as {code: value} (they replace the native DHCP's own
    option of the same code; an empty value removes it) and the next-server address."""
    out: dict[int, bytes] = {}
    siaddr = None
    for o in opts:
        if o["ip_version"] != 4 or o["opt_value"] is None:
            continue
        try:
            if o["opt_name"].removeprefix("option:") == SIADDR:
                siaddr = ipaddress.IPv4Address(o["opt_value"]).packed
                continue
            known = code_of(o["opt_name"])
            if known is not None:
                code, enc = known
                out[code] = enc(o["opt_value"])[:255]
        except (ValueError, struct.error):
            continue     # Neutron takes any one-line value; one that is no such option's is left out
    return out, siaddr


def encode_v6(opts: list[dict]) -> dict[int, bytes]:
    """A port's IPv6 extra options as {code: value}: each replaces the DHCPv6 server's own
    option of that code (DNS servers), an empty value removes it."""
    out: dict[int, bytes] = {}
    for o in opts:
        if o["ip_version"] != 6 or o["opt_value"] is None:
            continue
        known = code_of(o["opt_name"], 6)
        try:
            if known is not None:
                out[known[0]] = known[1](o["opt_value"])
        except (ValueError, struct.error):
            continue
    return out
