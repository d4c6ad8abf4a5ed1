"""A switch process with the datapath already imported that forks each host's switch."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading


class Zygote:
    """One process that imports the datapath once (numpy, numba and the compiled kernels
    take seconds to load) and forks a switch process per request in milliseconds.

    A topology of namespaces starts a switch per simulated host, many times over in a test
    run or a demo; each fresh interpreter paid the imports again.  The forked switch serves
    the caller's end of a socket pair exactly as a freshly started one does.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self._lock = threading.Lock()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from sbnet.datapath.zygote import _main; _main()",
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        self._sock = ours

    def fork(self, name: str, netns: str | None, kind: str, fd: int) -> Forked:
        """A switch process serving `fd` (the child's end of a socket pair, which the
        caller closes afterwards) for switch `name` in `netns`."""
        request = json.dumps([name, netns or "", kind]).encode()
        with self._lock:
            try:
                socket.send_fds(self._sock, [request], [fd])
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = self._sock.recv(64)
                    if not chunk:
                        raise EOFError
                    answer += chunk
            except (EOFError, OSError) as exc:
                raise RuntimeError(f"switch zygote {self.proc.pid} is gone "
                                   f"(exit code {self.proc.poll()})") from exc
        return Forked(int(answer))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """End the zygote (its forked switches live on until their own callers close them)."""
        self._sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


class Forked:
    """A forked switch process as the caller sees it: Popen's poll/wait/kill by a pidfd,
    since the zygote, not the caller, is its parent (and reaps it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:         # already gone
            self._fd, self.returncode = None, -1

    def poll(self) -> int | None:
        if self._fd is not None and select.select([self._fd], [], [], 0)[0]:
            self._ended()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._fd is not None:
            if not select.select([self._fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"switch process {self.pid}", timeout or 0)
            self._ended()
        return self.returncode

    def kill(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._fd, signal.SIGKILL)

    def _ended(self) -> None:
        # The exit status went to the zygote: -1 says "ended, status unknown here".
        os.close(self._fd)
        self._fd, self.returncode = None, -1


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def shared() -> Zygote:
    """This process's zygote, started on first use and ended at exit."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive():
            _shared = Zygote()
            atexit.register(_shared.close)
        return _shared


def _main() -> None:
    """The zygote: import the datapath, then fork a switch per request until the caller
    closes the socket.  Children are reaped by the kernel (SIGCHLD ignored)."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    from sbnet.datapath import afpacket
    afpacket.warm()
    with contextlib.suppress(ImportError):     # the kernel tier, where its modules import
        import sbnet.datapath.ebpf.datapath    # noqa: F401
        from sbnet.datapath.ebpf.tier import profile
        profile()                              # its placement profile, parsed once for all
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
        except OSError:
            break
        if not msg:
            break
        name, netns, kind = json.loads(msg)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                sock.close()
                os.setsid()
                # The switch runs commands of its own (ip, bpftool) and waits for them.
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                from multiprocessing.connection import Connection
                afpacket._serve(Connection(fds[0]), name, netns or None, kind)
            except BaseException:
                code = 1
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(fds[0])
        sock.sendall(f"{pid}\n".encode())
