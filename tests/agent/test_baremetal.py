"""Bare-metal servers behind a SmartNIC, on real stacks in namespaces, on both datapaths: the NIC runs `sbnet agent` (datapath, uplink, management link to the API, a channel to its server); the server runs containers plugged by `sbnet-cni` (called by podman, or as the CNI specification calls it), and nothing of sbnet."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest

from sbnet.agent.baremetal import API_ADDRESS, CHANNEL_NIC, CHANNEL_PORT, Fleet
from sbnet.agent.netns import Topology, require_netns, sh
from sbnet.agent.podman import Podman
from sbnet.api.local import LocalApi

pytestmark = pytest.mark.root
# Each module-scoped fleet is set up once: pytest runs every test on one backend, then on
# the other.
BACKENDS = ("reference", pytest.param("ovs", marks=pytest.mark.ovs))

CYCLES = int(os.environ.get("SBNET_CNI_CYCLES", "2"))    # the second reuses the first's VF
NIC_URL = f"http://{CHANNEL_NIC}:{CHANNEL_PORT}"


def bare_metal(tmp_path_factory, backend: str):
    """Hypervisor h1 with VM vm1; bare-metal server bm1 behind SmartNIC nic1 (4 VFs, its
    uplink to physnet1 and the outside world), the network `pods` offered to its
    containers; all agents as processes, on `backend`."""
    require_netns(ovs=backend == "ovs")
    Topology.cleanup_stale()
    api = LocalApi()
    with Topology() as topo:
        fleet = Fleet(topo, api, str(tmp_path_factory.mktemp("baremetal")), backend)
        try:
            fleet.hypervisor("h1")
            server = fleet.smartnic_server("bm1", "nic1", 4, ["pods"], outside="outside")
            net = api.create("networks", project="p1", name="pods")
            api.create("subnets", project="p1", network_id=net["id"], cidr="10.60.0.0/24",
                       ip_version=4, dns_nameservers=["10.60.0.53"])
            fleet.wait_agents()
            vm_port = api.create("ports", project="p1", network_id=net["id"], device_id="vm1",
                                 **{"binding:host_id": "h1"})
            fleet.vm("vm1", "h1", vm_port)
            vm_ip = vm_port["fixed_ips"][0]["ip_address"]
            topo.run("vm1", "ip", "addr", "add", f"{vm_ip}/24", "dev", "eth0")
            wait_status(api, vm_port["id"], "ACTIVE")
            conf = {"cniVersion": "1.0.0", "name": "pods", "type": "sbnet-cni",
                    "nic": NIC_URL, "network": "pods"}
            yield SimpleNamespace(topo=topo, api=api, fleet=fleet, server=server, net=net,
                                  backend=backend, vm_ip=vm_ip, vm_mac=vm_port["mac_address"],
                                  conf=conf)
        finally:
            fleet.close()


@pytest.fixture(scope="module", params=BACKENDS)
def bm_fleet(request, tmp_path_factory):
    yield from bare_metal(tmp_path_factory, request.param)


@pytest.fixture
def bm(bm_fleet):
    """The module's fleet; the containers a test plugged and did not give back (it failed
    half-way) are given back after it, so the next test finds every VF free and the NIC's
    switch holding nothing of theirs.  The VM forgets the pods' MACs: a later pod given a
    gone one's address would otherwise get the VM's replies sent to the old MAC until the
    VM's kernel revalidates the entry (up to about 45 s for one it confirmed last)."""
    bm_fleet.live = set()
    yield bm_fleet
    left = sorted(bm_fleet.live)
    for name in left:
        delete(bm_fleet, name)
    if left and bm_fleet.backend == "ovs":     # and until its agent has unplugged them
        bm_fleet.fleet.nic_leftovers(bm_fleet.server, set(), wait=20)
    bm_fleet.topo.run("vm1", "ip", "neigh", "flush", "dev", "eth0", check=False)


