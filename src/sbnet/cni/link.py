"""The container's interface: made, moved, configured and read back with iproute2 (inside a namespace given by path)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess

from sbnet.cni.spec import IO_FAILURE, UNKNOWN_CONTAINER, CniError


def _inside(netns: str | None, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={netns}", *argv] if netns else argv


def run(netns: str | None, *argv: str, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    """A command in `netns` (a path such as /run/netns/X or /proc/PID/ns/net; None: ours);
    CniError 5 with its stderr when it fails and `check`."""
    res = subprocess.run(_inside(netns, list(argv)), capture_output=True, text=True,
                         timeout=30, input=input)
    if check and res.returncode != 0:
        raise CniError(IO_FAILURE, f"{' '.join(argv[:4])} failed",
                       (res.stderr or res.stdout).strip()[:500])
    return res


def require_netns(netns: str) -> None:
    """CNI error 3 when the container's network namespace is not there."""
    if not os.path.exists(netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {netns} does not exist")


def exists(netns: str | None, ifname: str) -> bool:
    if netns and not os.path.exists(netns):
        return False
    return run(netns, "ip", "link", "show", "dev", ifname, check=False).returncode == 0


def make_veth(host_end: str, netns: str, ifname: str, mtu: int) -> None:
    """A veth pair: `host_end` here (ARP off: it is a switch port, it answers for nobody),
    `ifname` inside the container's namespace."""
    run(None, "ip", "link", "add", host_end, "mtu", str(mtu), "type", "veth", "peer", "name",
        ifname, "mtu", str(mtu), "netns", netns)
    run(None, "ip", "link", "set", host_end, "arp", "off", "up")


def delete(netns: str | None, ifname: str) -> bool:
    """Remove an interface (a veth takes its peer with it); False when it was not there."""
    if not exists(netns, ifname):
        return False
    run(netns, "ip", "link", "del", "dev", ifname, check=False)
    return True


def move_in(dev: str, netns: str, ifname: str) -> None:
    """A free interface of this namespace (a VF) into the container, renamed `ifname`."""
    run(None, "ip", "link", "set", "dev", dev, "down")
    run(None, "ip", "link", "set", "dev", dev, "netns", netns)
    run(netns, "ip", "link", "set", "dev", dev, "name", ifname)


def move_out(netns: str, ifname: str, dev: str) -> bool:
    """The container's interface back here as `dev`, without its addresses; False when the
    container has no such interface."""
    if not exists(netns, ifname):
        return False
    run(netns, "ip", "-batch", "-", input="\n".join([
        f"addr flush dev {ifname}", f"link set dev {ifname} down",
        f"link set dev {ifname} name {dev}", f"link set dev {dev} netns {os.getpid()}"]) + "\n")
    return True


def configure(netns: str, ifname: str, plan: dict, tx_checksum: bool = False) -> None:
    """MAC, MTU, addresses and routes of the plan on the container's interface (replacing,
    so a repeated ADD changes nothing); checksum offload off unless `tx_checksum` (a switch
    in software on the other end of a veth does not fill checksums in)."""
    lines = [f"link set dev {ifname} address {plan['mac']} mtu {int(plan['mtu'])} up"]
    v6 = False
    for ip in plan["ips"]:
        if ipaddress.ip_interface(ip["address"]).version == 6:
            v6 = True
            lines.append(f"addr replace {ip['address']} dev {ifname} nodad")
        else:
            lines.append(f"addr replace {ip['address']} dev {ifname}")
    for r in plan["routes"]:
        lines.append(f"route replace {r['dst']} via {r['gw']} dev {ifname}" if r.get("gw")
                     else f"route replace {r['dst']} dev {ifname}")
    if v6:
        run(netns, "sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=0")
    run(netns, "ip", "-batch", "-", input="\n".join(lines) + "\n")
    if not tx_checksum:
        run(netns, "ethtool", "-K", ifname, "tx", "off", check=False)


def inspect(netns: str, ifname: str) -> dict | None:
    """What the container's interface has now: mac, mtu, addresses (with prefix), routes
    (dst, gw); None when the namespace or the interface is gone."""
    if not exists(netns, ifname):
        return None
    link = json.loads(run(netns, "ip", "-j", "addr", "show", "dev", ifname).stdout)[0]
    routes = []
    for fam in ("-4", "-6"):
        for r in json.loads(run(netns, "ip", "-j", fam, "route", "show", "dev", ifname).stdout
                            or "[]"):
            dst = r.get("dst", "")
            if dst == "default":
                dst = "0.0.0.0/0" if fam == "-4" else "::/0"
            elif "/" not in dst:
                dst += "/32" if fam == "-4" else "/128"
            routes.append({"dst": dst, "gw": r.get("gateway")})
    return {"mac": link.get("address"), "mtu": link.get("mtu"),
            "addresses": sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", ())
                                if a.get("scope") == "global"),
            "routes": routes}


def drift(plan: dict, seen: dict | None) -> list[str]:
    """How the interface differs from the plan (empty: it matches)."""
    if seen is None:
        return ["the interface is gone"]
    out = []
    if (seen["mac"] or "").lower() != plan["mac"].lower():
        out.append(f"MAC is {seen['mac']}, the port's is {plan['mac']}")
    want = sorted(ip["address"] for ip in plan["ips"])
    if sorted(seen["addresses"]) != want:
        out.append(f"addresses are {', '.join(seen['addresses']) or 'none'}, the port's are "
                   f"{', '.join(want)}")
    have = {(r["dst"], r["gw"]) for r in seen["routes"]}
    for r in plan["routes"]:
        if (r["dst"], r.get("gw")) not in have:
            out.append(f"route {r['dst']} via {r.get('gw')} is missing")
    return out
