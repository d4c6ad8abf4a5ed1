"""Batch: packets in one 2-D array with headroom for header pushes."""

import numpy as np

from sbnet.datapath.batch import HEADROOM, Batch


def test_from_packets_round_trip():
    pkts = [b"\x01" * 60, b"", bytes(range(200)), b"ab"]
    b = Batch.from_packets(pkts, in_port=[1, 2, 3, 4])
    assert len(b) == 4
    assert b.packets() == pkts
    assert (b.start == HEADROOM).all()
    assert b.data.dtype == np.uint8 and b.data.shape[0] == 4
    assert b.in_port.tolist() == [1, 2, 3, 4]
    assert b.length.dtype == np.int32 and b.start.dtype == np.int32
    assert b.in_port.dtype == np.uint32
    # headroom is zero and free
    assert not b.data[:, :HEADROOM].any()


def test_scalar_port_and_custom_headroom():
    b = Batch.from_packets([b"xyz"], in_port=7, headroom=10)
    assert b.start[0] == 10 and b.packet(0) == b"xyz" and b.in_port[0] == 7


def test_from_array_and_take():
    frames = np.arange(5 * 16, dtype=np.uint8).reshape(5, 16)
    b = Batch.from_array(frames, lengths=[16, 10, 16, 0, 3], in_port=5)
    assert b.packet(1) == frames[1, :10].tobytes()
    assert b.packet(3) == b""
    sub = b.take(np.array([4, 0]))
    assert sub.packets() == [frames[4, :3].tobytes(), frames[0].tobytes()]
    sub.data[:] = 0
    assert b.packet(0) == frames[0].tobytes()  # take copies
    assert b.take(np.array([True, False, True, False, False])).packets() == [
        b.packet(0), b.packet(2)]


def test_empty():
    e = Batch.empty()
    assert len(e) == 0 and e.packets() == []
    assert len(Batch.from_packets([], in_port=1)) == 0
