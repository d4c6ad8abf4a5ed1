"""The main job and sbnet trace, driven through the real command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import rdpcap, wrpcap
from typer.testing import CliRunner

from sbnet.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "l2-acl.flows"
runner = CliRunner()


def test_replay_generated_traffic_reports_rules_ports_and_drops():
    res = runner.invoke(app, ["replay", str(EXAMPLE), "--count", "3000"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Per rule" in res.output and "Dropped, by reason" in res.output
    assert "drop rule: table=1,priority=200" in res.output
    assert "3000 packets:" in res.output


def test_replay_pcap_in_and_out(tmp_path):
    pkts = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:04") / IP(dst="10.0.0.4") / TCP(dport=80),
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(dst="10.0.0.2") / TCP(dport=22)]
    wrpcap(str(tmp_path / "in.pcap"), pkts)
    res = runner.invoke(app, ["replay", str(EXAMPLE), "--pcap", str(tmp_path / "in.pcap"),
                              "--out", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out4 = rdpcap(str(tmp_path / "out" / "port-4.pcap"))
    assert len(out4) == 1 and out4[0][Dot1Q].vlan == 100 and out4[0][IP].ttl == 63
    assert len(rdpcap(str(tmp_path / "out" / "port-2.pcap"))) == 0   # ssh is dropped


def test_bad_flow_file_is_refused_with_line_and_column(tmp_path):
    bad = tmp_path / "bad.flows"
    bad.write_text("priority=1 actions=drop\nip,nw_dst=10.0.0.300 actions=output:2\n")
    res = runner.invoke(app, ["replay", str(bad)], env={"COLUMNS": "200"})
    assert res.exit_code == 2
    assert "line 2, column 11" in res.output


def test_trace_hex_and_flow_syntax_agree():
    pkt = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
                / TCP(sport=1234, dport=80, flags="S"))
    by_hex = runner.invoke(app, ["trace", str(EXAMPLE), pkt.hex()])
    by_flow = runner.invoke(app, ["trace", str(EXAMPLE),
                                  "in_port=1,tcp,dl_dst=02:00:00:00:00:02,tp_dst=80"])
    for res in (by_hex, by_flow):
        assert res.exit_code == 0, res.output
        assert "Datapath actions: set(ipv4(ttl=63)),2" in res.output
        assert "2. priority=100,eth_dst=02:00:00:00:00:02" in res.output


def test_demo_script_is_the_main_job():
    script = (ROOT / "scripts" / "demo").read_text()
    assert "sbnet run --demo" in script
    res = subprocess.run([sys.executable, "-m", "sbnet", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "run" in res.stdout and "replay" in res.stdout \
        and "trace" in res.stdout


def _conversation(tmp_path):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    c, s = "10.0.0.1", "10.0.0.2"
    e1 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    e2 = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    out = [e1 / IP(src=c, dst=s) / TCP(sport=4000, dport=80, flags="S", seq=100),
           e1 / IP(src=c, dst=s) / TCP(sport=4001, dport=22, flags="S", seq=100),
           e1 / IP(src=c, dst=s) / TCP(sport=4000, dport=80, flags="A", seq=101, ack=501)]
    back = [e2 / IP(src=s, dst=c) / TCP(sport=80, dport=4000, flags="SA", seq=500, ack=101)]
    for t, p in zip((1.0, 1.1, 3.0), out):
        p.time = t
    back[0].time = 2.0
    wrpcap(str(tmp_path / "client.pcap"), out)
    wrpcap(str(tmp_path / "server.pcap"), back)
    return ["--pcap", f"1:{tmp_path / 'client.pcap'}", "--pcap", f"2:{tmp_path / 'server.pcap'}"]


def test_conntrack_lists_filters_and_flushes_by_zone(tmp_path):
    flows = str(ROOT / "examples" / "stateful.flows")
    args = _conversation(tmp_path)
    res = runner.invoke(app, ["conntrack", flows, *args])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=4000,dport=80)")
    assert "zone=9" in lines[0] and "mark=7" in lines[0] and "ESTABLISHED" in lines[0]
    assert runner.invoke(app, ["conntrack", flows, *args, "--zone", "3"]).output.strip() == ""
    assert runner.invoke(app, ["conntrack", flows, *args, "--filter", "dport=22"]).output.strip() == ""
    assert runner.invoke(app, ["conntrack", flows, *args, "--flush-zone", "9"]).output.strip() == ""


def test_dpctl_marks_each_megaflow_tier_and_why():
    res = runner.invoke(app, ["dpctl", "dump-flows", str(EXAMPLE), "--offload", "sriov",
                              "--count", "500"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines and all("tier:" in l for l in lines)
    assert any("tier:software (sriov: match on ip_proto is not supported" in l for l in lines)
    res = runner.invoke(app, ["replay", str(EXAMPLE), "--offload", "smartnic", "--count", "3000"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "% offloaded" in res.output
    assert runner.invoke(app, ["replay", str(EXAMPLE), "--offload", "nope"]).exit_code == 2
