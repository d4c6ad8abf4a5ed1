"""`sbnet run --demo --real`: the demo topology on namespaces, agents and Open vSwitch."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from sbnet.cli.realdemo import run_real

DEMO = Path(__file__).parents[2] / "examples" / "demo-topology.yaml"


@pytest.mark.parametrize("backend", ["ovs", "ebpf"])
def test_the_demo_on_real_stacks_isolates_projects_and_routes(backend):
    if backend == "ebpf":
        from tests.ebpf.conftest import require_bpf
        require_bpf()
    console = Console(width=160, record=True)
    out = run_real(console, DEMO, backend, 3)
    pings = out["pings"]
    answered = {(p["from"], p["to"]) for p in pings if p["answered"]}
    # Projects never reach each other; within one, the same network answers (here web1 and
    # web2 admit ICMP), the router joins alpha's two networks, the floating IP is reachable
    # from the outside and alpha's VMs reach the outside through their router.
    assert not [p for p in pings if p["kind"] == "other project" and p["answered"]]
    assert {("client1", "web1"), ("client2", "web2"), ("web1", "web2")} <= answered
    assert ("app1", "web1") in answered
    assert ("outside", "web1 (floating IP)") in answered
    assert ("web1", "outside") in answered and ("client1", "outside") in answered
    # alpha-back is a GRE network (app1's answers to host1 cross it) and beta-svc a Geneve
    # one (cache1 and cache2 on two hosts): on ebpf, this kernel has neither device and the
    # slow path carries them.
    assert ("app1", "outside") in answered
    assert {("cache1", "cache2"), ("cache2", "cache1")} <= answered
    assert "packets dropped" in console.export_text()
    # The bare-metal server's two containers (behind its SmartNIC, plugged by sbnet-cni) are
    # on alpha-front with alpha's default group: they reach alpha's VMs (across the router
    # too) and each other; only default-group members reach them.
    assert set(out["pods"]) == {"pod1", "pod2"}
    assert {("pod1", "pod2"), ("pod2", "pod1"), ("pod1", "client1"), ("client1", "pod1"),
            ("pod2", "web2"), ("pod1", "app1")} <= answered
    assert ("web1", "pod1") not in answered
