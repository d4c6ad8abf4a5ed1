"""octavia-lib's venv, and the far end of its driver library's sockets (Octavia's driver agent) for the provider driver's tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"


def octavia_python() -> str:
    """The octavia-lib venv's python (scripts/octavia-venv makes it on first use); in CI a venv
    that cannot be made fails the test, elsewhere it skips it."""
    try:
        out = subprocess.run([str(REPO / "scripts" / "octavia-venv")], check=True,
                             capture_output=True, text=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        err = getattr(exc, "stderr", "") or ""
        if IN_CI:
            pytest.fail(f"scripts/octavia-venv failed, and CI must run these tests: {exc} "
                        f"{err[-500:]}")
        pytest.skip(f"no octavia-lib venv (scripts/octavia-venv failed: {exc})")
    return out.stdout.strip().splitlines()[-1]


class DriverAgent:
    """Octavia's driver agent as the driver library meets it: three Unix sockets (status,
    statistics, get), each request a length line and a JSON body, each answer the same; the
    status updates received are kept in order; the get socket answers that Octavia holds
    every object asked for (this Octavia commits at once) but those it `rolled_back`."""

    def __init__(self, directory: Path, rolled_back: frozenset[str] = frozenset()) -> None:
        self.rolled_back = rolled_back      # creates whose transaction this Octavia rolled back
        self.updates: list[dict] = []
        self.stats: list[dict] = []
        self.paths = {f"{kind}_socket": str(directory / f"{kind}.sock")
                      for kind in ("status", "stats", "get")}
        self.socks = []
        self.lock = threading.Lock()
        for kind, path in self.paths.items():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            s.listen(8)
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s, kind), daemon=True).start()

    def _serve(self, sock: socket.socket, kind: str) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rb")
                size = int(f.readline())
                body = json.loads(f.read(size))
                with self.lock:
                    if kind == "status_socket":
                        self.updates.append(body)
                    elif kind == "stats_socket":
                        self.stats.append(body)
                if kind == "get_socket":    # Octavia has committed every object asked for
                    reply = {} if body["id"] in self.rolled_back else \
                        {f"{body['object'].rstrip('s')}_id": body["id"]}
                else:
                    reply = {"status_code": 200}
                answer = json.dumps(reply).encode()
                conn.sendall(f"{len(answer)}\n".encode() + answer)

    def latest(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(kind, id) -> (provisioning, operating) status, as Octavia's records now hold them
        (an update without one of them leaves it as it was)."""
        out: dict = {}
        with self.lock:
            for update in self.updates:
                for kind, items in update.items():
                    for x in items:
                        was = out.get((kind, x["id"]), (None, None))
                        out[(kind, x["id"])] = (x.get("provisioning_status") or was[0],
                                                x.get("operating_status") or was[1])
        return out

    def close(self) -> None:
        for s in self.socks:
            s.close()
        for path in self.paths.values():
            Path(path).unlink(missing_ok=True)
