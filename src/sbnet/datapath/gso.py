"""Software segmentation of a GSO packet (TCP or UDP over IPv4 or IPv6) into the frames a NIC would have sent."""

from __future__ import annotations

import struct

from sbnet.datapath.checksum import internet_checksum

_TCP, _UDP = 6, 17
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80


def segment(frame: bytes, size: int) -> list[bytes]:
    """`frame` cut into frames of at most `size` bytes of L4 payload each, as TSO and UDP
    segmentation offload cut them: headers copied, IPv4 total length, id and header
    checksum or IPv6 payload length per frame; TCP sequence numbers advanced, FIN and PSH
    on the last frame only, CWR on the first; UDP lengths per datagram.  L4 checksums are
    left for the caller to complete (they cover each frame's own payload).  A frame that
    is not TCP/UDP over IPv4/IPv6 (one VLAN tag at most), or needs no cutting, comes back
    as it is."""
    l3 = 14
    et = frame[12:14]
    if et in (b"\x81\x00", b"\x88\xa8") and len(frame) >= 18:
        l3, et = 18, frame[16:18]
    if et == b"\x08\x00" and len(frame) >= l3 + 20:
        v4, ihl, proto = True, (frame[l3] & 15) * 4, frame[l3 + 9]
        if struct.unpack_from("!H", frame, l3 + 6)[0] & 0x3FFF:
            return [frame]                  # a fragment: nothing to segment
    elif et == b"\x86\xdd" and len(frame) >= l3 + 40:
        v4, ihl, proto = False, 40, frame[l3 + 6]
    else:
        return [frame]
    l4 = l3 + ihl
    if proto == _TCP and len(frame) >= l4 + 20:
        hlen = (frame[l4 + 12] >> 4) * 4
    elif proto == _UDP and len(frame) >= l4 + 8:
        hlen = 8
    else:
        return [frame]
    payload = frame[l4 + hlen:]
    if size <= 0 or len(payload) <= size or hlen < 8:
        return [frame]
    head = bytearray(frame[:l4 + hlen])
    out = []
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
    seq = struct.unpack_from("!I", head, l4 + 4)[0] if proto == _TCP else 0
    ip_id = struct.unpack_from("!H", head, l3 + 4)[0] if v4 else 0
    flags = head[l4 + 13] if proto == _TCP else 0
    for i, chunk in enumerate(chunks):
        h = bytearray(head)
        if v4:
            struct.pack_into("!HH", h, l3 + 2, ihl + hlen + len(chunk), (ip_id + i) & 0xFFFF)
            h[l3 + 10:l3 + 12] = b"\0\0"
            h[l3 + 10:l3 + 12] = internet_checksum(bytes(h[l3:l4])).to_bytes(2, "big")
        else:
            struct.pack_into("!H", h, l3 + 4, hlen + len(chunk))
        if proto == _TCP:
            struct.pack_into("!I", h, l4 + 4, (seq + i * size) & 0xFFFFFFFF)
            f = flags
            if i < len(chunks) - 1:
                f &= ~(_FIN | _PSH)
            if i:
                f &= ~_CWR
            h[l4 + 13] = f
        else:
            struct.pack_into("!H", h, l4 + 4, 8 + len(chunk))
        out.append(bytes(h) + chunk)
    return out
