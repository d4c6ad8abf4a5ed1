"""Differential: random tables and packets through the reference switch and the loaded program (BPF_PROG_RUN)."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.datapath.switch import Switch
from tests.datapath.tablegen import PORTS, packet, table_set

from .util import Reference, attach_ports, compare, run_reference


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**9), pseed=st.integers(0, 10**9))
def test_random_tables_same_outputs_bytes_and_counters(tier, seed, pseed):
    sw = Switch()
    for p in PORTS:
        sw.add_port(p)
    sw.load(table_set(seed).text())
    r = random.Random(pseed)
    # Twice over: the second time each packet's search starts at the mask the kernel's
    # mask cache holds for it (sbnet_lookup.h).  Its outputs are still those of the
    # translation (the first time): the reference's megaflow path sends copies port by
    # port, and one copy of several to the same port, where the actions send each.
    first = [packet(r) for _ in range(12)]
    packets = first * 2
    ref = run_reference(sw, packets)
    ref = Reference(ref.outputs[:len(first)] * 2, ref.mf_ids)
    tier.flush()
    attach_ports(tier, sw)
    compare(tier, sw, packets, ref)
