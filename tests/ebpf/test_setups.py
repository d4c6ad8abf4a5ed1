"""Flow set-ups through the upcall path on real veths: every first packet delivered, every flow in the kernel, the second packets carried there."""

import pytest

from tests.ebpf.conftest import require_bpf


@pytest.mark.parametrize("kind,n", [("connections", 1000), ("megaflows", 200)])
def test_a_burst_of_new_flows_is_set_up_in_the_kernel(kind, n):
    """n new flows sent at once: the slow path drains the ring in batches, switches every
    first packet (none lost), installs each megaflow or hands each connection (once its
    reply is seen) down, and the kernel forwards every flow's second packet itself."""
    require_bpf()
    from sbnet.agent.netns import require_netns
    from sbnet.datapath.ebpf.setups import measure
    require_netns()
    r = measure(kind, n, timeout=60)
    print(f"{kind}: {r.flows} set up in {r.seconds:.2f} s ({r.rate:,.0f}/s)")
    assert r.in_kernel == n, r
    assert r.delivered == n, r
    assert r.carried == n, r
    assert r.upcalls_lost == 0, r


def test_a_burst_of_tcp_handshakes_runs_in_the_kernel():
    """SYNs sent at once, then their SYN-ACKs, then their ACKs: the kernel commits every
    SYN and follows every handshake to established, none of their packets goes up, and
    the slow path learns every connection from the kernel's events."""
    require_bpf()
    from sbnet.agent.netns import require_netns
    from sbnet.datapath.ebpf.setups import measure_tcp
    require_netns()
    n = 300
    r = measure_tcp(n, timeout=60)
    assert r.in_kernel == n, r
    assert r.carried == 3 * n, r
    assert r.upcalls_lost == 0 and r.unsent == 0, r
