"""Two hosts, one VM each, VXLAN over an underlay: real traffic through OVS netdev and the reference switch."""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from sbnet.agent.netns import overlay_pair
from sbnet.datapath.switch import UnsupportedFlow
from sbnet.flows import actions as A
from sbnet.flows.ofctl import parse_flow
from sbnet.ovs.dummy import OVSError
from tests.agent.conftest import TUNNEL_OFPORT

pytestmark = [pytest.mark.root, pytest.mark.ovs]

# A receiver that hashes what it gets and prints the digest and byte count.
SINK = ("import hashlib,socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        "s.bind(('0.0.0.0',{port}));s.listen(1);print('ready',flush=True);c,_=s.accept();h=hashlib.sha256();n=0\n"
        "while True:\n d=c.recv(65536)\n if not d: break\n h.update(d);n+=len(d)\n"
        "print(h.hexdigest(),n,flush=True)")
SOURCE = ("import socket,sys;s=socket.create_connection(('{ip}',{port}),timeout=20);"
          "s.sendall(bytes.fromhex(sys.stdin.read().strip()));s.close()")


def icmp_counts(host, vm) -> tuple[int, int]:
    """Packets counted by the ICMP rules to and from the tunnel on `host` (VM -> tunnel, tunnel -> VM)."""
    out = inn = 0
    for s in host.datapath.dump_flows():
        m = {n: v for n, v, _ in s.flow.match.items}
        if s.flow.priority == 110 and m.get("ip_proto") == 1:
            if m.get("in_port") == vm.ofport:
                out = s.n_packets
            elif m.get("in_port") == TUNNEL_OFPORT:
                inn = s.n_packets
    return out, inn


def test_ping_across_the_tunnel(pair):
    res = pair.topo.ping(pair.vm1, pair.vm2.address, count=3)
    assert res.returncode == 0, res.stdout + res.stderr
    res = pair.topo.ping(pair.vm2, pair.vm1.address, count=2)
    assert res.returncode == 0, res.stdout + res.stderr


def test_flow_counters_count_the_pings(pair):
    pair.topo.ping(pair.vm1, pair.vm2.address, count=1)       # ARP settled
    before1, before2 = icmp_counts(pair.h1, pair.vm1), icmp_counts(pair.h2, pair.vm2)
    res = pair.topo.ping(pair.vm1, pair.vm2.address, count=4, interval=0.1)
    assert res.returncode == 0, res.stdout
    after1, after2 = icmp_counts(pair.h1, pair.vm1), icmp_counts(pair.h2, pair.vm2)
    # h1: 4 echo requests out to the tunnel, 4 replies in; h2 the other way round.
    assert (after1[0] - before1[0], after1[1] - before1[1]) == (4, 4)
    assert (after2[0] - before2[0], after2[1] - before2[1]) == (4, 4)


def test_tcp_transfer_arrives_intact(pair):
    data = os.urandom(300_000)
    sink = pair.topo.popen(pair.vm2, "python3", "-c", SINK.format(port=5001))
    assert sink.stdout.readline().strip() == "ready"
    src = pair.topo.run(pair.vm1, "python3", "-c", SOURCE.format(ip=pair.vm2.address, port=5001),
                        check=False, timeout=30, input=data.hex())
    assert src.returncode == 0, src.stderr
    out, _ = sink.communicate(timeout=30)
    digest, n = out.split()
    assert (digest, int(n)) == (hashlib.sha256(data).hexdigest(), len(data))


def test_iperf3_completes(pair):
    server = pair.topo.popen(pair.vm2, "iperf3", "-s", "-1", "-p", "5201")
    deadline = time.monotonic() + 5
    while True:     # the server is ready when its port answers
        probe = pair.topo.run(pair.vm2, "ss", "-ltn", "sport = :5201", check=False)
        if ":5201" in probe.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    res = pair.topo.run(pair.vm1, "iperf3", "-c", pair.vm2.address, "-p", "5201", "-t", "2",
                        "-J", check=False, timeout=60)
    server.wait(timeout=10)
    report = json.loads(res.stdout)
    assert "error" not in report, report.get("error")
    # Even the reference switch in Python carries several Mbit/s.
    assert report["end"]["sum_received"]["bits_per_second"] > 1e6


