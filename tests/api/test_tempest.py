"""OpenStack's own network API tests (tempest) against `sbnet serve` with a real Keystone.

A focused selection runs here (the classes that found sbnet's differences from Neutron);
`python bench/bench_tempest.py` runs the whole of tempest.api.network.
"""

from __future__ import annotations

from pathlib import Path

from sbnet.api.openstack import run_tempest

SELECTION = (r"^tempest\.api\.network\.("
             r"test_security_groups_negative\.NegativeSecGroupTest\b"
             r"|test_security_groups\.SecGroupIPv6Test\b"
             r"|test_subnetpools_extensions"
             r"|test_service_providers"
             r"|test_extra_dhcp_options"
             r"|test_agent_management_negative"
             r"|test_tags\.TagsExtTest"
             r"|admin\.test_external_network_extension\.ExternalNetworksTestJSON\b"
             r"|test_networks\.NetworksIpV6TestAttrs\b"
             r"|test_routers\.RoutersTest\.test_(add_remove_router_interface_with_subnet_id"
             r"|update_delete_extra_route))")


def test_tempest_network_selection(keystone_sbnet: tuple, tmp_path: Path) -> None:
    ks, url = keystone_sbnet
    result = run_tempest(ks, url, SELECTION, tmp_path, concurrency=2, timeout=1200)
    assert result.failed == 0, (result.summary(), result.failures)
    assert result.passed >= 40, result.summary()
    # Nothing in this selection may be skipped: each class needs only what sbnet serves.
    assert not result.skips, result.skips
