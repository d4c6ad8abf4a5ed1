"""Load balancing through a VIP on real Linux stacks, per datapath (reference switch, Open vSwitch):
new TCP connections per second through the VIP and straight to a member, the round trip of an
established connection both ways (the latency the VIP adds), and how 10,000 connections from two
hosts spread over members of weights 1, 1 and 2.

Two hosts joined by VXLAN; the three member VMs on h2, clients on h1 and h2; everything made
through the API (sbnet.agent.realcloud), as tests/agent/test_lb_real.py does.  Needs root and OVS.

Run: python bench/bench_lb.py [--connections 10000] [--backends reference,ovs]
"""

from __future__ import annotations

import argparse
import json

from sbnet.agent.netns import Topology
from sbnet.agent.realcloud import LB_MEMBER, RealCloud, lb_tcp

# n connections, one after the other, to addr:port; connections/s and how many each member took.
CONNECT = ("import socket,sys,json,time,collections\n"
           "addr,port,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]);seen=collections.Counter()\n"
           "failed=0;t=time.perf_counter()\n"
           "for i in range(n):\n"
           "    try:\n"
           "        s=socket.create_connection((addr,port),timeout=3)\n"
           "        seen[s.makefile().readline().strip()]+=1;s.close()\n"
           "    except OSError: failed+=1\n"
           "print(json.dumps({'rate':n/(time.perf_counter()-t),'seen':seen,'failed':failed}))\n")
# Round trips of 100-byte messages over one established connection: median in microseconds.
RTT = ("import socket,sys,time\n"
       "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3);f=s.makefile('rb')\n"
       "f.readline();s.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1);out=[]\n"
       "for i in range(int(sys.argv[3])):\n"
       "    t=time.perf_counter();s.sendall(b'x'*99+b'\\n');f.readline()\n"
       "    out.append(time.perf_counter()-t)\n"
       "out.sort();print(out[len(out)//2]*1e6)\n")


def run(backend: str, connections: int) -> dict:
    with Topology() as topo:
        cloud = RealCloud(topo, backend)
        try:
            net = cloud.network("p1", "10.30.0.0/24")
            members = [cloud.vm(f"m{i}", "p1", net, "h2") for i in range(3)]
            clients = [cloud.vm("c1", "p1", net, "h1")[1], cloud.vm("c2", "p1", net, "h2")[1]]
            weights = (1, 1, 2)
            lb, _, _ = lb_tcp(cloud.api, net["subnet"]["id"], [
                (p["fixed_ips"][0]["ip_address"], w) for (p, _), w in zip(members, weights)])
            cloud.sync()
            servers = [topo.popen(vm, "python3", "-c", LB_MEMBER, f"m{i}")
                       for i, (_, vm) in enumerate(members)]
            for s in servers:
                s.stdout.readline()
            vip, direct = lb["vip_address"], members[0][0]["fixed_ips"][0]["ip_address"]
            c1 = clients[0]

            def py(node, script: str, *args: str) -> str:
                return topo.run(node, "python3", "-c", script, *args, timeout=3600).stdout

            out = {"backend": backend}
            py(c1, CONNECT, vip, "80", "20")                  # ARP and first flows settled
            py(c1, CONNECT, direct, "8080", "20")
            out["conn_vip"] = json.loads(py(c1, CONNECT, vip, "80", "500"))["rate"]
            out["conn_direct"] = json.loads(py(c1, CONNECT, direct, "8080", "500"))["rate"]
            out["rtt_vip"] = float(py(c1, RTT, vip, "80", "2000"))
            out["rtt_direct"] = float(py(c1, RTT, direct, "8080", "2000"))
            procs = [topo.popen(c, "python3", "-c", CONNECT, vip, "80", str(connections // 2))
                     for c in clients]
            seen: dict[str, int] = {}
            failed = 0
            for p in procs:
                res = json.loads(p.communicate(timeout=7200)[0])
                failed += res["failed"]
                for k, v in res["seen"].items():
                    seen[k] = seen.get(k, 0) + v
            total = sum(seen.values())
            out["spread"] = {f"m{i}": seen.get(f"m{i}", 0) / total for i in range(3)}
            out["worst"] = max(abs(out["spread"][f"m{i}"] - w / sum(weights))
                               for i, w in enumerate(weights))
            out["failed"], out["total"] = failed, total
            for s in servers:
                s.kill()
            return out
        finally:
            cloud.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--backends", default="reference,ovs")
    args = ap.parse_args()
    Topology.cleanup_stale()
    rows = [run(b, args.connections) for b in args.backends.split(",")]
    print(f"{'datapath':10} {'conn/s VIP':>10} {'conn/s direct':>13} {'RTT VIP us':>10} "
          f"{'RTT direct us':>13} {'added us':>8} {'spread m0/m1/m2 (want .25/.25/.50)':>36} "
          f"{'worst':>6}")
    for r in rows:
        spread = "/".join(f"{r['spread'][f'm{i}']:.3f}" for i in range(3))
        print(f"{r['backend']:10} {r['conn_vip']:10.0f} {r['conn_direct']:13.0f} "
              f"{r['rtt_vip']:10.0f} {r['rtt_direct']:13.0f} "
              f"{r['rtt_vip'] - r['rtt_direct']:8.0f} {spread:>36} {r['worst']:6.3f}")
        print(f"{'':10} {r['total']} connections through the VIP from two hosts, "
              f"{r['failed']} failed")


if __name__ == "__main__":
    main()
