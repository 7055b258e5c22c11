"""pcap and pcapng files in, :class:`Packet` records out, with every interface and integer-nanosecond times.

Written here rather than taken from a library because the common Python readers fall short for replay: they
read only the first interface of a pcapng (a ``tcpdump -i any`` or a multi-interface ``dumpcap`` file has
several, each with its own link type and timestamp resolution) and turn timestamps into floats, which lose
the nanoseconds that latency figures and replay schedules are computed from.

Bad input is a normal case: a capture is often cut short (the capturing program killed, a disk full) and may
be damaged anywhere. The reader never allocates what a file *declares*: a record or block length is checked
against the bytes the file really has and a sane maximum before a single byte is read for it, and what cannot
be read is written into :class:`CaptureReport` as :class:`Damage` instead of raised. Everything before the
damage is yielded.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAX_RECORD = 256 << 20
"""No packet record or pcapng block is larger than this (256 MiB); a bigger declared length is damage."""
DEFAULT_SNAPLEN = 262144
"""libpcap's default snapshot length; records up to this size are accepted whatever the header's snaplen."""

_PCAP_MAGICS: dict[bytes, tuple[str, int, int]] = {
    # magic as stored: (byte order, nanoseconds per fraction unit, record header size)
    b"\xd4\xc3\xb2\xa1": ("<", 1000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1000, 24),  # Alexey Kuznetzov's modified pcap: 8 more bytes per record
    b"\xa1\xb2\xcd\x34": (">", 1000, 24),
}
_CHUNK = 1 << 20
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_OBSOLETE_PB = 0x00000002
_SPB = 0x00000003
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D


@dataclass(slots=True, frozen=True)
class Packet:
    """One captured frame, starting at its link-layer header.

    ``ts_ns`` is integer nanoseconds since the Unix epoch (the interface's ``if_tsoffset`` applied).
    ``captured_length`` may be less than ``original_length`` when the capture's snapshot length cut the frame.
    ``interface`` numbers interfaces across the whole file (a second pcapng section's first interface follows
    the first section's last), so it indexes :attr:`CaptureReport.interfaces`. ``timestamp_known`` is False
    only for pcapng simple packet blocks, which carry no time: they get the time of the packet before them.
    """

    index: int
    ts_ns: int
    link_type: int
    data: bytes
    original_length: int
    interface: int = 0
    timestamp_known: bool = True

    @property
    def captured_length(self) -> int:
        return len(self.data)


@dataclass(slots=True, frozen=True)
class Interface:
    """What a pcap header or a pcapng interface description block says about where packets came from."""

    link_type: int
    snaplen: int
    name: str | None = None
    ticks_per_second: int = 1_000_000
    """``if_tsresol`` as a rate: 1_000_000 for microseconds (the pcapng default), 10**9 for nanoseconds;
    a power of two when the writer chose a binary resolution."""
    offset_seconds: int = 0
    section: int = 0


@dataclass(slots=True, frozen=True)
class Damage:
    """Where (byte offset in the file) and what could not be read."""

    offset: int
    what: str


@dataclass(slots=True)
class CaptureReport:
    """What reading a file found besides packets: format, interfaces, skipped blocks and damage.

    Filled in while packets are yielded; complete once the iterator is exhausted. ``complete`` is False when
    reading stopped at damage before the end of the file (what followed it was not read).
    """

    format: str = "unknown"
    packets: int = 0
    interfaces: list[Interface] = field(default_factory=list)
    sections: int = 0
    damage: list[Damage] = field(default_factory=list)
    skipped_blocks: dict[int, int] = field(default_factory=dict)
    """pcapng block types read past without use (name resolution, statistics, custom, ...) and how many."""
    cut_packets: int = 0
    """Packets whose captured length is less than their length on the wire (snaplen)."""
    complete: bool = True

    def damaged(self, offset: int, what: str, *, stop: bool) -> None:
        self.damage.append(Damage(offset, what))
        if stop:
            self.complete = False


def _timestamp_ns(ticks: int, interface: Interface) -> int:
    """Ticks at the interface's resolution to integer nanoseconds: exact for decimal resolutions down to 1 ns,
    floored below that and for binary resolutions (a float would lose nanoseconds after 2**53 ns, in 1970+104
    days)."""
    rate = interface.ticks_per_second
    if rate == 1_000_000_000:
        ns = ticks
    elif 1_000_000_000 % rate == 0:
        ns = ticks * (1_000_000_000 // rate)
    else:
        ns = ticks * 1_000_000_000 // rate
    return ns + interface.offset_seconds * 1_000_000_000


class _Source:
    """A file read forward, knowing how many bytes remain when it can (so a declared length is checked
    against the file before it is read)."""

    __slots__ = ("offset", "size", "stream")

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.offset = 0
        self.size: int | None = None
        try:
            start = stream.tell()
            end = stream.seek(0, os.SEEK_END)
            stream.seek(start)
            self.size = end - start
        except (OSError, ValueError, io.UnsupportedOperation):
            self.size = None

    def remaining(self) -> int | None:
        return None if self.size is None else self.size - self.offset

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at the end of the file. Read in pieces of at most 1 MiB, so that a
        length a file declares costs memory only as its bytes really arrive (a pipe cannot say how many
        remain), and short reads (pipes, sockets) are completed."""
        if n <= _CHUNK:
            data = self.stream.read(n) or b""
            if len(data) == n:
                self.offset += n
                return data
            pieces = [data]
            got = len(data)
        else:
            pieces, got = [], 0
        while got < n:
            piece = self.stream.read(min(n - got, _CHUNK))
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        data = b"".join(pieces)
        self.offset += len(data)
        return data


def read_packets(
    source: str | os.PathLike[str] | bytes | BinaryIO, report: CaptureReport | None = None
) -> Iterator[Packet]:
    """Every packet of a pcap or pcapng file (chosen by its first bytes), in file order.

    ``source`` is a path, the file's bytes, or a binary file object. Pass a :class:`CaptureReport` to learn
    the format, interfaces and any damage; the iterator never raises for what a file contains (only for
    what opening a path raises).
    """
    report = report if report is not None else CaptureReport()
    if isinstance(source, bytes | bytearray | memoryview):
        yield from _read(_Source(io.BytesIO(bytes(source))), report)
    elif isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as stream:
            yield from _read(_Source(stream), report)
    else:
        yield from _read(_Source(source), report)


class CaptureReader:
    """``reader = CaptureReader(path)``; ``for packet in reader: ...``; then ``reader.report``.

    The same as :func:`read_packets` with the report kept on the object, for callers that find that
    shape handier. Iterate once.
    """

    def __init__(self, source: str | os.PathLike[str] | bytes | BinaryIO) -> None:
        self.source = source
        self.report = CaptureReport()

    def __iter__(self) -> Iterator[Packet]:
        return read_packets(self.source, self.report)


def _read(src: _Source, report: CaptureReport) -> Iterator[Packet]:
    head = src.read(4)
    if len(head) < 4:
        report.damaged(0, f"file too short to be a capture ({len(head)} bytes)", stop=True)
        return
    if head in _PCAP_MAGICS:
        yield from _read_pcap(src, head, report)
    elif struct.unpack("<I", head)[0] == _SHB:
        yield from _read_pcapng(src, head, report)
    else:
        report.damaged(0, f"not a pcap or pcapng file (first bytes {head.hex()})", stop=True)


def _read_pcap(src: _Source, magic: bytes, report: CaptureReport) -> Iterator[Packet]:
    order, frac_ns, record_size = _PCAP_MAGICS[magic]
    report.format = "pcap"
    report.sections = 1
    rest = src.read(20)
    if len(rest) < 20:
        report.damaged(src.offset, "pcap file header cut short", stop=True)
        return
    _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(order + "HHiIII", rest)
    # The upper bits of the link type field carry FCS information (pcap specification); the type is below.
    interface = Interface(link_type=network & 0x0FFFFFFF, snaplen=snaplen, ticks_per_second=1_000_000_000 // frac_ns)
    report.interfaces.append(interface)
    limit = min(MAX_RECORD, max(snaplen, DEFAULT_SNAPLEN)) if snaplen else MAX_RECORD
    header_format = order + "IIII"
    index = 0
    while True:
        at = src.offset
        header = src.read(record_size)
        if not header:
            return
        if len(header) < record_size:
            report.damaged(at, f"record header cut short ({len(header)} of {record_size} bytes): file truncated",
                           stop=True)  # fmt: skip
            return
        seconds, fraction, captured, original = struct.unpack(header_format, header[:16])
        remaining = src.remaining()
        if captured > limit:
            report.damaged(at, f"record declares {captured} bytes, more than the {limit} any record may have",
                           stop=True)  # fmt: skip
            return
        if remaining is not None and captured > remaining:
            report.damaged(at, f"record declares {captured} bytes, the file has {remaining} left: file truncated",
                           stop=True)  # fmt: skip
            return
        data = src.read(captured)
        if len(data) < captured:
            report.damaged(at, f"record data cut short ({len(data)} of {captured} bytes): file truncated", stop=True)
            return
        if original < captured:
            original = captured
        elif original > captured:
            report.cut_packets += 1
        ts_ns = seconds * 1_000_000_000 + fraction * frac_ns
        report.packets += 1
        yield Packet(index, ts_ns, interface.link_type, data, original, 0)
        index += 1


def _options(body: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    """The (code, value) options of a pcapng block body's option area; stops quietly at a malformed one
    (options only refine what a block says, so a bad one costs its refinement, not the block)."""
    at = 0
    while at + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, at)
        at += 4
        if code == 0:
            return
        if at + length > len(body):
            return
        yield code, body[at : at + length]
        at += (length + 3) & ~3


def _interface(body: bytes, order: str, section: int) -> Interface:
    link_type, _reserved, snaplen = struct.unpack_from(order + "HHI", body, 0)
    name: str | None = None
    rate = 1_000_000
    offset_seconds = 0
    for code, value in _options(body[8:], order):
        if code == 2:
            name = value.decode("utf-8", "replace")
        elif code == 9 and len(value) >= 1:
            exponent = value[0] & 0x7F
            # An absurd resolution (2**-127 s) would make later arithmetic huge; beyond 1e-18 s is nonsense.
            rate = 1 << min(exponent, 64) if value[0] & 0x80 else 10 ** min(exponent, 18)
        elif code == 14 and len(value) >= 8:
            offset_seconds = struct.unpack(order + "q", value[:8])[0]
    return Interface(link_type, snaplen, name, rate, offset_seconds, section)


def _read_pcapng(src: _Source, first: bytes, report: CaptureReport) -> Iterator[Packet]:
    report.format = "pcapng"
    order = "<"
    section_interfaces: list[int] = []  # indexes into report.interfaces for the current section
    index = 0
    last_ts = 0
    pending = first
    in_section = False
    while True:
        at = src.offset - len(pending)
        head = pending + src.read(8 - len(pending))
        pending = b""
        if not head:
            return
        if len(head) < 8:
            report.damaged(at, f"block header cut short ({len(head)} of 8 bytes): file truncated", stop=True)
            return
        if struct.unpack("<I", head[:4])[0] == _SHB:
            magic = src.read(4)
            if len(magic) < 4:
                report.damaged(at, "section header block cut short: file truncated", stop=True)
                return
            if magic == struct.pack("<I", _BYTE_ORDER_MAGIC):
                order = "<"
            elif magic == struct.pack(">I", _BYTE_ORDER_MAGIC):
                order = ">"
            else:
                report.damaged(at, f"section header with an unknown byte-order magic {magic.hex()}", stop=True)
                return
            prefix = magic
        else:
            if not in_section:
                report.damaged(at, "pcapng block before any section header", stop=True)
                return
            prefix = b""
        block_type, total = struct.unpack(order + "II", head)
        remaining = src.remaining()
        after_header = total - 8 - len(prefix)
        if total < 12 + len(prefix) or total % 4:
            report.damaged(at, f"block type {block_type:#x} declares an impossible length {total}", stop=True)
            return
        if total > MAX_RECORD:
            report.damaged(at, f"block type {block_type:#x} declares {total} bytes, more than {MAX_RECORD}",
                           stop=True)  # fmt: skip
            return
        if remaining is not None and after_header > remaining:
            report.damaged(at, f"block type {block_type:#x} declares {total} bytes, the file has "
                           f"{remaining + 8 + len(prefix)} left: file truncated", stop=True)  # fmt: skip
            return
        rest = src.read(after_header)
        if len(rest) < after_header:
            report.damaged(at, f"block type {block_type:#x} cut short: file truncated", stop=True)
            return
        body = prefix + rest[:-4]
        (trailer,) = struct.unpack(order + "I", rest[-4:])
        if trailer != total:
            report.damaged(at, f"block type {block_type:#x}: trailing length {trailer} differs from {total}",
                           stop=True)  # fmt: skip
            return
        if block_type == _SHB:
            in_section = True
            report.sections += 1
            section_interfaces = []
            continue
        if block_type == _IDB:
            if len(body) < 8:
                report.damaged(at, "interface description block too short", stop=True)
                return
            section_interfaces.append(len(report.interfaces))
            report.interfaces.append(_interface(body, order, report.sections - 1))
            continue
        packet: Packet | None = None
        if block_type in (_EPB, _OBSOLETE_PB):
            if block_type == _EPB:
                fixed = 20
                if len(body) < fixed:
                    report.damaged(at, "enhanced packet block too short", stop=False)
                    continue
                local, high, low, captured, original = struct.unpack_from(order + "IIIII", body, 0)
            else:
                fixed = 20
                if len(body) < fixed:
                    report.damaged(at, "packet block too short", stop=False)
                    continue
                local, _drops, high, low, captured, original = struct.unpack_from(order + "HHIIII", body, 0)
            if local >= len(section_interfaces):
                report.damaged(at, f"packet names interface {local}, the section has {len(section_interfaces)}",
                               stop=False)  # fmt: skip
                continue
            if captured > len(body) - fixed:
                report.damaged(at, f"packet declares {captured} captured bytes in a block of {total}", stop=False)
                continue
            number = section_interfaces[local]
            interface = report.interfaces[number]
            last_ts = _timestamp_ns((high << 32) | low, interface)
            data = body[fixed : fixed + captured]
            packet = Packet(index, last_ts, interface.link_type, data, max(original, captured), number)
        elif block_type == _SPB:
            if not section_interfaces:
                report.damaged(at, "simple packet block in a section without interfaces", stop=False)
                continue
            if len(body) < 4:
                report.damaged(at, "simple packet block too short", stop=False)
                continue
            (original,) = struct.unpack_from(order + "I", body, 0)
            number = section_interfaces[0]
            interface = report.interfaces[number]
            captured = min(original, len(body) - 4)
            if interface.snaplen:
                captured = min(captured, interface.snaplen)
            data = body[4 : 4 + captured]
            packet = Packet(index, last_ts, interface.link_type, data, max(original, captured), number, False)
        else:
            report.skipped_blocks[block_type] = report.skipped_blocks.get(block_type, 0) + 1
            continue
        if packet.original_length > packet.captured_length:
            report.cut_packets += 1
        report.packets += 1
        index += 1
        yield packet
