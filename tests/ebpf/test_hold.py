"""The arrival hold of a live migration in the kernel tier, with BPF_PROG_RUN: tunnel frames for an arriving VM are kept from its VIF until its VIF's first frame, as the reference switch's underlay filter drops them, and forwarded as the reference switch forwards them otherwise."""

import contextlib
import socket

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import raw

from sbnet.datapath import holdfilter
from sbnet.datapath.ebpf import layout as L
from sbnet.datapath.switch import Switch
from tests.datapath.test_holdfilter import passed

from .test_tunnels_ct import host as vxlan_host
from .util import attach_ports, run_reference

VM, OTHER_VM, UNDERLAY, TUNNEL = 1, 2, 10, 20     # (test_tunnels_ct.host's ports, and one more)
MAC, OTHER_MAC, PEER_MAC = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02", "fa:16:3e:00:00:09"
ME, PEER = "192.168.50.1", "192.168.50.2"
TUN = (0x42, int.from_bytes(socket.inet_aton(PEER), "big"), int.from_bytes(socket.inet_aton(ME), "big"))
FLOWS = f"""\
priority=10,in_port={TUNNEL},dl_dst={MAC} actions=output:{VM}
priority=10,in_port={TUNNEL},dl_dst={OTHER_MAC} actions=output:{OTHER_VM}
priority=10,in_port={VM} actions=set_field:0x42->tun_id,output:{TUNNEL}
"""


def frame(src: str, dst: str, n: int = 0) -> bytes:
    return raw(Ether(src=src, dst=dst) / IP(src="10.0.0.9", dst="10.0.0.1")
               / UDP(sport=5000 + n, dport=53) / b"x")


def on_the_wire(inner: bytes) -> bytes:
    """The VXLAN datagram that carried `inner` from the peer (what the reference's
    underlay socket reads)."""
    return raw(Ether(src="02:bb:00:00:00:01", dst="02:aa:00:00:00:01") / IP(src=PEER, dst=ME)
               / UDP(sport=49152, dport=4789) / VXLAN(vni=0x42) / inner)


def host() -> Switch:
    sw = vxlan_host(ME, PEER, FLOWS)
    sw.add_port(OTHER_VM)
    return sw


def reference_filter_passes(macs: list[str], wire: list[bytes]) -> list[bool]:
    """The reference switch's hold (its underlay socket's filter), run by the kernel."""
    return passed(holdfilter.program(macs, [4789], []), wire)


def _ready(tier, sw: Switch, packets) -> list:
    ref = run_reference(sw, packets)
    tier.flush()
    attach_ports(tier, sw)
    for mf in sw.cache.flows.values():
        assert tier.put(mf).tier == "ebpf"
    return ref.outputs


def _mac(m: str) -> int:
    return int(m.replace(":", ""), 16)


