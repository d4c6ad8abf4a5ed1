"""A real DHCP client in a VM namespace (Debian's dhclient and dhclient-script), and what it
configured there."""

from __future__ import annotations

import json
import os
import shutil

import pytest


def require_dhclient() -> None:
    """dhclient and udhcpc: skip without them, except in CI (scripts/test installs both)."""
    for tool, package in (("dhclient", "isc-dhcp-client"), ("udhcpc", "udhcpc")):
        if not shutil.which(tool):
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} (Debian {package}) is required in CI")
            pytest.skip(f"needs {tool} (Debian {package})")


class Dhclients:
    """dhclient runs, stopped (by pid file) and their /etc/netns files removed by close()."""

    def __init__(self, topo, tmp_path) -> None:
        self.topo, self.tmp = topo, tmp_path
        self.started: list[tuple[str, str]] = []

    def run(self, node: str, v6: bool = False) -> None:
        """Run dhclient (`v6`: dhclient -6) once in the node's namespace, as a cloud image
        would at boot (30 s at most); its resolv.conf is the node's own (`ip netns exec`
        binds /etc/netns/NS)."""
        ns = self.topo._ns(node)
        etc = f"/etc/netns/{ns}"
        os.makedirs(etc, exist_ok=True)
        open(f"{etc}/resolv.conf", "w").close()
        name = (node if isinstance(node, str) else node.name) + ("-6" if v6 else "")
        pidfile = str(self.tmp / f"{name}.dhclient.pid")
        self.started.append((pidfile, etc))
        res = self.topo.run(node, "timeout", "30", "dhclient", *(["-6"] if v6 else []), "-1",
                            "-v", "-pf", pidfile, "-lf", str(self.tmp / f"{name}.leases"),
                            "eth0", check=False, timeout=40)
        assert res.returncode == 0, res.stderr[-2000:]

    def udhcpc(self, node) -> None:
        """Busybox's udhcpc (Debian udhcpc) once, its default script applying the lease
        (address, mask, MTU, default route, resolv.conf); it exits when bound (-q)."""
        etc = f"/etc/netns/{self.topo._ns(node)}"
        os.makedirs(etc, exist_ok=True)
        open(f"{etc}/resolv.conf", "w").close()
        self.started.append(("", etc))
        res = self.topo.run(node, "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5",
                            "-O", "mtu", check=False, timeout=40)
        assert res.returncode == 0, res.stderr[-2000:]

    def state(self, node) -> dict:
        """eth0's MTU and IPv4 addresses, the IPv4 routes, the resolv.conf dhclient wrote."""
        run = lambda *a: self.topo.run(node, *a).stdout  # noqa: E731
        link = json.loads(run("ip", "-j", "addr", "show", "eth0"))[0]
        routes = json.loads(run("ip", "-j", "-4", "route", "show"))
        return {"mtu": link["mtu"],
                "addrs": [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                          if a["family"] == "inet"],
                "routes": {r["dst"]: r.get("gateway") for r in routes},
                "resolv": open(f"/etc/netns/{self.topo._ns(node)}/resolv.conf").read()}

    def close(self) -> None:
        for pidfile, etc in self.started:
            try:
                os.kill(int(open(pidfile).read().strip()), 15)
            except (OSError, ValueError):
                pass
            shutil.rmtree(etc, ignore_errors=True)
