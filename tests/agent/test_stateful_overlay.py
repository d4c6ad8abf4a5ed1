"""Two hosts over VXLAN, each VM behind a stateful security group (overlay_pair(stateful=True)), on every backend."""

import json

import pytest

from sbnet.agent.netns import BACKENDS, Topology, overlay_pair, require_netns

pytestmark = [pytest.mark.root, pytest.mark.ovs]

LISTEN = ("import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
          "s.bind(('0.0.0.0',7000));s.listen(1);print('ready',flush=True);"
          "c,_=s.accept();print('accepted',flush=True)")
CONNECT = ("import socket;socket.create_connection(('{ip}',7000),timeout=1);print('connected')")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_group_passes_replies_and_allowed_connections_only(backend):
    """Pings both ways and iperf3 to vm2's port 5201 pass (new connections the ingress
    rules allow, their replies as established); vm2 opening TCP to a port vm1 listens
    on is dropped (new, not allowed in); on ebpf the established TCP runs in the kernel."""
    if backend == "ebpf":
        from tests.ebpf.conftest import require_bpf
        require_bpf()
    require_netns(ovs=backend == "ovs")
    Topology.cleanup_stale()
    with Topology() as topo:
        p = overlay_pair(topo, backend, stateful=True)
        for src, dst in ((p.vm1, p.vm2), (p.vm2, p.vm1)):
            res = topo.ping(src, dst.address, count=3, interval=0.1)
            assert res.returncode == 0, (src.name, res.stdout)
        before = {h.name: h.datapath.kernel_stats() for h in (p.h1, p.h2)} if backend == "ebpf" else {}
        srv = topo.popen(p.vm2, "iperf3", "-s", "-1", "-p", "5201")
        topo.run(p.vm2, "sh", "-c", "for i in $(seq 50); do ss -ltn | grep -q :5201 && exit 0;"
                 " sleep 0.05; done; exit 1")
        res = topo.run(p.vm1, "iperf3", "-c", p.vm2.address, "-p", "5201", "-t", "1", "-J",
                       check=False, timeout=30)
        srv.wait(timeout=10)
        rep = json.loads(res.stdout)
        assert not rep.get("error"), rep.get("error")
        assert rep["end"]["sum_received"]["bytes"] > 1_000_000, rep["end"]["sum_received"]
        for h, vm in ((p.h1, p.vm1), (p.h2, p.vm2)):
            held = [e for e in h.datapath.dump_conntrack(vm.ofport) if "dport=5201" in e]
            assert held, (h.name, h.datapath.dump_conntrack())
        if backend == "ebpf":
            for h in (p.h1, p.h2):
                st, st0 = h.datapath.kernel_stats(), before[h.name]
                hits, ups = st["hit"] - st0["hit"], st["upcall"] - st0["upcall"]
                assert hits > 50 * max(1, ups), (h.name, hits, ups)
                assert st["ct_established"] > st0["ct_established"], (h.name, st)
                # The +est rules carried the transfer; the kernel's counts are folded in.
                est = sum(s.n_packets for s in h.datapath.dump_flows() if "+est" in str(s.flow))
                assert est > 500, (h.name, est)
        # Unsolicited: vm2 connects to vm1, which listens; vm1's group lets no new TCP in.
        listener = topo.popen(p.vm1, "python3", "-c", LISTEN)
        assert listener.stdout.readline().strip() == "ready"
        back = topo.run(p.vm2, "python3", "-c", CONNECT.format(ip=p.vm1.address), check=False,
                        timeout=30)
        assert back.returncode != 0 and "timed out" in back.stderr, (back.stdout, back.stderr)
        listener.terminate()              # it prints at once what it accepts
        out, _ = listener.communicate(timeout=10)
        assert "accepted" not in out
