"""Switch ports: in-memory queues for tests, pcap/pcapng files in and out (dpkt)."""

from __future__ import annotations

from pathlib import Path

import dpkt

from sbnet.datapath.batch import Batch


class Port:
    """A switch port; `deliver` takes the packets the switch sends out of it (and their
    bytes, when the switch has them summed already)."""

    def __init__(self, ofport: int, name: str) -> None:
        self.ofport, self.name = ofport, name
        self.tx_packets = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.rx_bytes = 0

    def deliver(self, batch: Batch, nbytes: int | None = None) -> None:
        ln = batch.length
        self.tx_packets += len(ln)
        if nbytes is None:
            # numpy's sum costs 1-3 us whatever the size: a tenth of a small batch's
            # switching.
            nbytes = sum(ln.tolist()) if len(ln) <= 128 else int(ln.sum())
        self.tx_bytes += nbytes

    def close(self) -> None:
        pass


class MemoryPort(Port):
    """Keeps every transmitted packet (tests read them back with `take_sent`)."""

    def __init__(self, ofport: int, name: str, keep: bool = True) -> None:
        super().__init__(ofport, name)
        self.keep = keep
        self._sent: list[Batch] = []

    def deliver(self, batch: Batch, nbytes: int | None = None) -> None:
        super().deliver(batch, nbytes)
        if self.keep:
            self._sent.append(batch)

    def take_sent(self) -> list[bytes]:
        out = [p for b in self._sent for p in b.packets()]
        self._sent.clear()
        return out


class PcapPort(Port):
    """Writes transmitted packets to a pcap file, or pcapng when the name ends in .pcapng."""

    def __init__(self, ofport: int, name: str, path: str | Path) -> None:
        super().__init__(ofport, name)
        self._fh = open(path, "wb")
        ng = str(path).endswith(".pcapng")
        self._writer = (dpkt.pcapng.Writer if ng else dpkt.pcap.Writer)(self._fh)
        self.clock = 0.0

    def deliver(self, batch: Batch, nbytes: int | None = None) -> None:
        super().deliver(batch, nbytes)
        for pkt in batch.packets():
            self._writer.writepkt(pkt, ts=self.clock)

    def close(self) -> None:
        self._fh.close()


def read_pcap(path: str | Path) -> list[tuple[float, bytes]]:
    """(timestamp, frame) pairs from a pcap or pcapng file; non-Ethernet links are refused."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        if reader.datalink() != dpkt.pcap.DLT_EN10MB:
            raise ValueError(f"{path}: link type {reader.datalink()} is not Ethernet")
        return [(float(ts), bytes(buf)) for ts, buf in reader]


def write_pcap(path: str | Path, packets: list[bytes], ts: float = 0.0) -> None:
    """Write frames to a pcap, or pcapng when the name ends in .pcapng."""
    with open(path, "wb") as fh:
        w = (dpkt.pcapng.Writer if str(path).endswith(".pcapng") else dpkt.pcap.Writer)(fh)
        for i, p in enumerate(packets):
            w.writepkt(p, ts=ts + i * 1e-6)
