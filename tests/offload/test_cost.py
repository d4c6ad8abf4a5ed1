"""The cost model: host cores per Mpps, NIC share and latency per tier."""

from __future__ import annotations

import math

import pytest

from sbnet.offload import builtin_profiles, cost

P = builtin_profiles()


def test_offload_keeps_host_cores_for_the_software_share_only():
    c = cost(P["smartnic"], nic_packets=900, software_packets=100, software_cpu_seconds=100e-6)
    assert c.nic_share == pytest.approx(0.9)
    assert c.software_ns_per_packet == pytest.approx(1000)
    assert c.host_cores_per_mpps == pytest.approx(0.1)     # 1 us per packet on 10% of them
    assert c.host_cores(10) == pytest.approx(1.0)
    assert c.nic_latency_us == P["smartnic"].latency_us
    assert c.software_latency_us == pytest.approx(P["smartnic"].software_latency_us + 1.0)
    assert c.mean_latency_us == pytest.approx(0.9 * c.nic_latency_us + 0.1 * c.software_latency_us)
    assert c.nic_limit_mpps == pytest.approx(P["smartnic"].mpps / 0.9)


def test_software_profile_charges_every_packet_to_host_cores():
    c = cost(P["software"], nic_packets=0, software_packets=1000, software_cpu_seconds=1e-3)
    assert c.nic_share == 0 and c.host_cores_per_mpps == pytest.approx(1.0)
    assert math.isinf(c.nic_limit_mpps) and c.nic_latency_us == 0


def test_empty_and_bad_inputs():
    c = cost(P["smartnic"], 0, 0, 0.0)
    assert c.nic_share == 0 and c.host_cores_per_mpps == 0 and c.mean_latency_us == 0
    with pytest.raises(ValueError):
        cost(P["smartnic"], -1, 0, 0.0)
