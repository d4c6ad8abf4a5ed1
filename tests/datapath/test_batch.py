"""Batch: packets in one 2-D array with headroom for header pushes."""

import numpy as np
import pytest

from sbnet.datapath.batch import HEADROOM, Batch, filled


@pytest.mark.parametrize("copies", [1, 5])
def test_from_packets_round_trip(copies):
    # 4 packets take the row-by-row copy, 20 the bulk one: the same batch either way.
    pkts = [b"\x01" * 60, b"", bytes(range(200)), b"ab"] * copies
    b = Batch.from_packets(pkts, in_port=list(range(1, 4 * copies + 1)))
    assert len(b) == 4 * copies
    assert b.packets() == pkts
    assert (b.start == HEADROOM).all()
    assert b.data.dtype == np.uint8 and b.data.shape == (4 * copies, 328)
    assert b.in_port.tolist() == list(range(1, 4 * copies + 1))
    # nothing but the packets: headroom and the bytes behind each packet are zero
    assert int(b.data.sum()) == sum(sum(p) for p in pkts)
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


def test_filled_columns_are_independent_and_single_port_sees_mixed_rows():
    # filled() copies from a shared template: a later stage moving one batch's starts
    # must not move another's.
    a = filled(3, 64, np.int32)
    a[0] = 10
    assert filled(3, 64, np.int32).tolist() == [64, 64, 64]
    assert filled(5000, 7, np.uint32).tolist() == [7] * 5000
    b = Batch.from_packets([b"\x00" * 60] * 3, in_port=4)
    assert b.single_port() == 4
    b.in_port[2] = 5
    assert b.single_port() is None
    assert Batch.empty().single_port() is None
