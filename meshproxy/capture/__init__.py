"""Reading captures: pcap and pcapng files to packets, packets to TCP byte streams.

``read_packets(path, report)`` yields :class:`Packet` s (every pcapng interface, integer-nanosecond times) and
fills a :class:`CaptureReport` (format, interfaces, damage). ``TcpReassembler().feed(packet)`` turns packets
into per-connection, per-direction :class:`Data` / :class:`Gap` / :class:`Closed` events that a protocol
decoder (``meshproxy.codecs``) can consume. See ``docs/capture.md``.
"""

from __future__ import annotations

from meshproxy.capture._files import (
    DEFAULT_SNAPLEN,
    MAX_RECORD,
    CaptureReader,
    CaptureReport,
    Damage,
    Interface,
    Packet,
    read_packets,
)
from meshproxy.capture._packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    SUPPORTED_LINK_TYPES,
    Skipped,
    TcpSegment,
    decode_tcp,
)
from meshproxy.capture._reassembly import (
    DEFAULT_MAX_BUFFERED,
    DEFAULT_REORDER_WINDOW,
    EPHEMERAL_PORTS_START,
    Closed,
    Connection,
    Data,
    Direction,
    Gap,
    Opened,
    StreamEvent,
    TcpReassembler,
    reassemble,
)

__all__ = [
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_REORDER_WINDOW",
    "DEFAULT_SNAPLEN",
    "EPHEMERAL_PORTS_START",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "MAX_RECORD",
    "SUPPORTED_LINK_TYPES",
    "CaptureReader",
    "CaptureReport",
    "Closed",
    "Connection",
    "Damage",
    "Data",
    "Direction",
    "Gap",
    "Interface",
    "Opened",
    "Packet",
    "Skipped",
    "StreamEvent",
    "TcpReassembler",
    "TcpSegment",
    "decode_tcp",
    "read_packets",
    "reassemble",
]
