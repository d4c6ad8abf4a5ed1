"""The metadata path as cloud-init meets it: a VM's GET http://169.254.169.254/... reaches a
stand-in for Nova's metadata service through its own host's agent, with the headers
Neutron's metadata agent adds; two VMs with the same address in two projects on one host
are told apart."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sbnet.agent.metadata import signature
from sbnet.agent.netns import BACKENDS, Topology, require_netns
from sbnet.agent.realcloud import RealCloud

SECRET = "metadata-secret"


@pytest.fixture
def nova():
    """A stand-in metadata service on this host's loopback: answers with what it was sent."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


GET = ("import urllib.request,sys\n"
       "print(urllib.request.urlopen('http://169.254.169.254/openstack/latest/meta_data.json',"
       "timeout=10).read().decode())\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_vms_reach_the_metadata_service_with_their_instance_headers(backend, nova):
    require_netns(ovs=backend == "ovs")
    Topology.cleanup_stale()
    with Topology() as topo:
        cloud = RealCloud(topo, backend, metadata=(nova, SECRET))
        try:
            vms = []
            for project in ("p1", "p2"):
                net = cloud.network(project, "10.60.0.0/24")
                router = cloud.api.create("routers", project=project)
                cloud.api.action(f"routers/{router['id']}/add_router_interface",
                                 {"subnet_id": net["subnet"]["id"]})
                vms.append(cloud.vm(f"vm-{project}", project, net, "h1",
                                    device_id=f"instance-{project}",
                                    fixed_ips=[{"ip_address": "10.60.0.10"}]))
            cloud.sync()
            for port, vm in vms:
                res = topo.run(vm, "python3", "-c", GET, check=False, timeout=30)
                assert res.returncode == 0, res.stderr
                got = json.loads(res.stdout)
                h = {k.lower(): v for k, v in got["headers"].items()}   # names are case-blind
                assert got["path"] == "/openstack/latest/meta_data.json"
                assert h["x-instance-id"] == port["device_id"]
                assert h["x-tenant-id"] == port["project_id"]
                assert h["x-forwarded-for"] == "10.60.0.10"
                assert h["x-instance-id-signature"] == signature(SECRET, port["device_id"])
        finally:
            cloud.close()
