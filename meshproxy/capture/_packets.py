"""Link layer, IPv4/IPv6 and TCP headers of a captured frame: :func:`decode_tcp` gives a :class:`TcpSegment`
or says, in a word, why the frame is not one we can use.

Only what TCP reassembly needs is parsed. Lengths come from the IP header, not the frame (Ethernet pads short
frames; a snapshot length cuts long ones): a segment knows how much payload it *had* (``length``) and how
much of it was captured (``payload``), so a cut is a reported gap rather than silently shorter data.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from meshproxy.capture._files import Packet

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_BSD = (12, 14)  # raw IP as some BSDs number it
SUPPORTED_LINK_TYPES = frozenset(
    {LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6}
    | {LINKTYPE_LINUX_SLL2, *_RAW_BSD}
)

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
_NULL_IPV6 = frozenset({10, 24, 28, 30})  # AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, macOS
_IPV6_SKIPPABLE = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPPROTO_TCP = 6
_IPV6_FRAGMENT = 44
_IPV6_AH = 51

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(slots=True, frozen=True)
class TcpSegment:
    """One TCP segment: addresses as text (``"127.0.0.1"``, ``"::1"``), flags as the header's bits.

    ``length`` is the payload length the IP header declares; ``payload`` is what the capture holds of it
    (shorter only when the frame was cut by the snapshot length).
    """

    ts_ns: int
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    length: int
    packet_index: int = -1

    @property
    def syn(self) -> bool:
        return bool(self.flags & SYN)

    @property
    def fin(self) -> bool:
        return bool(self.flags & FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & RST)

    @property
    def has_ack(self) -> bool:
        return bool(self.flags & ACK)


@dataclass(slots=True, frozen=True)
class Skipped:
    """A frame that gives no TCP segment, and why (``reason`` is a short stable key for counting, e.g.
    ``"not tcp"``, ``"ipv4 fragment"``, ``"unsupported link type 105"``, ``"truncated ipv4 header"``)."""

    reason: str


def _network_layer(packet: Packet) -> tuple[int, int] | Skipped:
    """(IP version, offset of the IP header) in the frame."""
    data = packet.data
    link = packet.link_type
    if link == LINKTYPE_ETHERNET:
        at = 12
        while True:
            if len(data) < at + 2:
                return Skipped("truncated link header")
            ethertype = struct.unpack_from("!H", data, at)[0]
            if ethertype in _ETH_VLAN:
                at += 4
                continue
            break
        at += 2
        return _by_ethertype(ethertype, at)
    if link == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return Skipped("truncated link header")
        return _by_ethertype(struct.unpack_from("!H", data, 14)[0], 16)
    if link == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            return Skipped("truncated link header")
        return _by_ethertype(struct.unpack_from("!H", data, 0)[0], 20)
    if link in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(data) < 4:
            return Skipped("truncated link header")
        # NULL stores the address family in the capturing host's byte order, LOOP in network order. A
        # family fits in 16 bits, so whichever reading does not is the wrong one.
        family = struct.unpack_from("!I" if link == LINKTYPE_LOOP else "<I", data, 0)[0]
        if family > 0xFFFF:
            family = struct.unpack_from(">I", data, 0)[0]
        if family == 2:
            return 4, 4
        if family in _NULL_IPV6:
            return 6, 4
        return Skipped("not ip")
    if link == LINKTYPE_RAW or link in _RAW_BSD:
        if not data:
            return Skipped("truncated ip header")
        return data[0] >> 4, 0
    if link == LINKTYPE_IPV4:
        return 4, 0
    if link == LINKTYPE_IPV6:
        return 6, 0
    return Skipped(f"unsupported link type {link}")


def _by_ethertype(ethertype: int, at: int) -> tuple[int, int] | Skipped:
    if ethertype == _ETH_IPV4:
        return 4, at
    if ethertype == _ETH_IPV6:
        return 6, at
    return Skipped("not ip")


def decode_tcp(packet: Packet) -> TcpSegment | Skipped:
    """The TCP segment a captured frame carries, or why there is none. Never raises."""
    found = _network_layer(packet)
    if isinstance(found, Skipped):
        return found
    version, at = found
    data = packet.data
    if version == 4:
        if len(data) < at + 20:
            return Skipped("truncated ipv4 header")
        first, protocol = data[at], data[at + 9]
        (total,) = struct.unpack_from("!H", data, at + 2)
        (flags_fragment,) = struct.unpack_from("!H", data, at + 6)
        if first >> 4 != 4:
            return Skipped("bad ip version")
        header = (first & 0x0F) * 4
        if header < 20 or len(data) < at + header:
            return Skipped("truncated ipv4 header")
        if protocol != _IPPROTO_TCP:
            return Skipped("not tcp")
        # More-fragments set or a non-zero offset: a piece of a datagram. Fragmented TCP is rare (TCP sizes
        # its segments to the path MTU) and is not reassembled: the piece is skipped and counted, and the
        # bytes it held become a reported gap in its stream.
        if flags_fragment & 0x3FFF:
            return Skipped("ipv4 fragment")
        if total < header:
            if total == 0:  # TSO on the capturing host: the length is not filled in; the frame is the truth
                total = len(data) - at
            else:
                return Skipped("bad ipv4 length")
        src = socket.inet_ntop(socket.AF_INET, data[at + 12 : at + 16])
        dst = socket.inet_ntop(socket.AF_INET, data[at + 16 : at + 20])
        transport = at + header
        transport_length = total - header
    elif version == 6:
        if len(data) < at + 40:
            return Skipped("truncated ipv6 header")
        payload_length, next_header = struct.unpack_from("!HB", data, at + 4)
        src = socket.inet_ntop(socket.AF_INET6, data[at + 8 : at + 24])
        dst = socket.inet_ntop(socket.AF_INET6, data[at + 24 : at + 40])
        transport = at + 40
        if payload_length == 0:  # a jumbogram (or TSO): the frame is the truth
            payload_length = len(data) - transport
        end = transport + payload_length
        while next_header != _IPPROTO_TCP:
            if next_header in _IPV6_SKIPPABLE or next_header == _IPV6_AH:
                if len(data) < transport + 2:
                    return Skipped("truncated ipv6 extension header")
                length_field = data[transport + 1]
                size = (length_field + 2) * 4 if next_header == _IPV6_AH else (length_field + 1) * 8
                next_header = data[transport]
                transport += size
            elif next_header == _IPV6_FRAGMENT:
                if len(data) < transport + 8:
                    return Skipped("truncated ipv6 extension header")
                offset_flags = struct.unpack_from("!H", data, transport + 2)[0]
                if offset_flags & 0xFFF9:  # offset or more-fragments: a piece (an atomic fragment is whole)
                    return Skipped("ipv6 fragment")
                next_header = data[transport]
                transport += 8
            else:
                return Skipped("not tcp")
        transport_length = end - transport
        if transport_length < 0:
            return Skipped("bad ipv6 length")
    else:
        return Skipped("bad ip version")
    if transport_length < 20 or len(data) < transport + 20:
        return Skipped("truncated tcp header")
    sport, dport, seq, ack, offset_byte, flags = struct.unpack_from("!HHIIBB", data, transport)
    tcp_header = (offset_byte >> 4) * 4
    if tcp_header < 20 or tcp_header > transport_length or len(data) < transport + tcp_header:
        return Skipped("truncated tcp header")
    start = transport + tcp_header
    length = transport_length - tcp_header
    payload = data[start : start + length]
    return TcpSegment(packet.ts_ns, src, sport, dst, dport, seq, ack, flags, payload, length, packet.index)
