"""`sbnet compare`'s ebpf column: measured on real namespaces through the kernel tier, labelled as measured beside the modelled NIC columns."""

from sbnet.offload import compare as C
from tests.ebpf.conftest import require_bpf


def test_the_ebpf_column_is_measured_on_real_namespaces():
    require_bpf()
    from sbnet.agent.netns import require_netns
    require_netns()
    cmp = C.compare(connections=12, cap=6, profiles=("ebpf",), features=False,
                    real_connections=12)
    m = cmp.measured["ebpf"]
    assert m.refused is None and m.connections == 12
    # Every connection's packets crossed both hosts; the VMs' own counters say so.
    assert m.sent >= 12 * 5 and m.delivered >= 12 * 5, m
    assert m.kernel > 0 and m.software > 0 and m.kernel + m.software == 2 * m.sent, m
    assert m.cpu > 0 and m.host_cpu >= m.cpu and 0 < m.rtt_us < 1e6, m
    head, body = C.rows(cmp)
    assert head[1:] == ["ebpf (measured: real namespaces, kernel tier)"]
    assert C.kind("smartnic") == "modelled NIC"
    assert dict((r[0], r[1]) for r in body)["connections run"] == "12"
    md = C.markdown(cmp, "sbnet compare --profiles ebpf")
    assert "The ebpf column is measured, not modelled" in md
