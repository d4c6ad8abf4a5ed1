"""Real traffic through the kernel tier: two VMs in namespaces, a stateful security group, the reference switch as slow path."""

import contextlib
import json
import time

import pytest

from sbnet.datapath.ebpf.setups import VM_GROUP
from tests.ebpf.conftest import require_bpf

FLOWS = VM_GROUP


@contextlib.contextmanager
def vms_on_kernel_tier(flows: str, offloads: bool = False, xdp: str | None = None):
    """Host namespace h with the kernel tier on tap1 and tap2, VMs vm1 (10.0.0.1) and vm2
    (10.0.0.2); offloads: the VMs keep checksum and segmentation offload (GSO packets);
    xdp: the XDP program too (native: GRO on at the VMs' ends, so they take its frames)."""
    require_bpf()
    from sbnet.agent.netns import Topology, require_netns, sh
    from sbnet.datapath.ebpf.datapath import EbpfDatapath
    require_netns()
    Topology.cleanup_stale()
    with Topology() as topo:
        host = topo.add_namespace("h")
        vms = []
        for i in (1, 2):
            ns = topo.add_namespace(f"vm{i}")
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"tap{i}",
               "netns", host)
            sh("ip", "-n", ns, "link", "set", "eth0", "address", f"02:00:00:00:00:0{i}", "up")
            sh("ip", "-n", ns, "addr", "add", f"10.0.0.{i}/24", "dev", "eth0")
            if not offloads:
                # The slow path sends with AF_PACKET, which fills in no checksum left to the NIC.
                sh("ethtool", "-K", "eth0", "tx", "off", netns=ns)
            if xdp == "native":
                sh("ethtool", "-K", "eth0", "gro", "on", netns=ns)
            sh("ip", "-n", host, "link", "set", f"tap{i}", "arp", "off", "up")
            vms.append(ns)
        dp = EbpfDatapath(netns=host, maintain_every=0.5, xdp=xdp)
        try:
            dp.attach(1, "tap1")
            dp.attach(2, "tap2")
            from sbnet.flows.ofctl import parse_file
            dp.bundle(add=parse_file(flows).flows)
            dp.start()
            yield topo, dp, vms
        finally:
            dp.close()


@pytest.fixture
def two_vms():
    with vms_on_kernel_tier(FLOWS) as env:
        yield env


def test_stateful_tcp_runs_in_the_kernel_after_the_first_packets(two_vms):
    from sbnet.agent.netns import sh
    topo, dp, (vm1, vm2) = two_vms
    # Once answered, a ping runs in the kernel: its connection's two entries count its
    # later requests and replies (the first ones went up).  (A slow path lagging behind a
    # loaded machine sends a few more up: then another ping, a new id, is looked at.)
    for _ in range(3):
        seen = {c[:6] for c in dp.tier.conns_kept() if c[1] == 1}
        assert sh("ping", "-c", "5", "-i", "0.2", "-W", "2", "10.0.0.2", netns=vm1).returncode == 0
        pings = [c[:6] for c in dp.tier.conns_kept() if c[1] == 1 and c[:6] not in seen]
        counted = [dp.tier.conn_used(*c)[0] for c in pings]
        if len(pings) == 2 and min(counted) >= 2:
            break
    assert len(pings) == 2 and min(counted) >= 2, (pings, counted)
    server = topo.popen("vm2", "iperf3", "-s", "-1", "-B", "10.0.0.2")
    try:
        import time
        time.sleep(0.5)
        res = sh("iperf3", "-c", "10.0.0.2", "-t", "2", "-J", netns=vm1, timeout=30)
        gbps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.wait(timeout=10)
    st = dp.kernel_stats()
    # The connection's first packets went up; the rest stayed in the kernel.
    assert st["hit"] > 20 * max(1, st["upcall"]), st
    assert gbps > 0.2, gbps
    # Into a VM the kernel delivers at its end's ingress (bpf_redirect_peer): the host
    # end transmits only what the slow path sent, a handful against the transfer's many.
    link = json.loads(sh("ip", "-s", "-j", "link", "show", "tap2", netns=topo.ns_name("h")).stdout)[0]
    assert link["stats64"]["tx"]["packets"] < 100 < st["hit"], (link["stats64"], st)
    # The kernel's counts are folded into the rules: the +est rules carried the transfer.
    est = [s for s in dp.dump_flows() if "+est" in str(s.flow)]
    assert sum(s.n_packets for s in est) > 1000, [(str(s.flow), s.n_packets) for s in est]
    # A new connection of a protocol the kernel commits none of (SCTP): its megaflow stays
    # in software, and the dump says why.
    sh("python3", "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)"
       ".sendto(bytes(12), ('10.0.0.2', 0))", netns=vm1)
    for _ in range(50):
        lines = dp.dump_megaflows()
        if any("tier:software (ebpf:" in ln for ln in lines):
            break
        time.sleep(0.1)
    assert any("tier:ebpf" in ln for ln in lines), lines
    assert any("tier:software (ebpf:" in ln and "but for UDP, TCP and ICMP" in ln for ln in lines), lines
    # A rule change reaches the kernel at once: no packet follows the deleted rule.
    from sbnet.flows.ofctl import parse_file
    gone = [f for f in parse_file(FLOWS).flows if f.table == 1 and "in_port=1" in str(f)]
    dp.delete_flows(gone)
    assert sh("ping", "-c", "2", "-i", "0.2", "-W", "1", "10.0.0.2", netns=vm1, check=False).returncode != 0


