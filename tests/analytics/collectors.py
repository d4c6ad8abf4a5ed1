"""Real IPFIX collectors for the tests: nfdump's nfcapd, and tshark reading the messages from a pcap."""

from __future__ import annotations

import csv
import io
import socket
import subprocess
import time
from pathlib import Path

import dpkt


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Nfcapd:
    """nfcapd listening on 127.0.0.1; `flows()` stops it and reads its file with nfdump."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "nfcapd"
        self.dir.mkdir()
        self.port = free_udp_port()
        self.log = open(workdir / "nfcapd.log", "w")
        self.proc = subprocess.Popen(
            ["nfcapd", "-b", "127.0.0.1", "-p", str(self.port), "-w", str(self.dir),
             "-t", "3600", "-B", "8000000"], stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_bound()

    def _wait_bound(self) -> None:
        deadline = time.time() + 10
        while "Startup nfcapd" not in self.log_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"nfcapd did not start: {self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.dir.parent / "nfcapd.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            time.sleep(0.5)                    # let it drain its socket
            self.proc.terminate()
            self.proc.wait(timeout=20)
        if not self.log.closed:
            self.log.close()

    def flows(self) -> list[dict]:
        """Every stored record as nfdump's csv row (dict by column)."""
        self.stop()
        out = subprocess.run(["nfdump", "-R", str(self.dir), "-o", "csv", "-N"],
                             capture_output=True, text=True, check=True).stdout
        out = out.split("\nSummary")[0]           # nfdump appends a summary table
        rows = csv.DictReader(io.StringIO(out))
        return [r for r in rows if (r.get("ts") or "")[:1].isdigit()]


def write_udp_pcap(path: Path, messages: list[bytes], dport: int = 4739) -> None:
    """IPFIX messages as UDP datagrams in a pcap, for tshark."""
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, m in enumerate(messages):
            udp = dpkt.udp.UDP(sport=50000, dport=dport, data=m)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=b"\x7f\0\0\1", dst=b"\x7f\0\0\1", p=17, data=udp)
            ip.len = len(ip)
            eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x02" * 6, type=0x0800, data=ip)
            w.writepkt(bytes(eth), ts=1.7e9 + i * 1e-3)