def test_bundle_with_a_bad_flow_changes_nothing(pair):
    dp = pair.h1.datapath
    before = [s.flow for s in dp.dump_flows()]
    good = parse_flow(f"table=0,priority=500,in_port={pair.vm1.ofport} actions=drop")
    if pair.h1.backend == "ovs":
        bad, error = parse_flow("table=0,priority=501,in_port=1 actions=group:99"), OVSError
    else:
        bad, error = parse_flow("table=0,priority=501,in_port=1 actions=NORMAL"), UnsupportedFlow
    old = before[0]
    with pytest.raises(error):
        dp.bundle(add=[good, bad], delete=[old])
    assert [s.flow for s in dp.dump_flows()] == before
    # The good flow would have cut vm1 off: it was not installed.
    assert pair.topo.ping(pair.vm1, pair.vm2.address, count=1).returncode == 0


def test_trace_and_megaflows_show_the_tunnel(pair):
    # scapy first: its first import can take longer than a megaflow's idle time (10 s)
    # on a loaded machine, and the ping's megaflows must still be there to be dumped.
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    pair.topo.ping(pair.vm1, pair.vm2.address, count=2, interval=0.1)
    pkt = bytes(Ether(src=pair.vm1.mac, dst=pair.vm2.mac) / IP(src=pair.vm1.address,
                dst=pair.vm2.address) / ICMP())
    tr = pair.h1.datapath.trace(pair.vm1.ofport, pkt)
    actions = tr.datapath_actions if isinstance(tr.datapath_actions, str) else tr.datapath_actions()
    assert "tnl_push" in actions
    lines = pair.h1.datapath.dump_megaflows()
    assert any("tnl_push" in ln for ln in lines), lines
    if pair.h1.backend == "ovs":
        assert all("dp:ovs" in ln for ln in lines)       # the userspace datapath, not offloaded


def test_vlan_tags_survive_the_switch(pair):
    """A tagged frame from vm1 matches dl_vlan on h1, crosses the tunnel, matches dl_vlan on
    h2 and reaches vm2 still tagged (the kernel hands packet sockets the tag apart from
    the frame; AfPacketPort puts it back, on the switch and on the test's own sockets)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Dot1Q, Ether

    from sbnet.datapath.afpacket import AfPacketPort
    from sbnet.datapath.batch import Batch
    vni = 6
    for vm, peer in ((pair.vm1, pair.vm2), (pair.vm2, pair.vm1)):
        vm.host.datapath.bundle(add=[parse_flow(t) for t in (
            (f"table=0,priority=400,in_port={vm.ofport},dl_vlan=100 actions="
             f"set_field:{peer.host.underlay_ip}->tun_dst,set_field:{vni}->tun_id,"
             f"output:{TUNNEL_OFPORT}"),
            (f"table=0,priority=400,in_port={TUNNEL_OFPORT},tun_id={vni},dl_vlan=100 "
             f"actions=output:{vm.ofport}"))])
    frame = bytes(Ether(src=pair.vm1.mac, dst=pair.vm2.mac) / Dot1Q(vlan=100, prio=3)
                  / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=7, dport=9) / (b"v" * 40))
    tx = AfPacketPort(1, "eth0", netns=pair.vm1.netns)
    rx = AfPacketPort(1, "eth0", netns=pair.vm2.netns)
    try:
        tx.deliver(Batch.from_packets([frame], 0))
        got, deadline = [], time.monotonic() + 5
        while frame not in got and time.monotonic() < deadline:
            time.sleep(0.02)
            got += rx.receive()
    finally:
        tx.close()
        rx.close()
    assert frame in got
    counted = [s.n_packets for h in (pair.h1, pair.h2) for s in h.datapath.dump_flows()
               if s.flow.priority == 400 and ("dl_vlan", 100, None) in s.flow.match.items]
    assert sorted(counted) == [0, 0, 1, 1], counted


def test_external_namespace_on_a_host_port(pair):
    """The outside world on h1's uplink, switched locally to vm1 (no tunnel)."""
    ext = pair.topo.add_external("ext", pair.h1, "10.0.0.100/24")
    vm1 = pair.vm1
    pair.h1.datapath.bundle(add=[parse_flow(t) for t in (
        f"table=0,priority=300,in_port={ext.ofport} actions=output:{vm1.ofport}",
        f"table=0,priority=300,in_port={vm1.ofport},dl_dst={ext.mac} actions=output:{ext.ofport}",
        (f"table=0,priority=300,arp,in_port={vm1.ofport},arp_tpa={ext.address} "
         f"actions=output:{ext.ofport}"))])
    res = pair.topo.ping(ext, vm1.address, count=2, interval=0.1)
    assert res.returncode == 0, res.stdout