ECHO = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.0.0.2", 7000))
s.listen(16)
print("ready", flush=True)
for _ in range(int(sys.argv[1])):
    c, _ = s.accept()
    c.sendall(c.recv(16))
    c.close()
"""
CONNECT = """
import socket, sys
for _ in range(int(sys.argv[1])):
    c = socket.create_connection(("10.0.0.2", 7000), timeout=5)
    c.sendall(b"x")
    assert c.recv(16) == b"x"
    c.close()
"""


def test_tcp_connections_between_real_stacks_are_set_up_in_the_kernel(two_vms):
    """Once one connection has brought the megaflows in, new TCP connections between the
    VMs' own stacks are committed on their SYN and established by the kernel (their
    handshakes never go up: no handover, no upcall before their FINs), and the slow
    path's conntrack learns each from the kernel's events."""
    import subprocess
    import sys
    from sbnet.agent.netns import sh
    topo, dp, (vm1, vm2) = two_vms
    n = 5
    server = topo.popen("vm2", sys.executable, "-c", ECHO, str(n + 1), stdout=subprocess.PIPE)
    try:
        assert server.stdout.readline().strip() == "ready"
        sh(sys.executable, "-c", CONNECT, "1", netns=vm1, timeout=30)       # the warm-up
        before = dp.kernel_stats()
        sh(sys.executable, "-c", CONNECT, str(n), netns=vm1, timeout=30)
        after = dp.kernel_stats()
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    grew = {k: after[k] - before[k] for k in ("ct_commit", "ct_established", "ct_handover")}
    assert grew == {"ct_commit": n, "ct_established": n, "ct_handover": 0}, grew
    import time
    deadline = time.monotonic() + 10           # the events are taken at the slow path's next drain
    while True:
        with dp.lock:
            held = [ln for ln in dp.switch.conntrack.dump(7) if "dport=7000" in ln]
        if len(held) == n + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(held) == n + 1, held


def test_vxlan_between_two_hosts_runs_in_the_kernel():
    """Two hosts on the ebpf backend joined by VXLAN (kernel collect_md devices): after the
    first packets every packet is encapsulated and decapsulated by the kernel tier."""
    require_bpf()
    from sbnet.agent.netns import Topology, overlay_pair, require_netns
    require_netns()
    Topology.cleanup_stale()
    with Topology() as topo:
        p = overlay_pair(topo, "ebpf")
        assert topo.ping(p.vm1, p.vm2.address, count=3, interval=0.2).returncode == 0
        srv = topo.popen(p.vm2, "iperf3", "-s", "-1", "-p", "5201")
        import time
        time.sleep(0.5)
        res = topo.run(p.vm1, "iperf3", "-c", p.vm2.address, "-p", "5201", "-t", "2", "-J",
                       check=False, timeout=60)
        srv.wait(timeout=10)
        rep = json.loads(res.stdout)
        assert not rep.get("error"), rep.get("error")
        for h in (p.h1, p.h2):
            st = h.datapath.kernel_stats()
            assert st["hit"] > 50 * max(1, st["upcall"]), (h.name, st)
            lines = h.datapath.dump_megaflows()
            assert all("tier:ebpf" in ln for ln in lines), lines


def test_xdp_forwards_pings_and_leaves_offloaded_tcp_to_tc():
    """Native XDP on both ports: an answered ping's packets are forwarded at XDP (its
    counters say so), and TCP from VMs that
    leave checksums to the NIC passes to the TC program, whole and intact."""
    from sbnet.agent.netns import sh
    with vms_on_kernel_tier(FLOWS, offloads=True, xdp="native") as (topo, dp, (vm1, vm2)):
        assert sh("ping", "-c", "5", "-i", "0.1", "-W", "2", "10.0.0.2", netns=vm1).returncode == 0
        st = dp.kernel_stats()
        assert st["xdp_forward"] >= 4, st
        server = topo.popen("vm2", "python3", "-c", SINK, stdin=None)
        assert server.stdout.readline().strip() == "ready"
        sh("python3", "-c", SOURCE, str(1 << 20), netns=vm1, timeout=60)
        out, _ = server.communicate(timeout=30)
        assert int(out) == 1 << 20
        assert dp.kernel_stats()["xdp_pass"] > st["xdp_pass"]


# Every TCP segment stays in the slow path (a ct() setting a label is the slow path's).
SLOW_TCP = """\
table=0,priority=20,arp,in_port=1 actions=output:2
table=0,priority=20,arp,in_port=2 actions=output:1
table=0,priority=10,tcp,in_port=1 actions=ct(commit,zone=3,exec(set_field:1->ct_label)),output:2
table=0,priority=10,tcp,in_port=2 actions=ct(commit,zone=3,exec(set_field:1->ct_label)),output:1
table=0,priority=1 actions=drop
"""


def test_gso_packets_going_up_are_segmented_and_switched():
    """A VM with TSO on sends 64 kB GSO packets; its flow's megaflows stay in software, so
    they all go up: each comes up whole in a ring record of its own, is cut into its
    segments (checksums completed) and reaches the other VM."""
    from sbnet.agent.netns import sh
    size = 1 << 20
    with vms_on_kernel_tier(SLOW_TCP, offloads=True) as (topo, dp, (vm1, vm2)):
        server = topo.popen("vm2", "python3", "-c", SINK, stdin=None)
        assert server.stdout.readline().strip() == "ready"
        sh("python3", "-c", SOURCE, str(size), netns=vm1, timeout=60)
        out, _ = server.communicate(timeout=30)
        assert int(out) == size
        assert dp.gso_upcalls > 0 and dp.truncated == 0, (dp.gso_upcalls, dp.truncated)
        assert dp.kernel_stats()["upcall_lost"] == 0
        assert all(p.tx_errors == 0 for p in dp.switch.ports.values() if hasattr(p, "tx_errors"))


# A TCP sink in vm2 printing the bytes it got, and a source in vm1 sending argv[1] bytes.
SINK = """
import socket
s = socket.socket()
s.bind(("10.0.0.2", 5001))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
n = 0
while d := c.recv(1 << 16):
    n += len(d)
