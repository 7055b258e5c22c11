"""Writing pcapng, sans-IO: TCP conversations in, pcapng bytes out.

The tap (``meshproxy.capture.tap``) sees a proxied connection as bytes each way, not as packets. To give
tools that read captures (``meshproxy decode``, Wireshark, tcpdump -r) what they expect, ``TcpConversation``
turns those bytes into the packets a TCP connection between the two real endpoints would have carried: a
three-way handshake, data segments of at most ``MAX_SEGMENT`` bytes with correct sequence and acknowledgement
numbers in each direction, and a FIN exchange (or a reset) at the end, framed as Ethernet + IPv4 or IPv6 with
valid checksums. ``PcapngWriter`` frames them as pcapng blocks: one section header, one Ethernet interface
with nanosecond timestamps (``if_tsresol`` = 9, so times are integers as the reader wants them), and an
enhanced packet block per frame.

Nothing here does I/O or reads a clock: the caller passes times in and writes the bytes out. That keeps the
framing deterministic and testable, and lets the tap do the file writes off the event loop.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field

__all__ = [
    "ACK",
    "FIN",
    "MAX_SEGMENT",
    "PSH",
    "RST",
    "SYN",
    "PcapngWriter",
    "TcpConversation",
    "tcp_frame",
]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

MAX_SEGMENT = 65495
"""Payload bytes per segment: the most an IPv4 packet (65535 bytes, 20 of IP and 20 of TCP header) holds,
so that every frame is a well-formed packet whatever the address family."""

LINKTYPE_ETHERNET = 1
_SHB_MAGIC = 0x1A2B3C4D
_CLIENT_MAC = bytes.fromhex("020000000001")
_SERVER_MAC = bytes.fromhex("020000000002")
"""Locally administered MAC addresses: the frames are synthesised, no real interface carried them."""
_ETHERTYPE_IPV4 = b"\x08\x00"
_ETHERTYPE_IPV6 = b"\x86\xdd"


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071). The ones' complement sum of 16-bit words equals the number the
    bytes spell modulo 0xFFFF, which Python's big integers compute in C: ~10x faster than summing words."""
    if len(data) % 2:
        data += b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF
    if total == 0 and any(data):
        total = 0xFFFF
    return ~total & 0xFFFF


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``host`` as an address; an IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer) is
    written as the IPv4 address it is."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class _Route:
    """Everything about one direction of a conversation that is the same in every frame, computed once
    (parsing addresses per frame cost more than building the frame)."""

    src_port: int
    dst_port: int
    src: bytes
    """Packed source address (4 or 16 bytes)."""
    dst: bytes
    ethernet: bytes
    """Destination MAC, source MAC, ethertype."""

    @classmethod
    def between(cls, src: tuple[str, int], dst: tuple[str, int], *, from_client: bool = True) -> _Route:
        source, destination = _address(src[0]), _address(dst[0])
        if source.version != destination.version:
            # A listener on a dual-stack socket reports an IPv6 local address for an IPv4 client or the
            # reverse: write both as IPv6, IPv4 addresses mapped.
            source = ipaddress.IPv6Address(f"::ffff:{source}") if source.version == 4 else source
            destination = ipaddress.IPv6Address(f"::ffff:{destination}") if destination.version == 4 else destination
        macs = _SERVER_MAC + _CLIENT_MAC if from_client else _CLIENT_MAC + _SERVER_MAC  # destination first
        ethertype = _ETHERTYPE_IPV4 if source.version == 4 else _ETHERTYPE_IPV6
        return cls(src[1], dst[1], source.packed, destination.packed, macs + ethertype)

    def frame(self, seq: int, ack: int, flags: int, payload: bytes = b"", window: int = 65535) -> bytes:
        tcp = _TCP.pack(self.src_port, self.dst_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0)
        length = 20 + len(payload)
        if len(self.src) == 4:
            pseudo = self.src + self.dst + _PSEUDO4.pack(0, 6, length)
            ip = _IPV4.pack(0x45, 0, 20 + length, 0, 0x4000, 64, 6, 0, self.src, self.dst)
            ip = ip[:10] + _CHECKSUM.pack(_checksum(ip)) + ip[12:]
        else:
            pseudo = self.src + self.dst + _PSEUDO6.pack(length, 6)
            ip = _IPV6.pack(6 << 28, length, 6, 64, self.src, self.dst)
        checksum = _checksum(pseudo + tcp + payload)
        return b"".join((self.ethernet, ip, tcp[:16], _CHECKSUM.pack(checksum), tcp[18:], payload))


_TCP = struct.Struct("!HHIIBBHHH")
_PSEUDO4 = struct.Struct("!BBH")
_PSEUDO6 = struct.Struct("!IxxxB")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_CHECKSUM = struct.Struct("!H")


def tcp_frame(
    src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, payload: bytes = b"",
    *, window: int = 65535,
) -> bytes:
    """One Ethernet frame carrying one TCP segment from ``src`` to ``dst`` (``(host, port)``), checksums
    computed. Addresses of different families are both written as IPv6 (IPv4-mapped counts as IPv4)."""
    return _Route.between(src, dst).frame(seq, ack, flags, payload, window)