def test_meter_drops_pings_over_its_rate(pair):
    """A 2 packets/s meter on vm1's ICMP rule lets a burst of 10 pings only partly through."""
    dp, vm1 = pair.h1.datapath, pair.vm1
    (plain,) = [s.flow for s in dp.dump_flows() if s.flow.priority == 110
                and ("in_port", vm1.ofport, None) in s.flow.match.items]
    metered = dataclasses.replace(plain, actions=(A.Meter(9), *plain.actions))
    dp.bundle(add=[metered], meters=[A.MeterMod(9, 2, "pktps")])
    try:
        res = pair.topo.ping(vm1, pair.vm2.address, count=10, interval=0.05, wait=1)
        received = int(re.search(r"(\d+) received", res.stdout).group(1))
        (st,) = dp.meter_stats()
        assert 1 <= received <= 6, res.stdout
        assert (st.meter_id, st.packet_in_count) == (9, 10)
        assert st.band_packet_count == 10 - received
    finally:
        dp.bundle(add=[plain])
        assert dp.delete_meter(9) == []
        assert dp.dump_meters() == []


@pytest.mark.parametrize("process", [True, False], ids=["switch-process", "switch-thread"])
def test_ovs_and_reference_hosts_interoperate(topology, process):
    """VXLAN from OVS's userspace datapath decapsulates in the reference switch, and back."""
    p = overlay_pair(topology, "ovs", "reference", process=process)
    res = topology.ping(p.vm1, p.vm2.address, count=3, interval=0.1)
    assert res.returncode == 0, res.stdout
    assert icmp_counts(p.h2, p.vm2) == (3, 3)


@pytest.mark.parametrize("kind", ["geneve", "gre"])
def test_other_tunnel_kinds_between_ovs_and_reference(topology, kind):
    p = overlay_pair(topology, "ovs", "reference", kind=kind)
    res = topology.ping(p.vm2, p.vm1.address, count=2, interval=0.1)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("backend", ["ovs", "reference"])
