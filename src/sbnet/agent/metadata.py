"""The metadata proxy on the host agent's slow path: http://169.254.169.254 for the host's VMs, forwarded to Nova's metadata service with the instance headers Neutron's metadata agent adds."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from sbnet.agent.slowpath import in_netns
from sbnet.compiler.dhcp import METADATA_IP, METADATA_NET

MAX_BODY = 1 << 20


def signature(secret: str, instance_id: str) -> str:
    """X-Instance-ID-Signature as Nova checks it: HMAC-SHA256 of the instance id."""
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


def instance_headers(port: dict, address: str, secret: str) -> dict[str, str]:
    """The headers Neutron's metadata agent adds for the port a request came from."""
    iid = port.get("device_id") or ""
    return {"X-Forwarded-For": address, "X-Instance-ID": iid,
            "X-Tenant-ID": port.get("project_id") or port.get("tenant_id") or "",
            "X-Instance-ID-Signature": signature(secret, iid)}


class MetadataProxy:
    """An HTTP server on 169.254.169.254:80 in the slow-path veth's namespace.  Which port
    asks is told by the source address the switch gave the connection (169.254.0.0/16 plus
    the VIF's ofport); `lookup(ofport)` gives (port, its address) from the agent's model."""

    def __init__(self, upstream: str, secret: str, lookup: Callable[[int], tuple | None],
                 netns: str | None = None, port: int = 80) -> None:
        self.upstream, self.secret, self.lookup = upstream.rstrip("/"), secret, lookup
        self.served = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:      # the agent's own log says enough
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

        with in_netns(netns):              # the listening socket lives in that namespace
            self.server = ThreadingHTTPServer((str(ipaddress.IPv4Address(METADATA_IP)), port),
                                              Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="sbnet-metadata")

    def start(self) -> "MetadataProxy":
        self._thread.start()
        return self

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        ofport = int(ipaddress.IPv4Address(h.client_address[0])) - METADATA_NET
        found = self.lookup(ofport)
        if found is None:
            h.send_error(404, "no port of this host sent that request")
            return
        port, address = found
        length = min(int(h.headers.get("Content-Length") or 0), MAX_BODY)
        body = h.rfile.read(length) if length else None
        req = urllib.request.Request(self.upstream + h.path, data=body, method=h.command,
                                     headers=instance_headers(port, address, self.secret))
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, data, ctype = r.status, r.read(), r.headers.get("Content-Type")
        except urllib.error.HTTPError as exc:
            status, data, ctype = exc.code, exc.read(), exc.headers.get("Content-Type")
        except OSError as exc:
            h.send_error(502, f"metadata service unreachable: {exc}")
            return
        h.send_response(status)
        h.send_header("Content-Type", ctype or "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        self.served += 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