def test_held_until_the_vifs_first_frame_as_the_reference_holds(tier):
    sw = host()
    inner = [frame(PEER_MAC, MAC, 1), frame(PEER_MAC, OTHER_MAC, 2), frame(PEER_MAC, MAC, 3)]
    from_vm = frame(MAC, PEER_MAC, 4)
    packets = [*((TUNNEL, f) for f in inner), (VM, from_vm)]
    want = _ready(tier, sw, packets)
    run = [tier.run(f, TUNNEL, TUN) for f in inner]
    assert [[(o.ofport, o.data) for o in r.outputs] for r in run] == want[:3]
    tier.take_counters()
    tier.hold(VM, _mac(MAC))
    try:
        # Held: the kernel keeps from the VIF the copies the reference's filter drops on
        # the wire, and forwards the rest as the reference switch does.
        passes = reference_filter_passes([MAC], [on_the_wire(f) for f in inner])
        assert passes == [False, True, False]
        run = [tier.run(f, TUNNEL, TUN) for f in inner]
        assert [r.verdict != "drop" for r in run] == passes
        assert [(o.ofport, o.data) for o in run[1].outputs] == want[1]
        # The kept ones were switched all the same (their megaflow counted them): what the
        # VM's traffic needs is in place when it runs here.
        assert run[0].mf_id == run[2].mf_id and tier.take_counters()[run[0].mf_id].packets == 2
        since, released, dropped = tier.hold_state(VM)
        assert since > 0 and released == 0 and dropped == 2
        # A frame from another port's VIF does not release it; the VM's first frame does,
        # and is itself forwarded as the reference forwards it.
        assert tier.run(frame(OTHER_MAC, PEER_MAC), OTHER_VM).verdict == "upcall"
        assert tier.hold_state(VM)[1] == 0
        got = tier.run(from_vm, VM)
        [(port, wire)] = want[3]
        # (the kernel's VXLAN device puts on the outer headers the reference writes)
        assert port == UNDERLAY and [o.ofport for o in got.outputs] == [TUNNEL]
        assert got.outputs[0].data == raw(Ether(wire)[VXLAN].payload)
        assert got.outputs[0].tunnel == (0x42, TUN[1], TUN[2])
        assert tier.hold_state(VM)[1] >= since
        run = [tier.run(f, TUNNEL, TUN) for f in inner]
        assert [[(o.ofport, o.data) for o in r.outputs] for r in run] == want[:3]
        assert tier.hold_state(VM)[2] == 2
    finally:
        tier.release(VM)
    assert tier.hold_state(VM) is None
    assert not L.CONFIG.unpack(tier.m_config.lookup(L.U32.pack(0)))[1] & L.CFG_F_HOLDS
    assert not L.PORT.unpack(tier.m_ports.lookup(L.U32.pack(tier.ports[VM].ifindex)))[1] & L.PORT_F_HELD


def test_release_without_a_frame_delivers_again(tier):
    """Activation or a failed migration releases a VIF the VM never spoke on."""
    sw = host()
    packets = [(TUNNEL, frame(PEER_MAC, MAC))]
    want = _ready(tier, sw, packets)
    tier.hold(VM, _mac(MAC))
    tier.hold(VM, _mac(MAC))                  # twice: still one hold
    assert tier.run(packets[0][1], TUNNEL, TUN).verdict == "drop"
    # Without its megaflow in the kernel it goes up to be switched (the slow path keeps it
    # from the VIF: TxPort).
    tier.flush()
    assert tier.run(packets[0][1], TUNNEL, TUN).verdict == "upcall"
    for mf in sw.cache.flows.values():
        tier.put(mf)
    tier.release(VM)
    tier.release(VM)
    got = tier.run(packets[0][1], TUNNEL, TUN)
    assert [(o.ofport, o.data) for o in got.outputs] == want[0]


@pytest.fixture(scope="module")
def xdp_tier():
    from tests.ebpf.conftest import require_bpf
    require_bpf()
    from sbnet.datapath.ebpf.tier import EbpfTier
    with EbpfTier(capacity=64, conn_capacity=64, test=True, xdp=True) as t:
        yield t


def test_xdp_passes_a_held_vifs_frames_to_the_program_that_releases(xdp_tier):
    t = xdp_tier
    sw = Switch(clock=lambda: 0.0)
    for p in (VM, OTHER_VM):
        sw.add_port(p)
    sw.load(f"priority=10,in_port={VM} actions=output:{OTHER_VM}")
    f = frame(MAC, OTHER_MAC)
    [want] = run_reference(sw, [(VM, f)]).outputs
    for p in (VM, OTHER_VM):
        t.add_port(p, 100 + p, xdp_out=True)
    [mf] = sw.cache.flows.values()
    assert t.put(mf).tier == "ebpf"
    assert t.run_xdp(f, VM).verdict == "forward"
    t.hold(VM, _mac(MAC))
    assert t.run_xdp(f, VM).verdict == "pass"     # the TC program's, which releases
    got = t.run(f, VM)
    assert [(o.ofport, o.data) for o in got.outputs] == want and t.hold_state(VM)[1] > 0
    t.release(VM)
    assert [(o.ofport, o.data) for o in t.run_xdp(f, VM).outputs] == want



