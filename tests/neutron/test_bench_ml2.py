"""The short version of bench/bench_ml2.py: ports created through neutron-server go ACTIVE
once embedded hosts following sbnet's copy have them (create -> ACTIVE latency)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from sbnet.agent.embedded import Cluster
from sbnet.agent.follow import Follower
from sbnet.southbound.client import Southbound

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_ml2 import measure  # noqa: E402


def test_ports_made_through_neutron_go_active_on_embedded_hosts(stack):
    sb = Southbound(stack.sbnet.url)
    for i, host in enumerate(("b1", "b2")):
        sb.request("PUT", f"sbnet/hosts/{host}", {"host": {"tunnel_ip": f"192.0.2.{60 + i}"}})
    follower = Follower(stack.store, Cluster(["b1", "b2"]))
    follower.start(wait=0.2)
    try:
        with httpx.Client(base_url=stack.neutron.url, timeout=120) as client:
            result = measure(client, 4, 1, "short", hosts=("b1", "b2"))
    finally:
        follower.stop()
    print(result)
    assert result["ports"] == 4 and result["median_s"] < 60
    assert follower.error is None