def wait_status(api, port_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while api.request("GET", f"ports/{port_id}")["port"]["status"] != status:
        assert time.monotonic() < deadline, f"port {port_id} not {status}"
        time.sleep(0.1)


def container_ports(api, cid: str | None = None) -> list[dict]:
    return [p for p in api.request("GET", "ports")["ports"]
            if p["device_owner"] == "compute:container" and cid in (None, p["device_id"])]


def add(bm, name: str) -> dict:
    path = bm.fleet.container(bm.server, name)
    bm.live.add(name)
    rc, out = bm.fleet.cni(bm.server.netns, "ADD", name, path, bm.conf)
    assert rc == 0, out
    return out


def delete(bm, name: str) -> None:
    rc, out = bm.fleet.cni(bm.server.netns, "DEL", name, bm.fleet.netns_path(name), bm.conf)
    assert rc == 0 and out is None, out
    bm.live.discard(name)


def pings(bm, src: str, dst: str, count: int = 2) -> bool:
    return bm.topo.ping(src, dst, count=count, interval=0.2, wait=1).returncode == 0


def reaches(bm, src: str, dst: str, within: float = 15.0) -> bool:
    """Whether `src` reaches `dst` within `within` seconds: a new port is ACTIVE once its own
    host has plugged it, while the peer's host learns where it lives a moment later."""
    deadline = time.monotonic() + within
    while not pings(bm, src, dst, count=1):
        if time.monotonic() > deadline:
            return False
    return pings(bm, src, dst)


def unreachable(bm, pod: str) -> str:
    """What to read when a pod and the VM do not reach each other: the ports, both ends'
    ICMP counters and neighbours (did the requests arrive, did replies leave, to which
    MAC), the agents' last lines and, on OVS, the NIC's and the hypervisor's flows that
    counted packets."""
    out = []
    for p in bm.api.request("GET", "ports")["ports"]:
        out.append(f"port {p['device_id']} {p['mac_address']} "
                   f"{[f['ip_address'] for f in p['fixed_ips']]} on {p['binding:host_id']} "
                   f"{p['status']}")
    for node in ("vm1", pod):
        snmp = [ln.split() for ln in bm.topo.run(node, "cat", "/proc/net/snmp", check=False)
                .stdout.splitlines() if ln.startswith("Icmp:")]
        if len(snmp) == 2:
            out.append(f"{node} icmp {dict(zip(snmp[0][1:], snmp[1][1:]))}")
        out.append(f"{node} neigh: {bm.topo.run(node, 'ip', 'neigh', check=False).stdout!r}")
    for name, host in bm.fleet.hosts.items():
        out.append(f"{name} log: {bm.fleet.log(name)[-1500:]}")
        if host.ovs is not None:
            flows = sh("ovs-ofctl", "-O", "OpenFlow15", "dump-flows",
                       f"unix:{host.ovs.dir}/br-int.mgmt", check=False).stdout
            out.append(f"{name} flows that counted packets: " + "\n".join(
                ln for ln in flows.splitlines() if "n_packets=0," not in ln)[-4000:])
    return "\n".join(out)


def echoes_at_vm(bm) -> int:
    """ICMP echo requests vm1's stack has received (its /proc/net/snmp)."""
    lines = [ln.split() for ln in bm.topo.run("vm1", "cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Icmp:")]
    return int(lines[1][lines[0].index("InEchos")])


def spoof_reaches_vm(bm, node: str, netns: str | None = None) -> bool:
    """Whether echo requests from `node` (its MAC and address as root set them, the VM's MAC
    given statically so nothing waits on ARP) reach vm1's stack at all."""
    ns = netns or bm.topo.ns_name(node)
    dev = "eth0" if netns is None else node
    sh("ip", "-n", ns, "neigh", "replace", bm.vm_ip, "lladdr", bm.vm_mac, "dev", dev)
    before = echoes_at_vm(bm)
    sh("ping", "-c", "2", "-i", "0.2", "-W", "0.3", bm.vm_ip, netns=ns, check=False)
    time.sleep(0.2)
    sh("ip", "-n", ns, "neigh", "del", bm.vm_ip, "dev", dev, check=False)
    return echoes_at_vm(bm) > before


def test_pod_gets_its_port_and_talks_to_a_vm_over_vxlan(bm):
    out = add(bm, "c1")
    [port] = container_ports(bm.api, "c1")
    # Bound as Neutron binds SmartNIC-backed ports: to the NIC, naming its representor.
    assert port["binding:host_id"] == "nic1" and port["binding:vnic_type"] == "smart-nic"
    [lli] = port["binding:profile"]["local_link_information"]
    assert lli["hostname"] == "nic1" and lli["port_id"] in bm.server.vfs.values()
    assert port["status"] == "ACTIVE"
    ip = port["fixed_ips"][0]["ip_address"]
    assert out == {"cniVersion": "1.0.0",
                   "interfaces": [{"name": "eth0", "mac": port["mac_address"],
                                   "sandbox": bm.fleet.netns_path("c1")}],
                   "ips": [{"address": f"{ip}/24", "gateway": "10.60.0.1", "interface": 0}],
                   "routes": [{"dst": "0.0.0.0/0", "gw": "10.60.0.1"}],
                   "dns": {"nameservers": ["10.60.0.53"]}}
    link = json.loads(bm.topo.run("c1", "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert link["address"] == port["mac_address"] and link["mtu"] == bm.net["mtu"] == 1450
    assert reaches(bm, "c1", bm.vm_ip), unreachable(bm, "c1")
    assert reaches(bm, "vm1", ip), unreachable(bm, "c1")
    # Analytics as for a VM: the NIC's agent reports the pod's port counters.
    deadline = time.monotonic() + 15
    while True:
        try:
            stats = bm.api.request("GET", f"sbnet/ports/{port['id']}/stats")["stats"]
        except Exception:
            stats = {}
        if stats.get("rx_packets", 0) >= 4 and stats.get("tx_packets", 0) >= 4:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.3)
    assert stats["host"] == "nic1"
    # ADD again: the same port and interface, the same answer.
    assert add_again(bm, "c1") == out and len(container_ports(bm.api, "c1")) == 1
    # CHECK: in step, then each drift named, then in step again once undone.
    assert check(bm, "c1", out) == (0, None)
    bm.topo.run("c1", "ip", "addr", "add", "10.60.0.249/24", "dev", "eth0")
    rc, err = check(bm, "c1", out)
    assert rc == 1 and err["code"] == 101 and "10.60.0.249/24" in err["details"], err
    bm.topo.run("c1", "ip", "addr", "del", "10.60.0.249/24", "dev", "eth0")
    bm.topo.run("c1", "ip", "link", "set", "eth0", "address", "02:55:55:55:55:55")
    rc, err = check(bm, "c1", out)
    assert rc == 1 and err["code"] == 101 and "MAC is 02:55:55:55:55:55" in err["details"], err
    bm.topo.run("c1", "ip", "link", "set", "eth0", "address", port["mac_address"])
    assert check(bm, "c1", out) == (0, None)
    delete(bm, "c1")
    assert container_ports(bm.api, "c1") == []
    rc, err = check(bm, "c1", out)
    assert rc == 1 and err["code"] == 101, err
    delete(bm, "c1")                          # DEL of what is gone succeeds


def check(bm, name: str, prev: dict) -> tuple[int, dict | None]:
    return bm.fleet.cni(bm.server.netns, "CHECK", name, bm.fleet.netns_path(name),
                        dict(bm.conf, prevResult=prev))


def add_again(bm, name: str) -> dict:
    rc, out = bm.fleet.cni(bm.server.netns, "ADD", name, bm.fleet.netns_path(name), bm.conf)
    assert rc == 0, out
    return out


def test_security_groups_hold_for_pods(bm):
    add(bm, "c2")
    [port] = container_ports(bm.api, "c2")
    ip = port["fixed_ips"][0]["ip_address"]
    assert reaches(bm, "vm1", ip), unreachable(bm, "c2")
    # The VM takes ICMP from anywhere; the pod's new group has egress rules only.
    default = [g for g in bm.api.request("GET", "security-groups")["security_groups"]
               if g["project_id"] == "p1" and g["name"] == "default"][0]
    bm.api.create("security-group-rules", project="p1", security_group_id=default["id"],
                  direction="ingress", ethertype="IPv4", protocol="icmp",
                  remote_ip_prefix="0.0.0.0/0")
    locked = bm.api.create("security-groups", project="p1", name="locked")
    bm.api.update("ports", port["id"], security_groups=[locked["id"]])
    deadline = time.monotonic() + 20
    while pings(bm, "vm1", ip, count=1):
        assert time.monotonic() < deadline, "the new group never took hold"
    assert pings(bm, "c2", bm.vm_ip)            # out, and the replies back: stateful
    assert not pings(bm, "vm1", ip)
    delete(bm, "c2")


def _ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_root_on_the_server_cannot_change_what_is_enforced(bm):
    add(bm, "c3")
    [port] = container_ports(bm.api, "c3")
    run = bm.topo.run
    assert reaches(bm, "c3", bm.vm_ip), unreachable(bm, "c3")
    # Its own MAC: the NIC drops what it sends (counted where it would arrive).
    run("c3", "ip", "link", "set", "eth0", "address", "02:66:66:66:66:66")
    assert not spoof_reaches_vm(bm, "c3")
    run("c3", "ip", "link", "set", "eth0", "address", port["mac_address"])
    assert spoof_reaches_vm(bm, "c3")                 # the probe itself can see packets
    # Another address: the same.
    mine = port["fixed_ips"][0]["ip_address"]
    run("c3", "ip", "addr", "flush", "dev", "eth0")
    run("c3", "ip", "addr", "add", "10.60.0.250/24", "dev", "eth0")
    run("c3", "ip", "route", "add", "default", "via", "10.60.0.1")
    assert not spoof_reaches_vm(bm, "c3")
    run("c3", "ip", "addr", "flush", "dev", "eth0")
    run("c3", "ip", "addr", "add", f"{mine}/24", "dev", "eth0")
    run("c3", "ip", "route", "add", "default", "via", "10.60.0.1")
    assert pings(bm, "c3", bm.vm_ip)
    # A VF no port owns carries nothing, whatever the server puts on it.
    srv = bm.server.netns
    spare = sorted(v for v in bm.server.vfs if sh("ip", "-n", srv, "link", "show", v,
                                                 check=False).returncode == 0)[0]
    sh("ip", "-n", srv, "addr", "add", "10.60.0.251/24", "dev", spare)
    sh("ip", "-n", srv, "link", "set", spare, "up")
    assert not spoof_reaches_vm(bm, spare, netns=srv)
    sh("ip", "-n", srv, "addr", "flush", "dev", spare)
    sh("ip", "-n", srv, "link", "set", spare, "down")
    # No route to the API, even one root adds through the NIC's channel link.
    sh("ip", "-n", srv, "route", "add", "192.168.254.0/24", "via", CHANNEL_NIC)
    probe = "import socket,sys;s=socket.socket();s.settimeout(1);print(s.connect_ex((sys.argv[1],int(sys.argv[2]))))"
    for host, tcp in ((API_ADDRESS, 9696), (CHANNEL_NIC, 9696), (CHANNEL_NIC, 22)):
        got = sh("python3", "-c", probe, host, str(tcp), netns=srv).stdout.strip()
        assert got != "0", f"the server reached {host}:{tcp}"
    sh("ip", "-n", srv, "route", "del", "192.168.254.0/24")
    # The channel answers its one question and nothing else (no listing, no API paths).
    status = ("import sys,urllib.request,urllib.error\ntry: urllib.request.urlopen(sys.argv[1],"
              "timeout=5); print(200)\nexcept urllib.error.HTTPError as e: print(e.code)")
    for path in ("/v1/interfaces", "/v2.0/ports", "/v1/interfaces/c3"):
        res = sh("python3", "-c", status, NIC_URL + path, netns=srv)
        assert res.stdout.strip() == "404", (path, res.stdout)
    # Nothing on the server enforces anything: no sbnet process in its namespace, no tc
    # filters on its interfaces; root replacing what it holds changes nothing.
    ino = _ns_inode(f"/run/netns/{srv}")
    inside = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                inside.append(open(f"/proc/{pid}/cmdline").read().replace("\0", " "))
        except OSError:
            pass
    assert inside == [], inside
    for dev in [*(v for v in bm.server.vfs if sh("ip", "-n", srv, "link", "show", v,
                                                 check=False).returncode == 0), "nic0"]:
        qdiscs = sh("tc", "qdisc", "show", "dev", dev, netns=srv).stdout
        assert "clsact" not in qdiscs and "ingress" not in qdiscs, (dev, qdiscs)
        assert sh("tc", "filter", "show", "dev", dev, "ingress", netns=srv).stdout.strip() == ""
    assert "clsact" not in run("c3", "tc", "qdisc", "show", "dev", "eth0").stdout
    run("c3", "tc", "qdisc", "replace", "dev", "eth0", "root", "pfifo_fast")
    run("c3", "ip", "link", "set", "eth0", "address", "02:66:66:66:66:67")
    assert not spoof_reaches_vm(bm, "c3")
    delete(bm, "c3")


def test_floating_ip_reaches_a_pod_from_the_outside(bm):
    """The NIC owns the uplink: the pod's floating IP is translated there."""
    api, topo = bm.api, bm.topo
    ext = api.create("networks", project="admin", name="ext", **{
        "provider:network_type": "flat", "provider:physical_network": "physnet1",
        "router:external": True})
    esub = api.create("subnets", project="admin", network_id=ext["id"], cidr="203.0.113.0/24",
                      ip_version=4)
    upstream = api.create("ports", project="admin", network_id=ext["id"],
                          fixed_ips=[{"subnet_id": esub["id"], "ip_address": "203.0.113.50"}])
    topo.run("outside", "ip", "link", "set", "eth0", "address", upstream["mac_address"])
    topo.run("outside", "ip", "addr", "add", "203.0.113.50/24", "dev", "eth0")
    [sub] = api.request("GET", f"subnets?network_id={bm.net['id']}")["subnets"]
    router = api.create("routers", project="p1", name="r",
                        external_gateway_info={"network_id": ext["id"]})
    api.action(f"routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    add(bm, "c5")
    [port] = container_ports(api, "c5")
    group = api.create("security-groups", project="p1", name="ping-from-anywhere")
    api.create("security-group-rules", project="p1", security_group_id=group["id"],
               direction="ingress", ethertype="IPv4", protocol="icmp")
    api.update("ports", port["id"], security_groups=[group["id"]])
    fip = api.create("floatingips", project="p1", floating_network_id=ext["id"],
                     port_id=port["id"])["floating_ip_address"]
    deadline = time.monotonic() + 20
    while not pings(bm, "outside", fip, count=1):
        assert time.monotonic() < deadline, f"the floating IP {fip} never answered"
    assert pings(bm, "outside", fip, count=3)
    delete(bm, "c5")
    assert not pings(bm, "outside", fip, count=1)


def test_direct_mode_on_a_hypervisor(bm):
    """Where the host runs the agent itself, the plugin holds API credentials, makes the
    port bound to the host and plugs a veth: a tap the reference agent finds by its name,
    or (vif_type ovs) a port the plugin adds to br-int with the port's iface-id."""
    h1 = bm.fleet.hosts["h1"]
    conf = {"cniVersion": "1.0.0", "name": "pods", "type": "sbnet-cni",
            "api": bm.fleet.mgmt.url, "network": "pods", "project_id": "p1", "host": "h1",
            "wait_active": 30}
    if bm.backend == "ovs":
        conf["ovsdb"] = f"unix:{h1.ovs.dir}/db.sock"
    add(bm, "d1")                     # a container of the same id on the bare-metal server
    [other] = container_ports(bm.api, "d1")
    path = bm.fleet.container(None, "d1-h1")
    rc, out = bm.fleet.cni(h1.netns, "ADD", "d1", path, conf)
    assert rc == 0, out
    [port] = [p for p in container_ports(bm.api, "d1") if p["id"] != other["id"]]
    tap = out["interfaces"][0]["name"]
    assert port["binding:host_id"] == "h1" and port["status"] == "ACTIVE"
    assert tap == "tap" + port["id"][:11] and out["interfaces"][1]["mac"] == port["mac_address"]
    if bm.backend == "ovs":
        assert port["binding:vif_type"] == "ovs"
        iface_id = h1.ovs.vsctl("get", "Interface", tap, "external_ids:iface-id")
        assert iface_id.strip().strip('"') == port["id"]
    assert reaches(bm, "d1-h1", bm.vm_ip), unreachable(bm, "d1-h1")
    assert bm.fleet.cni(h1.netns, "ADD", "d1", path, conf) == (0, out)
    assert bm.fleet.cni(h1.netns, "CHECK", "d1", path, conf) == (0, None)
    assert bm.fleet.cni(h1.netns, "DEL", "d1", path, conf) == (0, None)
    assert [p["id"] for p in container_ports(bm.api, "d1")] == [other["id"]]   # untouched
    delete(bm, "d1")
    assert container_ports(bm.api, "d1") == []
    assert sh("ip", "-n", h1.netns, "link", "show", tap, check=False).returncode != 0
    if bm.backend == "ovs":
        assert tap not in h1.ovs.vsctl("list-ifaces", "br-int").split()
    assert bm.fleet.cni(h1.netns, "DEL", "d1", path, conf) == (0, None)


def test_podman_runs_a_pod_through_sbnet_cni(bm, tmp_path):
    """A real CNI runtime: podman on the server (its CNI backend, the network `pods` a
    conflist naming sbnet-cni) runs a busybox container (`--rootfs`, no image); the container
    reaches the VM and the VM it; removing it gives the port and the VF back."""
    srv = f"/run/netns/{bm.server.netns}"
    links = lambda: sorted(l["ifname"] for l in json.loads(  # noqa: E731
        sh("ip", "-n", bm.server.netns, "-j", "link").stdout))
    before, ports_before = links(), container_ports(bm.api)
    pod = Podman({"pods": bm.conf}, str(tmp_path / "podman"))
    try:
        cid = pod.podman(srv, "run", "--detach", "--network", "pods", *pod.image,
                         "sleep", "300").stdout.strip()
        [port] = container_ports(bm.api, cid)
        assert port["binding:vnic_type"] == "smart-nic" and port["status"] == "ACTIVE"
        ip = port["fixed_ips"][0]["ip_address"]
        # What podman took from the plugin's result; the container's own ping uses it.
        seen = json.loads(pod.podman(srv, "inspect", cid).stdout)[0]
        net = seen["NetworkSettings"]["Networks"]["pods"]
        assert (net["IPAddress"], net["MacAddress"]) == (ip, port["mac_address"]), net
        # The pod's address may be one a container of an earlier test had seconds ago: the
        # VM's kernel then still holds that container's MAC for it (the switch answers the
        # pod's ARP, so the VM hears none) and its replies go astray until the entry is
        # revalidated, as a Linux neighbour entry is within its reachable time and probe
        # (up to about 45 s).  It failed CI's full run once at 15 s.
        deadline = time.monotonic() + 60
        while (res := pod.podman(srv, "exec", cid, "ping", "-c", "1", "-W", "1", bm.vm_ip,
                                 check=False)).returncode != 0:
            assert time.monotonic() < deadline, ("the pod never reached the VM", res.stderr)
        assert pings(bm, "vm1", ip)
        pod.podman(srv, "rm", "--force", "--time", "0", cid)
        assert container_ports(bm.api) == ports_before and links() == before
    finally:
        pod.close(srv)


def test_add_del_cycles_leave_no_port_flow_or_interface(bm):
    """Last in the module: on the reference switch it stops nic1's agent to read its
    switch's flows.  The full 100 cycles: bench/bench_cni.py."""
    srv = bm.server.netns
    links = lambda: sorted((l["ifname"], l["address"]) for l in json.loads(  # noqa: E731
        sh("ip", "-n", srv, "-j", "link").stdout))
    before, ports_before = links(), container_ports(bm.api)
    macs = set()
    for i in range(CYCLES):
        name = f"cyc{i}"
        out = add(bm, name)
        macs.add(out["interfaces"][0]["mac"])
        if i == 0 and bm.backend == "ovs":        # the reading below sees a pod it serves
            reps, flows = bm.fleet.nic_leftovers(bm.server, macs)
            assert len(reps) == 1 and flows, (reps, flows)
        delete(bm, name)
        sh("ip", "netns", "del", bm.topo.ns_name(name))
        bm.topo.namespaces.remove(bm.topo.ns_name(name))
    assert container_ports(bm.api) == ports_before       # no cycle left a port behind
    after = links()
    assert [n for n, _ in after] == [n for n, _ in before]
    # No representor left on the NIC's switch, no flow naming one or a container's MAC (the
    # NIC's own pipeline is still there: nic_leftovers refuses an empty table).
    reps, flows = bm.fleet.nic_leftovers(bm.server, macs, wait=20)
    assert (reps, flows) == ([], []), (reps, flows[:5])
