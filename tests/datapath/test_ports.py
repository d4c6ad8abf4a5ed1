"""pcap and pcapng ports: what the switch sends is what the file holds, in either format."""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.ports import PcapPort, read_pcap, write_pcap
from sbnet.datapath.switch import Switch


@pytest.mark.parametrize("ext", ["pcap", "pcapng"])
def test_pcap_round_trip_through_the_switch(tmp_path, ext):
    frames = [raw(Ether() / IP(dst=f"10.0.0.{i}") / UDP(dport=i)) for i in range(1, 6)]
    src = tmp_path / f"in.{ext}"
    write_pcap(src, frames)
    assert [f for _, f in read_pcap(src)] == frames
    sw = Switch()
    sw.add_port(1)
    sw.add_port(2, port=PcapPort(2, "p2", tmp_path / f"out.{ext}"))
    sw.load("in_port=1 actions=output:2")
    sw.process(Batch.from_packets([f for _, f in read_pcap(src)], 1))
    sw.ports[2].close()
    assert [f for _, f in read_pcap(tmp_path / f"out.{ext}")] == frames


def test_non_ethernet_capture_is_refused(tmp_path):
    import dpkt
    path = tmp_path / "raw.pcap"
    with open(path, "wb") as fh:
        dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_RAW).writepkt(b"\x45" + bytes(19))
    with pytest.raises(ValueError, match="not Ethernet"):
        read_pcap(path)
