"""The quickest benchmarks of the README run to completion in short settings and print the lines the README quotes."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (the bench and its short settings, lines its README figures are read from). The settings
# only shorten a run (fewer seconds, flows or connections); what a full run measures is
# unchanged. bench_analytics stopped at its own assertion from 2026-11-24 to 67d635a unnoticed.
QUICK = [
    (["bench_parse.py", "--time", "0.01"],
     ["udp4 64B  batch  4096:", "mixed     batch  4096:", "ns/packet"]),
    (["bench_execute.py", "--seconds", "0.01", "--batch", "256"],
     ["output only", "set eth dst + output", "set ipv4 src + output", "push_vlan + output"]),
    (["bench_tunnel.py", "--seconds", "0.01", "--batch", "256", "--flows", "16"],
     ["encap Mpps  decap Mpps", "vxlan ", "geneve "]),
    (["bench_conntrack.py", "--conns", "1000", "--batch", "256"],
     ["new connections (SYN, commit):", "established (random of 1000):",
      "memory per connection (getsizeof):"]),
    (["bench_analytics.py", "--flows", "1000", "--seconds", "0.3", "--poll", "0.05",
      "--active", "0.1", "--idle", "0.05"],
     ["1,000 records: meter", "later records of the same flows", "1,000 flows:",
      "overhead", "the 10% target"]),
]


@pytest.fixture
def bench_path(monkeypatch):
    # As `python bench/X.py` has it: the bench folder first (bench_analytics imports bench_switch).
    monkeypatch.syspath_prepend(str(REPO / "bench"))


@pytest.mark.parametrize("argv, lines", QUICK, ids=[q[0][0] for q in QUICK])
def test_bench_runs_and_prints_its_figures(argv, lines, bench_path, monkeypatch, capsys):
    # In this process, as __main__: a subprocess per bench would spend most of its time
    # importing sbnet and numba again.
    monkeypatch.setattr(sys, "argv", [argv[0], *argv[1:]])
    runpy.run_path(str(REPO / "bench" / argv[0]), run_name="__main__")
    out = capsys.readouterr().out
    missing = [line for line in lines if line not in out]
    assert not missing, f"{argv[0]} no longer prints {missing}:\n{out}"
    # Every figure a number, never nan or inf (an empty window divides by zero).
    assert "nan" not in out and "inf " not in out, out
