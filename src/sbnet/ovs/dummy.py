"""A private Open vSwitch on the dummy datapath, used as the oracle our switch is compared with."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
PKGDATADIR = "/usr/share/openvswitch"


class OVSError(RuntimeError):
    """An OVS command or daemon failed; the message carries its stderr."""


def ovs_available() -> bool:
    """True when ovs-vswitchd is installed (the other tools come in the same package)."""
    return bool(shutil.which("ovs-vswitchd")) or os.path.exists("/usr/sbin/ovs-vswitchd")


def require_ovs() -> None:
    """Skip the calling test when OVS is missing, except in CI (CI=true) where it fails."""
    import pytest

    if ovs_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Open vSwitch (ovs-vswitchd) is required in CI but is not installed")
    pytest.skip("Open vSwitch (ovs-vswitchd) is not installed")


def _binary(name: str) -> str:
    for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if path and os.path.exists(path):
            return path
    raise OVSError(f"{name} not found")


@dataclass(frozen=True)
class TraceResult:
    """One ofproto/trace answer.

    `datapath_actions` and `megaflow` are the first pass (the packet as received,
    recirc_id=0); after a recirculation (ct(table=..), select groups) the trace goes
    on in further passes, all listed in `passes` as (megaflow, datapath actions).
    """

    text: str
    flow: str                     # the "Flow:" line of the first pass
    datapath_actions: str         # text after "Datapath actions: "
    megaflow: str                 # text after "Megaflow: "
    passes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "TraceResult":
        flows, megaflows, actions = [], [], []
        for line in text.splitlines():
            if line.startswith("Flow: "):
                flows.append(line[len("Flow: "):].strip())
            elif line.startswith("Megaflow: "):
                megaflows.append(line[len("Megaflow: "):].strip())
            elif line.startswith("Datapath actions: "):
                actions.append(line[len("Datapath actions: "):].strip())
        if not actions:
            raise OVSError(f"no 'Datapath actions:' in trace output:\n{text}")
        megaflows += [""] * (len(actions) - len(megaflows))
        return cls(text, flows[0] if flows else "", actions[0], megaflows[0],
                   tuple(zip(megaflows, actions)))


class UnixctlClient:
    """One kept-open JSON-RPC connection to a daemon's unixctl socket (ovs-appctl's protocol)."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._buf = ""
        self._id = 0
        self._decoder = json.JSONDecoder()
        # One request at a time: a host agent's thread and the test or tool that built the
        # host share the connection, and a reply read by the wrong caller is lost to the other.
        self._lock = threading.Lock()

    def call(self, method: str, *params: str) -> str:
        """Run one unixctl command; its text result, or OVSError with its error text."""
        with self._lock:
            self._id += 1
            ident = self._id
            req = {"method": method, "params": list(params), "id": ident}
            self.sock.sendall(json.dumps(req).encode())
            while True:
                msg = self._next_message()
                if msg is not None and msg.get("id") == ident:
                    break
        if msg.get("error") is not None:
            raise OVSError(f"{method} {' '.join(params)}: {msg['error']}")
        return msg.get("result") or ""

    def _next_message(self) -> dict | None:
        while True:
            stripped = self._buf.lstrip()
            if stripped:
                try:
                    obj, end = self._decoder.raw_decode(stripped)
                except json.JSONDecodeError:
                    obj = None
                if obj is not None:
                    self._buf = stripped[end:]
                    return obj
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise OVSError(f"unixctl connection {self.path} closed")
            self._buf += chunk.decode()

    def close(self) -> None:
        self.sock.close()


