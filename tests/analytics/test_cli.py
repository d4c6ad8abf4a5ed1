"""`sbnet flows top` and `sbnet flows plot` through the real command line, on a replayed pcap."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbnet.analytics.traffic import write_flow_pcap
from sbnet.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "l2-acl.flows"
runner = CliRunner()


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    path = tmp_path_factory.mktemp("flows") / "flows.pcap"
    n = write_flow_pcap(path, 600, duration=40)
    return path, n


def test_top_ranks_talkers_and_counts_every_packet(pcap):
    path, n = pcap
    res = runner.invoke(app, ["flows", "top", str(EXAMPLE), "--pcap", str(path), "--once",
                              "--by", "packets", "--n", "5"])
    assert res.exit_code == 0, res.output
    m = re.search(r"(\d+) packets in (\d+) flow records: (\d+) forwarded, (\d+) dropped", res.output)
    assert m and int(m.group(1)) == n and int(m.group(3)) + int(m.group(4)) == n
    rows = [ln for ln in res.output.splitlines() if ln.startswith("│")]
    assert len(rows) == 5
    counts = [int(r.split("│")[7].strip().replace(",", "")) for r in rows]
    assert counts == sorted(counts, reverse=True)


def test_top_live_view_with_ipfix_and_metrics(pcap, tmp_path):
    path, n = pcap
    res = runner.invoke(app, ["flows", "top", str(EXAMPLE), "--pcap", str(path), "--interval", "5",
                              "--ipfix", "127.0.0.1:9", "--metrics-port", "0"])
    assert res.exit_code == 0, res.output
    assert "top talkers by bytes" in res.output and "metrics on http://127.0.0.1:" in res.output
    assert re.search(r"IPFIX: \d+ messages, \d+ records", res.output)


def test_plot_writes_a_png(pcap, tmp_path):
    path, _ = pcap
    out = tmp_path / "flows.png"
    res = runner.invoke(app, ["flows", "plot", str(EXAMPLE), "--pcap", str(path), "--out", str(out),
                              "--step", "2"])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_bad_rank_is_refused():
    res = runner.invoke(app, ["flows", "top", str(EXAMPLE), "--by", "flows", "--once"])
    assert res.exit_code != 0