def test_the_slow_path_keeps_a_held_vms_tunnel_frames_from_its_vif():
    """On real interfaces: what the slow path switches to a held VIF from a tunnel is not
    sent into it (what it switches from a local port is), until the VIF's first frame."""
    import time

    from sbnet.agent.netns import sh
    from sbnet.datapath.afpacket import in_netns
    from sbnet.datapath.batch import Batch
    from sbnet.datapath.tunnel import TunnelPort

    from .test_real import FLOWS as VM_FLOWS, vms_on_kernel_tier
    vm_mac = "02:00:00:00:00:01"
    with vms_on_kernel_tier(VM_FLOWS) as (topo, dp, (vm1, _)):
        # Nothing of the VM's own may release the hold before the test's frame does.
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", netns=vm1)
        dp.add_tunnel_port(TunnelPort(TUNNEL, "vxlan", key="flow"), "sbholdvx")
        with in_netns(vm1):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        sock.bind(("eth0", 0))
        sock.settimeout(0.3)

        def received() -> set[int]:
            got = set()
            with contextlib.suppress(TimeoutError):
                while True:
                    data, addr = sock.recvfrom(2048)
                    if addr[2] != socket.PACKET_OUTGOING and data[:6] == bytes.fromhex(vm_mac.replace(":", "")):
                        got.add(int.from_bytes(data[34:36], "big") - 5000)   # UDP source port
            return got

        def deliver(n: int, in_port: int) -> None:
            dp.switch.ports[VM].deliver(Batch.from_packets([frame(PEER_MAC, vm_mac, n)], in_port))

        with sock:
            dp.hold(VM, vm_mac)
            deliver(1, TUNNEL)
            deliver(2, OTHER_VM)
            assert received() == {2}
            sock.send(frame(vm_mac, PEER_MAC, 9))          # the VM runs here: its first frame
            time.sleep(0.1)
            deliver(3, TUNNEL)
            assert received() == {3}
            assert [w for _, _, w in dp.holds()["events"]] == ["held", "first frame"]


def test_the_relay_is_kept_from_the_vif_once_announced_until_release(tier):
    """Once the VM runs here and the slow path has announced it, until release() the
    floating IP's traffic the old host relays (from its tunnel endpoint, the router's MAC,
    from outside the router's subnets) is kept from the VIF, as the reference's filter
    drops it, and nothing else is."""
    sw = host()
    router = "fa:16:3e:00:00:0a"
    outside, inside = "203.0.113.50", "10.0.0.9"

    def routed(src_ip: str, src_mac: str = router) -> bytes:
        return raw(Ether(src=src_mac, dst=MAC) / IP(src=src_ip, dst="10.0.0.1") / UDP(sport=7, dport=9))
    relayed = [routed(outside), routed(inside), routed(outside, PEER_MAC)]
    packets = [*((TUNNEL, f) for f in relayed), (VM, frame(MAC, PEER_MAC))]
    want = _ready(tier, sw, packets)
    relay = holdfilter.Relay(PEER, MAC, router, ("10.0.0.0/24",))
    tier.hold(VM, _mac(MAC))
    try:
        got = tier.run(packets[3][1], VM)                            # the VM's first frame
        assert got.verdict == "forward" and tier.hold_state(VM)[1] > 0
        # Released, not yet announced: the relay is delivered (the outside still sends there).
        assert [(o.ofport, o.data) for o in tier.run(relayed[0], TUNNEL, TUN).outputs] == want[0]
        tier.keep_relay(VM, (TUN[1], _mac(router), [(0x0A000000, 0xFFFFFF00)]))
        wire = [on_the_wire(f) for f in relayed]                     # from the old host
        passes = passed(holdfilter.program([], [4789], [], [relay]), wire)
        assert passes == [False, True, True]
        run = [tier.run(f, TUNNEL, TUN) for f in relayed]
        assert [r.verdict != "drop" for r in run] == passes
        assert [[(o.ofport, o.data) for o in r.outputs] for r in run[1:]] == want[1:3]
        # From another host the same frame is delivered.
        other = (TUN[0], TUN[1] + 1, TUN[2])
        assert [(o.ofport, o.data) for o in tier.run(relayed[0], TUNNEL, other).outputs] == want[0]
    finally:
        tier.release(VM)
    assert [(o.ofport, o.data) for o in tier.run(relayed[0], TUNNEL, TUN).outputs] == want[0]
