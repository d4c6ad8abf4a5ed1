"""Fixtures for tests against real Open vSwitch on the dummy datapath."""

import pytest

from sbnet.ovs.dummy import DummyOVS, require_ovs


@pytest.fixture(scope="session")
def ovs_required() -> None:
    """Skip when OVS is missing; fail instead when CI=true (see require_ovs)."""
    require_ovs()


@pytest.fixture(scope="module")
def ovs(ovs_required):
    """One private OVS with ports 1..4 per test module; tables are replaced per test."""
    with DummyOVS(4) as sw:
        yield sw


@pytest.fixture
def sw(ovs):
    """The module's OVS with empty tables."""
    ovs.replace_flows("")
    ovs.flush_conntrack()
    return ovs
