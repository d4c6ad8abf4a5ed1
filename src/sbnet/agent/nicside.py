"""A SmartNIC's local channel to its server: containers get an interface (a VF whose representor the NIC switches) on a network, and give it back; nothing else."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sbnet.cni.client import JsonClient
from sbnet.cni.ports import (delete_port, find_port, interface_plan, network, port_body,
                             security_groups, subnets_of)
from sbnet.cni.spec import (INVALID_CONFIG, NO_INTERFACE, TRY_AGAIN_LATER, CniError,
                            valid_ifname)

VNIC_TYPE = "smart-nic"
_PATH = re.compile(r"/v1/interfaces/([A-Za-z0-9][A-Za-z0-9_.\-]{0,254})/([^/]{1,15})")


class NicChannel:
    """What a server may ask its NIC, answered with the NIC's own credentials:
    PUT /v1/interfaces/CONTAINER/IFNAME {"network": N} -> a VF (its server-side name) and
    how to configure it; GET the same; DELETE gives it back.  Ports are bound to this NIC
    (binding:host_id), binding:vnic_type smart-nic, binding:profile local_link_information
    naming the VF's representor and the NIC's hostname, as Neutron binds SmartNIC ports.
    `vfs`: server-side VF name -> its representor here; `networks`: the networks offered
    (name or id -> security groups, None for the project's default)."""

    def __init__(self, api: JsonClient, host: str, vfs: dict[str, str],
                 networks: dict[str, list[str] | None], project_id: str | None = None,
                 wait_active: float = 10.0) -> None:
        self.api = api
        self.host = host
        self.vfs = dict(vfs)
        self.rep_to_vf = {r: v for v, r in self.vfs.items()}
        self.networks = dict(networks)
        self.project_id = project_id
        self.wait_active = wait_active
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def _profile(self, rep: str) -> dict:
        return {"binding:vnic_type": VNIC_TYPE, "binding:profile": {
            "local_link_information": [{"port_id": rep, "hostname": self.host}]}}

    def _used(self) -> set[str]:
        """Representors the ports bound here already name (the API is the record: a
        restarted NIC agent hands out none of them twice)."""
        out = set()
        for p in self.api.get("/v2.0/ports", device_owner="compute:container")["ports"]:
            for lli in (p.get("binding:profile") or {}).get("local_link_information") or ():
                if isinstance(lli, dict) and lli.get("hostname") == self.host:
                    out.add(lli.get("port_id"))
        return out

    def _answer(self, port: dict) -> dict:
        rep = port["binding:profile"]["local_link_information"][0]["port_id"]
        net = network(self.api, port["network_id"])
        return {"device": self.rep_to_vf[rep], "port_id": port["id"],
                "status": port.get("status"),
                "plan": interface_plan(port, net, subnets_of(self.api, net))}

    def attach(self, container_id: str, ifname: str, network_ref: str) -> dict:
        if network_ref not in self.networks:
            raise CniError(INVALID_CONFIG, f"network {network_ref!r} is not offered to this "
                                           f"server's containers")
        with self.lock:
            port = find_port(self.api, container_id, ifname, self.host)
            if port is None:
                free = [v for v, r in sorted(self.vfs.items()) if r not in self._used()]
                if not free:
                    raise CniError(NO_INTERFACE, f"NIC {self.host} has no free interface",
                                   f"all {len(self.vfs)} VFs are in use")
                net = network(self.api, network_ref)
                groups = security_groups(self.api, self.networks[network_ref],
                                         self.project_id or net.get("project_id"))
                body = port_body(net, container_id, ifname, self.host,
                                 self.project_id or net.get("project_id"), groups,
                                 binding=self._profile(self.vfs[free[0]]))
                port = self.api.post("/v2.0/ports", {"port": body})["port"]
        deadline = time.monotonic() + self.wait_active
        while port.get("status") != "ACTIVE" and time.monotonic() < deadline:
            time.sleep(0.05)                  # the agent wires the representor, reports ACTIVE
            port = self.api.get(f"/v2.0/ports/{port['id']}")["port"]
        if port.get("status") != "ACTIVE":
            raise CniError(TRY_AGAIN_LATER, f"port {port['id']} is {port.get('status')} after "
                                            f"{self.wait_active:g} s")
        return self._answer(port)

    def show(self, container_id: str, ifname: str) -> dict | None:
        port = find_port(self.api, container_id, ifname, self.host)
        return self._answer(port) if port is not None else None

    def release(self, container_id: str, ifname: str) -> bool:
        with self.lock:
            port = find_port(self.api, container_id, ifname, self.host)
            if port is None:
                return False
            delete_port(self.api, port["id"])
            return True

    # -- the HTTP side -------------------------------------------------------------
    def serve(self, address: str, port: int) -> "NicChannel":
        """Answer on address:port (in this process's namespace) in a thread of its own."""
        channel = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: dict | None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                m = _PATH.fullmatch(self.path)
                if m is None or not valid_ifname(m.group(2)):
                    return self._reply(404, {"code": 4, "msg": "no such request: the NIC "
                                             "answers /v1/interfaces/CONTAINER/IFNAME only"})
                cid, ifname = m.groups()
                try:
                    if method == "PUT":
                        n = int(self.headers.get("Content-Length") or 0)
                        body = json.loads(self.rfile.read(min(n, 65536)) or b"{}")
                        if not isinstance(body, dict) or not isinstance(body.get("network"), str):
                            return self._reply(400, {"code": 7, "msg": 'body must be '
                                                     '{"network": NAME_OR_ID}'})
                        return self._reply(200, channel.attach(cid, ifname, body["network"]))
                    if method == "GET":
                        got = channel.show(cid, ifname)
                        return self._reply(200, got) if got else self._reply(
                            404, {"code": 3, "msg": f"no interface for {cid}/{ifname}"})
                    if channel.release(cid, ifname):
                        return self._reply(204, None)
                    return self._reply(404, {"code": 3, "msg": f"no interface for {cid}/{ifname}"})
                except CniError as exc:
                    status = 503 if exc.code == TRY_AGAIN_LATER else 409 \
                        if exc.code == NO_INTERFACE else 400
                    return self._reply(status, {"code": exc.code, "msg": exc.msg,
                                                "details": exc.details})
                except ValueError as exc:
                    return self._reply(400, {"code": 6, "msg": f"bad request: {exc}"})

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_GET(self) -> None:
                self._handle("GET")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="sbnet-nic-channel",
                         daemon=True).start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
