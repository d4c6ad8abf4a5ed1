"""The kernel tier's fixtures: one loaded program in test mode, shared by a module; BPF needs root."""

import os

import pytest


def require_bpf() -> None:
    """Skip where BPF cannot be loaded, except in CI, where that is a failure."""
    from sbnet.datapath.ebpf.tier import available
    why = available()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the kernel tier's tests: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def tier():
    """A loaded program in test mode (BPF_PROG_RUN), emptied between tests by the test."""
    require_bpf()
    from sbnet.datapath.ebpf.tier import EbpfTier
    with EbpfTier(capacity=4096, conn_capacity=1024, test=True) as t:
        yield t
