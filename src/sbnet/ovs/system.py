"""A running Open vSwitch found by its run directory (the system's, or one a tool started)."""

from __future__ import annotations

import glob
import os

from sbnet.ovs.dummy import OVSError, run_tool

SYSTEM_RUNDIR = "/var/run/openvswitch"


class RunningOVS:
    """What OvsDatapath needs of the daemons (vsctl, ofctl, appctl), for daemons this
    process did not start: stop() leaves them running."""

    def __init__(self, rundir: str = SYSTEM_RUNDIR) -> None:
        self.dir = rundir
        self.env = dict(os.environ, OVS_RUNDIR=rundir)
        if not os.path.exists(f"{rundir}/db.sock"):
            raise OVSError(f"no ovsdb-server socket in {rundir}")

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        return run_tool(argv, self.env, stdin)

    def vsctl(self, *args: str) -> str:
        return self._run(["ovs-vsctl", f"--db=unix:{self.dir}/db.sock", "--timeout=30", *args])

    def appctl(self, method: str, *params: str) -> str:
        ctl = sorted(glob.glob(f"{self.dir}/ovs-vswitchd*.ctl"))
        if not ctl:
            raise OVSError(f"no ovs-vswitchd control socket in {self.dir}")
        return self._run(["ovs-appctl", "-t", ctl[0], method, *params])

    def iface_ids(self, bridge: str) -> dict[str, int]:
        """Neutron port id -> ofport of the bridge's interfaces that carry
        external_ids:iface-id (as Nova/os-vif plug them)."""
        out = {}
        for name in self.vsctl("list-ifaces", bridge).split():
            iface = self.vsctl("--if-exists", "get", "Interface", name,
                               "external_ids:iface-id").strip().strip('"')
            if iface:
                ofport = int(self.vsctl("get", "Interface", name, "ofport").strip())
                if ofport > 0:
                    out[iface] = ofport
        return out

    def stop(self) -> None:
        """Not ours to stop."""

    @property
    def pids(self) -> list[int]:
        return []
