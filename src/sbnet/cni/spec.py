"""The CNI 1.0 protocol: the environment, the network configuration on stdin, results and error results."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, TextIO

SPEC_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("1.0.0",)
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")

# The specification's well-known error codes (0-99 are reserved to it).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# This plugin's own (100 and up, as the specification leaves them to plugins).
API_REFUSED = 100          # the Neutron API (or the NIC's agent) answered with an error
INTERFACE_DRIFT = 101      # CHECK: the container's interface is not what its port says
NO_INTERFACE = 102         # the NIC has no free interface for another container

_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


class CniError(Exception):
    """A failure as the specification reports it: code, msg and details on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def result(self, version: str = SPEC_VERSION) -> dict:
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass
class Invocation:
    """One call of the plugin: what the runtime put in the environment and on stdin."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.config.get("cniVersion") or SPEC_VERSION


def parse_args(text: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K2=V2` (empty allowed)."""
    out = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def valid_ifname(name: str) -> bool:
    """A Linux interface name: 1-15 bytes, no '/', ':' or whitespace, not '.' or '..'."""
    return (0 < len(name.encode()) <= 15 and name not in (".", "..")
            and not re.search(r"[/:\s]", name))


def invocation(environ: Mapping[str, str], stdin: str) -> Invocation:
    """The call as the specification defines it; CniError (4, 6, 7 or 1) when it is not one."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND must be one of {', '.join(COMMANDS)}",
                       f"got {command!r}")
    try:
        config = json.loads(stdin) if stdin.strip() else {}
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, "network configuration on stdin is not JSON",
                       str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    version = config.get("cniVersion")
    if command == "VERSION":
        return Invocation(command, config=config)
    if not isinstance(version, str):
        raise CniError(INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    name = config.get("name")
    if not isinstance(name, str) or not _NETWORK_NAME.fullmatch(name):
        raise CniError(INVALID_CONFIG, "network configuration needs a name (letters, digits, "
                                       "_ . -, starting with a letter or digit)")
    if not isinstance(config.get("type"), str):
        raise CniError(INVALID_CONFIG, "network configuration has no type")
    inv = Invocation(command, environ.get("CNI_CONTAINERID", ""), environ.get("CNI_NETNS", ""),
                     environ.get("CNI_IFNAME", ""), parse_args(environ.get("CNI_ARGS", "")),
                     [p for p in environ.get("CNI_PATH", "").split(":") if p], config)
    if not _CONTAINER_ID.fullmatch(inv.container_id):
        raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID must be letters, digits, _ . - "
                                            "(starting with a letter or digit)")
    if not valid_ifname(inv.ifname):
        raise CniError(INVALID_ENVIRONMENT, "CNI_IFNAME must be an interface name (1-15 bytes, "
                                            "no '/', ':' or whitespace)", repr(inv.ifname))
    if command in ("ADD", "CHECK") and not inv.netns:
        raise CniError(INVALID_ENVIRONMENT, f"{command} needs CNI_NETNS")
    return inv


Handler = Callable[[Invocation], "dict | None"]


def run(handlers: Mapping[str, Handler], environ: Mapping[str, str], stdin: str,
        stdout: TextIO) -> int:
    """One call, start to end: the result (or nothing) on stdout and 0, or the error result
    on stdout and 1.  Nothing escapes as a traceback: an unexpected fault is an error result."""
    version = SPEC_VERSION
    try:
        inv = invocation(environ, stdin)
        version = inv.version if inv.version in SUPPORTED_VERSIONS else SPEC_VERSION
        if inv.command == "VERSION":
            out = {"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
        else:
            out = handlers[inv.command](inv)
    except CniError as exc:
        json.dump(exc.result(version), stdout)
        return 1
    except Exception as exc:              # a bug or an unforeseen fault: still a CNI error
        json.dump(CniError(IO_FAILURE, f"sbnet-cni failed: {exc or type(exc).__name__}",
                           type(exc).__name__).result(version), stdout)
        return 1
    if out is not None:
        json.dump(out, stdout)
    return 0