class DummyOVS:
    """ovsdb-server + ovs-vswitchd (--enable-dummy=override) in a private temp dir.

    Use as a context manager.  One bridge (datapath_type=dummy, fail_mode=secure)
    with `n_ports` dummy ports p1..pN at OpenFlow ports 1..N.  Several instances
    may run at once; none touches a system OVS.

    With dummy=False the daemons run without the dummy datapath and make no bridge
    (sbnet.ovs.backend.OvsDatapath makes netdev bridges on real interfaces); `netns`
    starts both daemons inside that network namespace (one netdev datapath per
    namespace); `other_config` is written before ovs-vswitchd starts, as hw-offload
    is read only then.
    """

    def __init__(self, n_ports: int = 4, bridge: str = "br0", vlan_limit: int = 2, *,
                 dummy: bool = True, netns: str | None = None,
                 other_config: dict[str, str] | None = None):
        self.n_ports = n_ports
        self.bridge = bridge
        self.vlan_limit = vlan_limit
        self.dummy = dummy
        self.netns = netns
        self.other_config = dict(other_config or {})
        self.dir: str | None = None
        self.env: dict[str, str] = {}
        self._procs: list[subprocess.Popen] = []
        self._ctl: UnixctlClient | None = None
        self._port_map: dict[int, int] | None = None

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> "DummyOVS":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sbnet-ovs-")
        atexit.register(self.stop)      # daemons run in their own session: never orphan them
        d = self.dir
        self.env = dict(os.environ, OVS_RUNDIR=d, OVS_DBDIR=d, OVS_LOGDIR=d,
                        OVS_PKGDATADIR=PKGDATADIR, OVS_SYSCONFDIR=d)
        try:
            self._run(["ovsdb-tool", "create", f"{d}/conf.db", SCHEMA])
            self._spawn(["ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock",
                         f"--unixctl={d}/ovsdb-server.ctl", f"--pidfile={d}/ovsdb-server.pid",
                         f"--log-file={d}/ovsdb-server.log", "--no-chdir"], f"{d}/db.sock")
            self._vsctl("--no-wait", "init")
            config = {"vlan-limit": str(self.vlan_limit), **self.other_config}
            self._vsctl("--no-wait", "set", "Open_vSwitch", ".",
                        *(f"other_config:{k}={v}" for k, v in config.items()))
            self._spawn(["ovs-vswitchd", f"unix:{d}/db.sock",
                         *(["--enable-dummy=override"] if self.dummy else []),
                         "--disable-system", f"--unixctl={d}/ovs-vswitchd.ctl",
                         f"--pidfile={d}/ovs-vswitchd.pid", f"--log-file={d}/ovs-vswitchd.log",
                         "--no-chdir", "-vconsole:off"], f"{d}/ovs-vswitchd.ctl")
            self._ctl = _connect_unixctl(f"{d}/ovs-vswitchd.ctl")
            if not self.dummy:
                return
            cmd = ["add-br", self.bridge, "--", "set", "Bridge", self.bridge,
                   "datapath_type=dummy", "fail_mode=secure", "protocols=OpenFlow10,OpenFlow11,"
                   "OpenFlow12,OpenFlow13,OpenFlow14,OpenFlow15"]
            for i in range(1, self.n_ports + 1):
                cmd += ["--", "add-port", self.bridge, f"p{i}", "--", "set", "Interface",
                        f"p{i}", "type=dummy", f"ofport_request={i}"]
            self._vsctl(*cmd)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both daemons by their own pids and remove the directory (idempotent)."""
        atexit.unregister(self.stop)
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        # vswitchd first (it is a client of the db), each by its own pid.
        stop_processes(self._procs)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    @property
    def pids(self) -> list[int]:
        """Process ids of the daemons this instance started and that still run."""
        return [p.pid for p in self._procs if p.poll() is None]

    def _spawn(self, argv: list[str], ready_path: str, timeout: float = 20.0) -> None:
        log = open(f"{self.dir}/{argv[0]}.out", "wb")
        # `ip netns exec` execs the daemon in place: the pid stays the daemon's own.
        inside = ["ip", "netns", "exec", self.netns] if self.netns else []
        proc = subprocess.Popen(inside + [_binary(argv[0])] + argv[1:], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._procs.append(proc)
        deadline = time.monotonic() + timeout
        while not _ready(ready_path):
            if proc.poll() is not None:
                raise OVSError(f"{argv[0]} exited with {proc.returncode}: {self._log_tail(argv[0])}")
            if time.monotonic() > deadline:
                raise OVSError(f"{argv[0]} did not create {ready_path}: {self._log_tail(argv[0])}")
            time.sleep(0.01)

    def _log_tail(self, name: str) -> str:
        texts = []
        for suffix in (".out", ".log"):
            try:
                with open(f"{self.dir}/{name}{suffix}") as f:
                    texts.append(f.read()[-2000:])
            except OSError:
                pass
        return "\n".join(texts)

    # -- running tools ---------------------------------------------------
    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        return run_tool(argv, self.env, stdin)

    def _vsctl(self, *args: str) -> str:
        return self._run(["ovs-vsctl", f"--db=unix:{self.dir}/db.sock", "--timeout=30", *args])

    def vsctl(self, *args: str) -> str:
        """Run ovs-vsctl against this instance's database."""
        self._port_map = None
        return self._vsctl(*args)

    def ofctl(self, cmd: str, *args: str, options: tuple[str, ...] = (),
              stdin: str | None = None) -> str:
        """Run `ovs-ofctl -O OpenFlow15 [options] cmd <bridge> args...` on this bridge."""
        return self._run(["ovs-ofctl", "-O", "OpenFlow15", *options, cmd,
                          f"unix:{self.dir}/{self.bridge}.mgmt", *args], stdin=stdin)

    def appctl(self, method: str, *params: str) -> str:
        """Run an ovs-vswitchd unixctl command over the kept-open control connection."""
        if self._ctl is None:
            raise OVSError("DummyOVS is not running")
        try:
            return self._ctl.call(method, *params)
        except TimeoutError:
            # Seen once on a loaded machine: a connection made as the daemon started was
            # never served.  A fresh connection gets an answer, or the daemon is wedged.
            self._ctl.close()
            self._ctl = _connect_unixctl(self._ctl.path)
            return self._ctl.call(method, *params)

    # -- flows, groups, meters -------------------------------------------
    def add_flows(self, text: str) -> None:
        """Add flows (ovs-ofctl syntax, one per line) atomically in one bundle."""
        self.ofctl("add-flows", "-", options=("--bundle",), stdin=_lines(text))

    def replace_flows(self, text: str, groups: str = "", meters: str = "") -> None:
        """Delete all flows, groups and meters, then load the given ones."""
        self.ofctl("del-flows")
        self.ofctl("del-groups")
        self.ofctl("del-meters")
        if meters.strip():
            self.add_meters(meters)
        if groups.strip():
            self.add_groups(groups)
        if text.strip():
            self.add_flows(text)

    def add_groups(self, text: str) -> None:
        self.ofctl("add-groups", "-", stdin=_lines(text))

    def add_meters(self, text: str) -> None:
        for line in _lines(text).splitlines():
            self.ofctl("add-meter", line)

    def dump_flows(self) -> str:
        return self.ofctl("dump-flows", "--no-stats")

    # -- tracing ---------------------------------------------------------
    def trace(self, in_port: int, packet: bytes, extra: str = "") -> TraceResult:
        """ofproto/trace of `packet` arriving on OpenFlow port `in_port`.

        `extra` adds metadata to the flow, e.g. "reg0=1" or "recirc_id=0x5,ct_state=...".
        """
        flow = f"in_port={in_port}" + (f",{extra}" if extra else "")
        return TraceResult.parse(self.appctl("ofproto/trace", self.bridge, flow, packet.hex()))

    def trace_flow(self, flow: str) -> TraceResult:
        """ofproto/trace of a flow written in ovs-ofctl match syntax (no packet)."""
        return TraceResult.parse(self.appctl("ofproto/trace", self.bridge, flow))

    def dpif_port_map(self) -> dict[int, int]:
        """Datapath port number -> OpenFlow port number, from dpif/show."""
        if self._port_map is None:
            text = self.appctl("dpif/show")
            pm = {}
            for m in re.finditer(r"^\s+\S+ (\d+)/(\d+):", text, re.M):
                pm[int(m.group(2))] = int(m.group(1))
            self._port_map = pm
        return self._port_map

    # -- packets and conntrack -------------------------------------------
    def capture(self, port: int) -> None:
        """Start writing packets sent on OpenFlow port `port` to its pcap (see `sent`)."""
        path = self._pcap_path(port)
        self._vsctl("set", "Interface", f"p{port}", f"options:tx_pcap={path}")
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise OVSError(f"tx_pcap for p{port} was not created")
            time.sleep(0.01)

    def sent(self, port: int, expect: int = 0, timeout: float = 2.0) -> list[bytes]:
        """Packets transmitted on `port` since `capture(port)`.

        With `expect`, waits up to `timeout` seconds for at least that many.
        """
        deadline = time.monotonic() + timeout
        while True:
            pkts = read_pcap(self._pcap_path(port))
            if len(pkts) >= expect or time.monotonic() > deadline:
                return pkts
            time.sleep(0.005)

    def receive(self, port: int, packet: bytes) -> None:
        """Inject `packet` as if it arrived on OpenFlow port `port` and let the datapath run.

        The dummy port's queue is served by vswitchd's main loop, the loop that also
        answers unixctl; one more request after the receive waits for that pass.
        """
        self.appctl("netdev-dummy/receive", f"p{port}", packet.hex())
        self.appctl("version")

    def dump_conntrack(self) -> str:
        return self.appctl("dpctl/dump-conntrack")

    def flush_conntrack(self) -> None:
        self.appctl("dpctl/flush-conntrack")

    def _pcap_path(self, port: int) -> str:
        return f"{self.dir}/p{port}-tx.pcap"


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Stop daemons by their own pids, last started first (clients before their servers);
    empties the list."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    procs.clear()


def run_tool(argv: list[str], env: dict, stdin: str | None = None) -> str:
    """Run an OVS tool; its output, or OVSError with its error text."""
    res = subprocess.run([_binary(argv[0])] + argv[1:], env=env, input=stdin,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise OVSError(f"{' '.join(argv[:4])} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _connect_unixctl(path: str, timeout: float = 10.0) -> UnixctlClient:
    """Connect to a daemon's control socket, which exists a moment before it listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return UnixctlClient(path)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _lines(text: str) -> str:
    """Non-empty, non-comment lines, stripped, newline-terminated."""
    out = [ln.strip() for ln in text.splitlines()]
    return "".join(ln + "\n" for ln in out if ln and not ln.startswith("#"))


def read_pcap(path: str) -> list[bytes]:
    """Packet bytes from a classic pcap file (tolerates a partly written last record)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        if off + 16 + incl > len(data):
            break
        out.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return out


def _ready(path: str) -> bool:
    """A daemon's file is there; a socket also accepts (the daemon binds it before it
    listens: a loaded machine's clients met "Connection refused" in between)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not stat.S_ISSOCK(mode):
        return True
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