def test_stateful_firewall_on_real_tcp(topology, backend):
    """On h2, TCP from the tunnel to vm2 passes conntrack and is committed; vm2's replies
    pass only as established; vm2 cannot open a connection of its own."""
    p = overlay_pair(topology, backend)
    vm2, t = p.vm2, TUNNEL_OFPORT
    out = f"set_field:{p.h1.underlay_ip}->tun_dst,set_field:5->tun_id,output:{t}"
    p.h2.datapath.bundle(add=[parse_flow(x) for x in (
        f"table=0,priority=200,tcp,in_port={t},tun_id=5 actions=ct(table=1,zone=7)",
        f"table=1,priority=10,ct_state=+trk+new,tcp actions=ct(commit,zone=7),output:{vm2.ofport}",
        f"table=1,priority=10,ct_state=+trk+est,tcp actions=output:{vm2.ofport}",
        "table=1,priority=0 actions=drop",
        f"table=0,priority=200,tcp,in_port={vm2.ofport} actions=ct(table=2,zone=7)",
        f"table=2,priority=10,ct_state=+trk+est,tcp actions={out}",
        "table=2,priority=0 actions=drop")])
    sink = topology.popen(vm2, "python3", "-c", SINK.format(port=5002))
    assert sink.stdout.readline().strip() == "ready"
    data = os.urandom(50_000)
    src = topology.run(p.vm1, "python3", "-c", SOURCE.format(ip=vm2.address, port=5002),
                       check=False, timeout=30, input=data.hex())
    assert src.returncode == 0, src.stderr
    digest, n = sink.communicate(timeout=30)[0].split()
    assert (digest, int(n)) == (hashlib.sha256(data).hexdigest(), len(data))
    entries = [e for e in p.h2.datapath.dump_conntrack() if "zone=7" in e]
    assert any("tcp" in e and f"dst={vm2.address}" in e and "dport=5002" in e for e in entries), entries
    # vm2 opening a connection of its own: its SYN is new, not established, and is dropped.
    back = topology.run(vm2, "python3", "-c", "import socket;socket.create_connection(('"
                        f"{p.vm1.address}',5003),timeout=1)", check=False, timeout=30)
    assert "timed out" in back.stderr


def test_run_until_forwards_in_the_callers_thread(topology):
    """AfPacketDatapath.run(until) on two veths of one namespace: a frame in on port 1 is
    out on port 2; a frame waiting on a port when it is detached is switched (a VM migrating
    away sent it just before its switch-over); a detached port's frames are no longer read."""
    from sbnet.agent.netns import sh
    from sbnet.datapath.afpacket import AfPacketDatapath, AfPacketPort
    from sbnet.datapath.batch import Batch
    ns = topology.add_namespace("sw")
    for a, b in (("a1", "a2"), ("b1", "b2")):
        sh("ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "-n", ns, "link", "set", a, "up")
        sh("ip", "-n", ns, "link", "set", b, "up")
    frame = bytes.fromhex("02000000000202000000000108004500001c00010000401100000a0000010a000002"
                          "0007000900080000")
    with AfPacketDatapath(netns=ns) as dp:
        dp.attach(1, "a1")
        dp.attach(2, "b1")
        dp.bundle(add=[parse_flow("table=0,priority=1,in_port=1 actions=output:2")])
        outside_a, outside_b = AfPacketPort(9, "a2", ns), AfPacketPort(9, "b2", ns)
        try:
            outside_a.deliver(Batch.from_packets([frame], 0))
            dp.run(until=time.monotonic() + 0.5)
            assert frame in outside_b.receive()
            outside_a.deliver(Batch.from_packets([frame], 0))
            time.sleep(0.05)
            dp.detach(1)                # the loop never ran: the frame waited on port 1
            assert frame in outside_b.receive()
            outside_a.deliver(Batch.from_packets([frame], 0))
            dp.run(until=time.monotonic() + 0.3)
            assert outside_b.receive() == []
        finally:
            outside_a.close()
            outside_b.close()
        assert dp.loop_errors() == (0, None)
        assert dp.port_stats()[2][1] == 2


def test_teardown_leaves_no_namespaces_or_processes(topology):
    p = overlay_pair(topology, "ovs", "reference")
    topology.popen(p.vm1, "sleep", "60")
    namespaces, pids = list(topology.namespaces), topology.pids()
    assert len(pids) == 4          # two OVS daemons, the reference switch process, the sleep
    dirs = [p.h1.ovs.dir]
    topology.close()
    listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    assert not [ns for ns in namespaces if ns in listed]
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), pid
    assert not any(os.path.exists(d) for d in dirs)


def test_teardown_after_a_failure(topology):
    from sbnet.agent.netns import Topology
    with pytest.raises(RuntimeError, match="boom"), Topology() as t:
        t.add_host("h1", "ovs")
        t.add_vm("vm1", "h1", "10.0.0.1/24")
        names = list(t.namespaces)
        raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    assert not [ns for ns in names if ns in listed]


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
