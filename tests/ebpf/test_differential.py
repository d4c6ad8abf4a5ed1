"""Differential: random tables and packets through the reference switch and the loaded program (BPF_PROG_RUN)."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.datapath.switch import Switch
from tests.datapath.tablegen import PORTS, packet, table_set

from .util import attach_ports, compare, run_reference


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**9), pseed=st.integers(0, 10**9))
def test_random_tables_same_outputs_bytes_and_counters(tier, seed, pseed):
    sw = Switch()
    for p in PORTS:
        sw.add_port(p)
    sw.load(table_set(seed).text())
    r = random.Random(pseed)
    packets = [packet(r) for _ in range(12)]
    ref = run_reference(sw, packets)
    tier.flush()
    attach_ports(tier, sw)
    compare(tier, sw, packets, ref)