@dataclass(slots=True)
class PcapngWriter:
    """pcapng blocks: ``header()`` once (section header + the one interface), then ``packet()`` per frame."""

    snaplen: int = 0
    """The interface's snapshot length; 0 means no limit (every frame is written whole)."""
    application: str = "meshproxy tap"

    def header(self) -> bytes:
        shb_options = _option(4, self.application.encode()) + _option(0, b"")
        shb_body = struct.pack("<IHHq", _SHB_MAGIC, 1, 0, -1) + shb_options
        shb = self._block(0x0A0D0D0A, shb_body)
        idb_options = _option(2, b"meshproxy") + _option(9, bytes([9])) + _option(0, b"")
        idb = self._block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, self.snaplen) + idb_options)
        return shb + idb

    def packet(self, ts_ns: int, frame: bytes) -> bytes:
        """An enhanced packet block for ``frame`` at ``ts_ns`` (nanoseconds since the epoch)."""
        body = struct.pack("<IIIII", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(frame), len(frame)) + _pad4(frame)
        return self._block(6, body)

    @staticmethod
    def _block(kind: int, body: bytes) -> bytes:
        length = len(body) + 12
        return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


@dataclass(slots=True)
class TcpConversation:
    """The packets of one TCP connection between ``client`` and ``server``, made up from its byte streams.

    ``open()`` gives the handshake; ``client_data`` / ``server_data`` the segments of the bytes each side
    sent (every segment acknowledges all the other side sent so far, as a receiver that keeps up would);
    ``close()`` the FIN exchange, or a reset. Each returns ``(ts_ns, frame)`` pairs for ``PcapngWriter``.
    ``skip_client`` / ``skip_server`` advance a direction's sequence number over bytes that will not be
    written (the tap dropped them): a reader of the capture sees a hole of exactly that size, where it is.
    """

    client: tuple[str, int]
    server: tuple[str, int]
    client_seq: int = field(default_factory=lambda: int.from_bytes(os.urandom(4), "big"))
    """The next sequence number of the client's direction (starts as its initial sequence number)."""
    server_seq: int = field(default_factory=lambda: int.from_bytes(os.urandom(4), "big"))
    closed: bool = False
    _c2s: _Route = field(init=False, repr=False)
    _s2c: _Route = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._c2s = _Route.between(self.client, self.server)
        self._s2c = _Route.between(self.server, self.client, from_client=False)

    def open(self, ts_ns: int) -> list[tuple[int, bytes]]:
        """SYN, SYN+ACK, ACK; the streams start one past each initial sequence number."""
        c, s = self.client_seq, self.server_seq
        self.client_seq, self.server_seq = c + 1, s + 1
        return [
            (ts_ns, self._c2s.frame(c, 0, SYN)),
            (ts_ns, self._s2c.frame(s, c + 1, SYN | ACK)),
            (ts_ns, self._c2s.frame(c + 1, s + 1, ACK)),
        ]

    def resume(self, ts_ns: int) -> list[tuple[int, bytes]]:
        """For a connection already open when recording began: no handshake (its sequence numbers are not
        known, as tcpdump would not know them), but one bare ACK from the client, so that a reader calls the
        right side the client even when the server is the first to send data (a reply that was pending)."""
        return [(ts_ns, self._c2s.frame(self.client_seq, self.server_seq, ACK))]

    def client_data(self, ts_ns: int, data: bytes) -> list[tuple[int, bytes]]:
        frames = []
        for start in range(0, len(data), MAX_SEGMENT):
            chunk = data[start : start + MAX_SEGMENT]
            frame = self._c2s.frame(self.client_seq, self.server_seq, PSH | ACK, chunk)
            frames.append((ts_ns, frame))
            self.client_seq += len(chunk)
        return frames

    def server_data(self, ts_ns: int, data: bytes) -> list[tuple[int, bytes]]:
        frames = []
        for start in range(0, len(data), MAX_SEGMENT):
            chunk = data[start : start + MAX_SEGMENT]
            frame = self._s2c.frame(self.server_seq, self.client_seq, PSH | ACK, chunk)
            frames.append((ts_ns, frame))
            self.server_seq += len(chunk)
        return frames

    def skip_client(self, length: int) -> None:
        self.client_seq += length

    def skip_server(self, length: int) -> None:
        self.server_seq += length

    def close(self, ts_ns: int, *, by_server: bool, reset: bool = False) -> list[tuple[int, bytes]]:
        """The end of the connection: a reset from the server (the proxy) when ``reset``, else FIN from the
        side that closed first (``by_server``), FIN+ACK from the other, and the last ACK."""
        if self.closed:
            return []
        self.closed = True
        c, s = self.client_seq, self.server_seq
        if reset:
            return [(ts_ns, self._s2c.frame(s, c, RST | ACK))]
        if by_server:
            return [
                (ts_ns, self._s2c.frame(s, c, FIN | ACK)),
                (ts_ns, self._c2s.frame(c, s + 1, FIN | ACK)),
                (ts_ns, self._s2c.frame(s + 1, c + 1, ACK)),
            ]
        return [
            (ts_ns, self._c2s.frame(c, s, FIN | ACK)),
            (ts_ns, self._s2c.frame(s, c + 1, FIN | ACK)),
            (ts_ns, self._c2s.frame(c + 1, s + 1, ACK)),
        ]
