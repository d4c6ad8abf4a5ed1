"""A real CNI runtime for a bare-metal server: Podman with its CNI backend calling sbnet-cni, its configuration, storage and root filesystem in one directory of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import sbnet

BUSYBOX = "/bin/busybox"                      # Debian's busybox-static: no libraries needed
APPLETS = ("sh", "ip", "ping", "sleep", "cat", "ifconfig", "route")


class PodmanError(RuntimeError):
    pass


# Podman's default limits for a root container raise the hard limits, which needs
# CAP_SYS_RESOURCE (root here lacks it): ask for ordinary ones, below what podman keeps.
ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")


class Podman:
    """`podman` as an operator runs it on the server (in the server's network namespace),
    with CNI networks from `networks` (name -> sbnet-cni's network configuration), the
    sbnet-cni executable of this source tree, vfs storage under `workdir`, and a busybox
    root filesystem made here to run containers from (`image`)."""

    def __init__(self, networks: dict[str, dict], workdir: str | None = None) -> None:
        if shutil.which("podman") is None:
            raise PodmanError("podman is not installed (Debian: podman, runc)")
        self.dir = workdir or tempfile.mkdtemp(prefix="sbnet-podman-")
        os.makedirs(self.dir, exist_ok=True)
        cni_bin, net_d = self._path("cni/bin"), self._path("cni/net.d")
        os.makedirs(cni_bin, exist_ok=True)
        os.makedirs(net_d, exist_ok=True)
        src = os.path.dirname(os.path.dirname(os.path.abspath(sbnet.__file__)))
        plugin = os.path.join(cni_bin, "sbnet-cni")
        with open(plugin, "w") as f:
            f.write(f"#!/bin/sh\nPYTHONPATH={src} exec {sys.executable} -m sbnet.cni.plugin\n")
        os.chmod(plugin, 0o755)
        for name, conf in networks.items():
            conflist = {"cniVersion": conf.get("cniVersion", "1.0.0"), "name": name,
                        "plugins": [{k: v for k, v in conf.items()
                                     if k not in ("cniVersion", "name")}]}
            with open(os.path.join(net_d, f"{name}.conflist"), "w") as f:
                json.dump(conflist, f)
        ulimits = ", ".join(json.dumps(u) for u in ULIMITS)
        with open(self._path("containers.conf"), "w") as f:
            f.write(f'[containers]\ndefault_ulimits = [{ulimits}]\n'
                    f'[network]\nnetwork_backend = "cni"\n'
                    f'cni_plugin_dirs = ["{cni_bin}"]\nnetwork_config_dir = "{net_d}"\n'
                    # runc: crun refuses a cgroup v1/v2 hybrid machine such as this one.
                    f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
                    f'events_logger = "none"\ntmp_dir = "{self._path("tmp")}"\n')
        with open(self._path("storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{self._path("root")}"\n'
                    f'runroot = "{self._path("run")}"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=self._path("containers.conf"),
                        CONTAINERS_STORAGE_CONF=self._path("storage.conf"))
        self.image = self._rootfs()         # what `podman run` takes in place of an image

    def _path(self, rel: str) -> str:
        return os.path.join(self.dir, rel)

    def _rootfs(self) -> list[str]:
        """A busybox root filesystem, run as it is (`podman run --rootfs`): no image, so no
        registry and nothing in podman's system-wide image caches."""
        root = self._path("rootfs")
        os.makedirs(os.path.join(root, "bin"), exist_ok=True)
        shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
        for applet in APPLETS:
            os.symlink("busybox", os.path.join(root, "bin", applet))
        return ["--rootfs", root]

    def podman(self, netns: str | None, *args: str, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess:
        """`podman ARGS` in network namespace `netns` (a path; None: ours)."""
        argv = ["podman", *args]
        if netns:
            argv = ["nsenter", f"--net={netns}", *argv]
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)}: {(res.stderr or res.stdout).strip()}")
        return res

    def close(self, netns: str | None = None) -> None:
        """Remove every container (their networks torn down from `netns`, where they were
        set up) and everything podman kept under its directory."""
        self.podman(netns, "rm", "--all", "--force", "--time", "0", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
