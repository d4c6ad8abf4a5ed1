"""The API in a child process on a free port, for tests, benchmarks and `python -m sbnet.api.process`."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(db_url: str | None, port: int | None = None, timeout: float = 60, via_cli: bool = False,
          cwd: str | None = None, extra: list[str] | None = None,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start the server for db_url in its own process; return it and its base URL once it answers.

    via_cli runs the real `sbnet serve` command (db_url None = its default SQLite file in cwd),
    with `extra` options; `env` adds to the environment it inherits.
    """
    port = port or free_port()
    if via_cli:
        cmd = [sys.executable, "-c", "from sbnet.cli.main import app; app()", "serve",
               "--port", str(port)] + (["--db", db_url] if db_url else []) + (extra or [])
    else:
        cmd = [sys.executable, "-m", "sbnet.api.process", "--db", str(db_url), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, cwd=cwd,
                            env={**os.environ, **env} if env else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started by spawn(), by its pid."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    import uvicorn

    from sbnet.api import create_app
    from sbnet.api.app import KEEP_ALIVE_S

    parser = argparse.ArgumentParser(description="Serve the Neutron v2.0 API.")
    parser.add_argument("--db", default="sqlite:///sbnet.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9696)
    args = parser.parse_args()
    uvicorn.run(create_app(args.db), host=args.host, port=args.port, log_level="warning",
                timeout_keep_alive=KEEP_ALIVE_S)


if __name__ == "__main__":
    main()