print(n)
"""
SOURCE = """
import socket, sys
c = socket.create_connection(("10.0.0.2", 5001), timeout=30)
c.sendall(bytes(int(sys.argv[1])))
c.shutdown(socket.SHUT_WR)
c.recv(1)
"""


@pytest.mark.parametrize("kind,peer", [("gre", "ebpf"), ("geneve", "ebpf"), ("geneve", "ovs")])
def test_gre_and_geneve_are_carried_by_the_slow_path(kind, peer):
    """This kernel has no GRE or Geneve device: the slow path carries those tunnels through
    the host's own IP stack (a raw GRE socket, a UDP socket on Geneve's port), to its own
    kind and to Open vSwitch.  Pings and a TCP stream cross; the megaflows into the tunnel
    stay in software and say why."""
    require_bpf()
    from sbnet.agent.netns import Topology, overlay_pair, require_netns, sh
    require_netns()
    Topology.cleanup_stale()
    with Topology() as topo:
        p = overlay_pair(topo, "ebpf", peer, kind=kind)
        assert topo.ping(p.vm1, p.vm2.address, count=3, interval=0.2).returncode == 0
        server = topo.popen(p.vm2, "python3", "-c", SINK, stdin=None)
        assert server.stdout.readline().strip() == "ready"
        sh("python3", "-c", SOURCE, str(1 << 20), netns=p.vm1.netns, timeout=60)
        out, _ = server.communicate(timeout=30)
        assert int(out) == 1 << 20
        lines = p.h1.datapath.dump_megaflows()
        out_tunnel = [ln for ln in lines if "output:100" in ln or "tnl_push" in ln]
        assert out_tunnel, lines
        assert all("tier:software (" in ln for ln in out_tunnel), out_tunnel
        # Its packets come in through the host's stack, never through the program.
        into = [ln for ln in lines if "in_port=100," in ln]
        assert into and all("has no kernel device" in ln for ln in into), into
