"""The reference switch as a daemon of its own (as ovs-vswitchd is), so that it outlives a restart of its agent: `python -m sbnet.agent.switchd SOCKET NAME [NETNS [NICE]]`, and the agent's client."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from sbnet.datapath.afpacket import RemoteDatapath

# What a client may call: the Datapath methods of a switch process, and `ports`.
METHODS = (*RemoteDatapath.methods, "ports")
# The daemon's niceness, as ovs-ctl starts ovs-vswitchd (--ovs-vswitchd-priority): the
# packet loop keeps its share of the CPU while an agent (re)starts or compiles beside it.
PRIORITY = -10


def serve(path: str, name: str, netns: str | None, priority: int = PRIORITY) -> None:
    """Take its scheduling priority, enter the namespace, run the switch's loop, answer one
    client at a time on a Unix socket (mode 0600) until a client asks it to `shutdown`."""
    from sbnet.datapath.afpacket import CLONE_NEWNET, AfPacketDatapath
    from sbnet.datapath.ports import Port
    from sbnet.datapath.switch import Switch
    # Before any thread starts: Linux keeps a niceness per thread, new threads inherit it.
    with contextlib.suppress(PermissionError):    # without CAP_SYS_NICE: the default one
        os.setpriority(os.PRIO_PROCESS, 0, priority)
    if netns:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(netns if netns.startswith("/") else f"/run/netns/{netns}", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        os.close(fd)
    dp = AfPacketDatapath(Switch(name)).start()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    os.chmod(path, 0o600)
    lsock.listen(1)
    with open(path + ".pid", "w") as f:
        f.write(f"{os.getpid()}\n")
    running = True
    while running:
        conn = Connection(lsock.accept()[0].detach())
        while True:
            try:
                method, args, kw = conn.recv()
            except (EOFError, OSError):             # the agent went away: keep switching
                break
            if method == "shutdown":
                running = False
                break
            try:
                if method == "ports":
                    value = {p.name: num for num, p in dp.switch.ports.items()}
                elif method in METHODS:
                    value = getattr(dp, method)(*args, **kw)
                else:
                    raise AttributeError(method)
                conn.send((True, None if isinstance(value, Port) else value))
            except Exception as exc:                # the caller gets it raised
                conn.send((False, exc))
        conn.close()
    dp.close()
    lsock.close()
    for p in (path, path + ".pid"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


class SwitchClient(RemoteDatapath):
    """The agent's handle on a switch daemon: the Datapath methods, forwarded.  connect()
    starts the daemon when none answers at `path` (`started` says so); close() leaves it
    running, shutdown() stops it."""

    def __init__(self, path: str, sock: socket.socket, started: bool) -> None:
        self.path, self.started = path, started
        self._conn = Connection(sock.detach())
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, path: str, name: str = "br-sbnet", netns: str | None = None,
                timeout: float = 20.0, priority: int = PRIORITY) -> "SwitchClient":
        started = False
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return cls(path, sock, started)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            if not started:
                os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
                proc = subprocess.Popen([sys.executable, "-m", "sbnet.agent.switchd", path,
                                         name, netns or "", str(priority)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
                # Its pid at once (the daemon writes it again when it listens): whoever
                # stops it finds it even while it is still starting.
                with open(path + ".pid", "w") as f:
                    f.write(f"{proc.pid}\n")
                started = True
            if time.monotonic() > deadline:
                raise RuntimeError(f"the switch daemon at {path} did not answer")
            time.sleep(0.1)

    def pid(self) -> int | None:
        try:
            return int(open(self.path + ".pid").read())
        except (OSError, ValueError):
            return None

    methods = METHODS

    def _gone(self) -> str:
        return f"the switch daemon at {self.path} is gone"

    def close(self) -> None:
        """Let go of the daemon; it keeps switching (a restart takes it up again)."""
        self._conn.close()

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.send(("shutdown", (), {}))
        self._conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None,
          int(sys.argv[4]) if len(sys.argv) > 4 else PRIORITY)
