"""One Datapath protocol, three backends: the same packet scenarios through each, the same outcomes."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from sbnet.datapath.afpacket import AfPacketDatapath, AfPacketPort
from sbnet.datapath.batch import Batch
from sbnet.datapath.interface import Datapath
from sbnet.datapath.ports import MemoryPort
from sbnet.datapath.switch import Switch
from sbnet.flows.ofctl import parse_flow

WIRES = ("w1", "w2", "w3")          # interface names; ofports 1, 2, 3
FLOWS = [
    "table=0,priority=10,in_port=1,udp actions=push_vlan:0x8100,set_field:4196->vlan_vid,output:2",
    "table=0,priority=10,in_port=2,dl_vlan=100 actions=pop_vlan,"
    "set_field:02:00:00:00:00:99->eth_dst,output:1",
    "table=0,priority=5,in_port=1 actions=output:3",
    "table=0,priority=0 actions=drop",
]
FRAME = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=4000, dport=53) / b"conformance")


class MemoryWires:
    """The reference switch in memory: frames in through process(), out of its MemoryPorts."""

    def __init__(self) -> None:
        self.dp = Switch(clock=time.monotonic)

    def send(self, name: str, frame: bytes) -> None:
        self.dp.process(Batch.from_packets([frame], self.dp.port_names()[name]))

    def received(self, name: str, wait: float = 0.0) -> list[bytes]:
        port = self.dp.ports[self.dp.port_names()[name]]
        assert isinstance(port, MemoryPort)
        return port.take_sent()

    def close(self) -> None:
        pass


class VethWires:
    """Real interfaces: a veth pair per wire, the datapath on one end, the test on the other."""

    def __init__(self, make_dp) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100):02d}"
        self.names = {w: (f"sc{tag}{w}", f"sc{tag}{w}p") for w in WIRES}
        self.peers: dict[str, AfPacketPort] = {}
        for w, (mine, peer) in self.names.items():
            subprocess.run(["ip", "link", "add", mine, "type", "veth", "peer", "name", peer],
                           check=True)
            for dev in (mine, peer):
                subprocess.run(["ip", "link", "set", dev, "up", "arp", "off"], check=True)
                # No IPv6 chatter (router solicitations, MLD) on the test's wires.
                with contextlib.suppress(OSError):
                    with open(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "w") as f:
                        f.write("1")
            self.peers[w] = AfPacketPort(0, peer)
        self.dp = make_dp(f"sc{tag}br")

    def ifname(self, w: str) -> str:
        return self.names[w][0]

    def send(self, name: str, frame: bytes) -> None:
        self.peers[name].deliver(Batch.from_packets([frame], 0))

    def received(self, name: str, wait: float = 1.0) -> list[bytes]:
        deadline = time.monotonic() + wait
        got: list[bytes] = []
        while time.monotonic() < deadline:
            got += self.peers[name].receive()
            time.sleep(0.05)
        return got

    def close(self) -> None:
        self.dp.close()
        for p in self.peers.values():
            p.close()
        for mine, _ in self.names.values():
            subprocess.run(["ip", "link", "del", mine], check=False)


def _afpacket(bridge: str) -> AfPacketDatapath:
    return AfPacketDatapath(Switch(name=bridge)).start()


def _ebpf(bridge: str):
    from sbnet.datapath.ebpf.datapath import EbpfDatapath
    return EbpfDatapath(Switch(name=bridge)).start()


def _ovs(bridge: str):
    from sbnet.ovs.backend import OvsDatapath
    return OvsDatapath.start(bridge, "netdev")


def _needs_root() -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root with iproute2: the real backends must be tested")
        pytest.skip("needs root and iproute2 (veth pairs)")


@pytest.fixture(params=["reference-memory", "reference-afpacket", "ebpf-kernel", "ovs-netdev"])
def wires(request):
    kind = request.param
    if kind == "reference-memory":
        w = MemoryWires()
        for i, name in enumerate(WIRES, 1):
            w.dp.plug(name, i)
        w.ifname = lambda name: name
    else:
        _needs_root()
        if kind == "ovs-netdev" and not shutil.which("ovs-vswitchd"):
            if os.environ.get("CI") == "true":
                pytest.fail("CI installs Open vSwitch: the OVS backend must be tested")
            pytest.skip("needs Open vSwitch")
        if kind == "ebpf-kernel":
            from tests.ebpf.conftest import require_bpf
            require_bpf()
        w = VethWires({"reference-afpacket": _afpacket, "ebpf-kernel": _ebpf}.get(kind, _ovs))
        for i, name in enumerate(WIRES, 1):
            w.dp.plug(w.ifname(name), i)
    try:
        yield w
    finally:
        w.close()


def test_every_backend_is_a_datapath(wires):
    assert isinstance(wires.dp, Datapath)
    assert wires.dp.port_names() == {wires.ifname(n): i for i, n in enumerate(WIRES, 1)}


def test_same_packets_leave_the_same_ports_with_the_same_edits(wires):
    dp = wires.dp
    dp.bundle(add=[parse_flow(f) for f in FLOWS])
    # UDP from wire 1 leaves wire 2 with VLAN 100, and nowhere else.
    wires.send("w1", FRAME)
    out2 = wires.received("w2")
    assert len(out2) == 1
    tagged = Ether(out2[0])
    assert tagged.haslayer(Dot1Q) and tagged[Dot1Q].vlan == 100
    assert bytes(tagged[Dot1Q].payload) == FRAME[14:]
    assert wires.received("w1", 0.2) == [] and wires.received("w3", 0.2) == []
    # Back on wire 2 tagged: untagged out of wire 1 with the new destination MAC.
    wires.send("w2", out2[0])
    (back,) = wires.received("w1")
    assert back[:6] == bytes.fromhex("020000000099") and back[12:] == FRAME[12:]
    # Non-UDP from wire 1 goes to wire 3; anything from wire 3 is dropped.
    arp_like = FRAME[:12] + b"\x88\xb5" + b"local experimental"
    wires.send("w1", arp_like)
    assert wires.received("w3") == [arp_like]
    wires.send("w3", FRAME)
    assert all(wires.received(n, 0.3) == [] for n in WIRES)
    counts = {str(s.flow.match): s.n_packets for s in dp.dump_flows()}
    by_rule = {str(parse_flow(f).match): counts.get(str(parse_flow(f).match)) for f in FLOWS}
    assert list(by_rule.values()) == [1, 1, 1, 1]


def test_deleting_a_flow_and_unplugging_a_port_take_effect(wires):
    dp = wires.dp
    flows = [parse_flow(f) for f in FLOWS]
    dp.bundle(add=flows)
    dp.bundle(delete=[flows[0]])
    wires.send("w1", FRAME)          # now priority 5: out of wire 3, untagged
    assert wires.received("w3") == [FRAME]
    assert wires.received("w2", 0.2) == []
    dp.unplug(wires.ifname("w3"))
    assert wires.ifname("w3") not in dp.port_names()
    wires.send("w1", FRAME)
    assert all(wires.received(n, 0.3) == [] for n in ("w1", "w2"))
