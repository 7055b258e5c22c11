"""Damaged captures: a file cut short anywhere, a capture that stops mid-stream, lengths that lie, garbage.
What was readable is yielded, the damage is reported, nothing raises, and nothing the file declares is
allocated before it is checked against the file."""

from __future__ import annotations

import io
import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshproxy.capture import (
    MAX_RECORD,
    CaptureReport,
    Closed,
    Data,
    Direction,
    Gap,
    Opened,
    Packet,
    TcpReassembler,
    TcpSegment,
    decode_tcp,
    read_packets,
    reassemble,
)
from meshproxy.codecs.mongo import MongoDecoder

from .helpers import (
    FILES,
    SHB,
    Block,
    check_tiling,
    epb,
    events_of,
    fixture_bytes,
    idb,
    packets_of,
    server_port,
    streams,
    write_pcap,
    write_pcapng,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read(data: bytes) -> tuple[list[Packet], CaptureReport]:
    report = CaptureReport()
    return list(read_packets(data, report)), report


def _record_ends(data: bytes) -> list[int]:
    """File offsets at which each packet's record ends (read independently of the reader under test)."""
    ends = []
    if data[:4] == b"\xd4\xc3\xb2\xa1":
        at = 24
        while at < len(data):
            at += 16 + struct.unpack_from("<I", data, at + 8)[0]
            ends.append(at)
        return ends
    at = 0
    while at < len(data):
        block_type, total = struct.unpack_from("<II", data, at)
        at += total
        if block_type == 6:
            ends.append(at)
    return ends


@pytest.mark.parametrize("name", ["mongo.lo.pcap", "mongo.lo.pcapng", "mongo.lo+any.pcapng"])
def test_a_truncated_file_yields_every_whole_packet_before_the_cut(name: str) -> None:
    """Cut the real file at many points: the packets wholly before the cut come out unchanged, the cut is
    reported once as damage that says the file was truncated, and the report says reading did not finish."""
    data = fixture_bytes(name)
    whole = packets_of(name)
    ends = _record_ends(data)
    assert len(ends) == len(whole)
    for cut in range(1, len(data), max(1, len(data) // 97)):
        packets, report = read(data[:cut])
        assert packets == list(whole[: len(packets)])
        if cut < 24:
            assert not packets
        assert len(report.damage) == 1, (cut, report.damage)
        assert "truncated" in report.damage[0].what or "short" in report.damage[0].what
        assert not report.complete
        # ... and the packets are exactly those whose records end at or before the cut.
        assert len(packets) == sum(1 for end in ends if end <= cut)


def test_a_truncated_mongo_capture_decodes_as_far_as_it_goes() -> None:
    """The real Mongo capture cut in the middle of its bytes: the reassembled streams are prefixes of the
    whole ones, every direction still open is closed as ``end of capture``, and the Mongo decoder gets every
    whole message before the cut."""
    name = "mongo.lo.pcap"
    data = fixture_bytes(name)
    whole = streams(events_of(packets_of(name), name))
    report = CaptureReport()
    cut_packets = list(read_packets(data[: len(data) * 3 // 5], report))
    assert report.damage
    events = events_of(cut_packets, name)
    got = streams(events)
    assert got
    for key, stream in got.items():
        assert whole[key].startswith(stream)
    assert any(len(stream) < len(whole[key]) for key, stream in got.items())
    assert any(isinstance(e, Closed) and e.how == "end of capture" for e in events)
    for key, stream in got.items():
        decoder = MongoDecoder()
        messages = decoder.feed(stream)
        assert MongoDecoder().feed(whole[key])[: len(messages)] == messages


def test_a_capture_that_stops_mid_stream_leaves_the_partial_message_buffered() -> None:
    """A well-formed file whose capture stopped in the middle of a message (no FIN, last segment cut by the
    snapshot length): the message's captured part is data, its uncaptured part a gap, then end of capture."""
    name = "mongo.lo.pcap"
    packets = list(packets_of(name))
    biggest = max(range(len(packets)), key=lambda i: len(packets[i].data))
    last = packets[biggest]
    cut = Packet(last.index, last.ts_ns, last.link_type, last.data[:100], last.original_length)
    events = events_of([*packets[:biggest], cut], name)
    check_tiling(events)
    gaps = [e for e in events if isinstance(e, Gap)]
    assert [g.reason for g in gaps] == ["not captured"]
    segment = decode_tcp(last)
    assert not isinstance(segment, type(None))
    closed = [e for e in events if isinstance(e, Closed)]
    assert {e.how for e in closed} == {"end of capture", "fin"} or {e.how for e in closed} == {"end of capture"}


def test_a_declared_length_is_checked_before_it_is_read() -> None:
    """A record that claims 4 GiB in a file of a few bytes: reported, and no read asks for it."""

    class Watched(io.BytesIO):
        biggest = 0

        def read(self, n: int | None = -1) -> bytes:
            Watched.biggest = max(Watched.biggest, n if n is not None else -1)
            return super().read(n)

    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 0, 1)
    huge = header + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 0xFFFFFFF0) + b"x" * 100
    report = CaptureReport()
    assert list(read_packets(Watched(huge), report)) == []
    assert "more than" in report.damage[0].what
    assert Watched.biggest < 1024
    # Within the sane maximum but beyond the end of the file: the file's size says no.
    Watched.biggest = 0
    beyond = header + struct.pack("<IIII", 0, 0, 200_000, 200_000) + b"x" * 100
    report = CaptureReport()
    assert list(read_packets(Watched(beyond), report)) == []
    assert "file truncated" in report.damage[0].what
    assert Watched.biggest < 1024
    # pcapng: a block declaring more than MAX_RECORD.
    block = struct.pack("<II", 6, MAX_RECORD + 4) + b"\0" * 64
    report = CaptureReport()
    list(read_packets(write_pcapng([SHB, idb(1)]) + block, report))
    assert "more than" in report.damage[0].what


def test_a_stream_that_cannot_tell_its_size_is_still_bounded() -> None:
    """A pipe (no seek, and reads that return a few bytes at a time): the file reads whole; a huge declared
    length is refused by the sane maximum alone."""

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def seek(self, offset: int, whence: int = 0) -> int:
            raise io.UnsupportedOperation("a pipe")

        def tell(self) -> int:
            raise io.UnsupportedOperation("a pipe")

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            chunk = self.data.read(min(len(buffer), 7))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    good = fixture_bytes("grpc.lo.pcapng")
    report = CaptureReport()
    assert list(read_packets(Pipe(good), report)) == list(packets_of("grpc.lo.pcapng"))  # type: ignore[arg-type]
    assert report.damage == []
    bad = write_pcapng([SHB, idb(1)]) + struct.pack("<II", 6, 0x7FFFFFF0) + b"\0" * 64
    report = CaptureReport()
    assert list(read_packets(Pipe(bad), report)) == []  # type: ignore[arg-type]
    assert report.damage


def test_blocks_that_lie_are_reported() -> None:
    packet = packets_of("grpc.lo.pcap")[3].data
    cases: dict[str, bytes] = {
        "trailing length": write_pcapng([SHB, idb(1)]) + struct.pack("<II", 6, 16) + b"\0" * 4 + b"\x20\0\0\0",
        "impossible length": write_pcapng([SHB, idb(1)]) + struct.pack("<II", 6, 13) + b"\0" * 8,
        "names interface": write_pcapng([SHB, idb(1), epb(5, 0, packet), epb(0, 0, packet)]),
        "captured bytes": write_pcapng([SHB, idb(1), Block(6, struct.pack("<IIIII", 0, 0, 0, 9999, 9999) + packet)]),
        "first bytes 01000000": write_pcapng([idb(1)]),  # no section header: not recognised as pcapng
        "byte-order magic": write_pcapng([Block(0x0A0D0D0A, b"\x01\x02\x03\x04" + b"\0" * 12)]),
        "not a pcap": b"GET / HTTP/1.1\r\n\r\n",
        "too short": b"\xd4\xc3",
        "header cut short": b"\xd4\xc3\xb2\xa1\x02\x00",
    }
    for words, data in cases.items():
        packets, report = read(data)
        assert any(words in d.what for d in report.damage), (words, report.damage)
    # A packet naming a missing interface is skipped; the next one is read.
    packets, report = read(cases["names interface"])
    assert len(packets) == 1
    assert report.complete


def test_pcap_records_longer_than_the_snaplen_are_accepted_up_to_the_sane_limit() -> None:
    """Some writers put a small snaplen in the header and bigger records in the file; a record is refused
    only past max(snaplen, 262144)."""
    data = bytearray(write_pcap(packets_of("grpc.lo.pcap"), 1))
    data[16:20] = struct.pack("<I", 64)
    packets, report = read(bytes(data))
    assert len(packets) == len(packets_of("grpc.lo.pcap"))
    assert report.damage == []


# --- never a crash ---


def _events(data: bytes) -> None:
    report = CaptureReport()
    reassembler = TcpReassembler(max_buffered=2048, reorder_window=3)
    events = []
    for packet in read_packets(data, report):
        assert len(packet.data) <= len(data)
        events += reassembler.feed(packet)
    events += reassembler.finish()
    check_tiling(events)
    assert report.packets == sum(1 for _ in read_packets(data))


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(fixture_bytes(draw(st.sampled_from(FILES)))[:6000])
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "lengthen"]))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
            if not data:
                break
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
            if not data:
                break
        else:
            data[at : at + 4] = struct.pack("<I", draw(st.sampled_from([0, 12, 0xFFFFFFFF, 0x7FFFFFFF, 1 << 28])))
    return bytes(data)


@FUZZ
@given(_mutated())
def test_mutated_real_captures_never_crash(data: bytes) -> None:
    _events(data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    _events(data)
    _events(b"\xd4\xc3\xb2\xa1" + data)
    _events(b"\x0a\x0d\x0d\x0a" + data)


@FUZZ
@given(st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 999]), st.binary(max_size=200))
def test_any_frame_on_any_link_type_decodes_or_says_why(link_type: int, frame: bytes) -> None:
    decode_tcp(Packet(0, 0, link_type, frame, len(frame)))


@FUZZ
@given(st.data())
def test_segments_in_any_order_with_losses_keep_the_stream_tiled(data: st.DataObject) -> None:
    """The real gRPC capture's packets, shuffled and thinned at random: events still tile each stream, and
    whatever data comes out is real bytes of that stream."""
    name = "grpc.lo.pcap"
    packets = list(packets_of(name))
    reference = streams(events_of(packets, name))
    kept = data.draw(st.lists(st.sampled_from(packets), max_size=len(packets)))
    events = list(reassemble(kept, server_ports=[server_port(name)], max_buffered=500, reorder_window=4))
    check_tiling(events)
    for event in events:
        if isinstance(event, Data):
            key = (event.conn.client, event.conn.server, event.direction)
            if key in reference:
                # Offsets are the real ones only where the direction's SYN was kept (else the stream starts
                # at the first sequence number seen): the bytes, though, are always real bytes.
                assert event.data in reference[key]
    directions = {e.direction for e in events if isinstance(e, Data)}
    assert directions <= set(Direction)


_HOSTS = [("10.0.0.1", 5000), ("10.0.0.2", 27017)]


@st.composite
def _segment(draw: st.DrawFn) -> TcpSegment:
    forward = draw(st.booleans())
    (src, sport), (dst, dport) = _HOSTS if forward else _HOSTS[::-1]
    near = draw(st.sampled_from([0, 2**31, 2**32 - 50]))
    payload = draw(st.binary(max_size=40))
    return TcpSegment(
        ts_ns=draw(st.integers(0, 10**6)),
        src=src,
        sport=sport,
        dst=dst,
        dport=dport,
        seq=(near + draw(st.integers(-100, 100))) % 2**32,
        ack=(near + draw(st.integers(-100, 100))) % 2**32,
        flags=draw(st.integers(0, 0x3F)),
        payload=payload,
        length=len(payload) + draw(st.sampled_from([0, 0, 0, 3])),
    )


@FUZZ
@given(st.lists(_segment(), max_size=40), st.integers(0, 10), st.integers(0, 64))
def test_arbitrary_segments_never_crash_and_keep_streams_tiled(
    items: list[TcpSegment], window: int, bound: int
) -> None:
    """Any flags (SYN+FIN+RST together), sequence numbers around the wraparound, acknowledgements anywhere,
    payloads shorter than their declared length: events tile every stream and close each direction once."""
    reassembler = TcpReassembler(max_buffered=bound, reorder_window=window)
    events = [e for s in items for e in reassembler.feed(s)] + reassembler.finish()
    check_tiling(events)
    closed = Counter((e.conn.id, e.direction) for e in events if isinstance(e, Closed))
    opened = [e.conn.id for e in events if isinstance(e, Opened)]
    assert set(closed.values()) <= {1}
    assert set(closed) == {(conn, d) for conn in opened for d in Direction}
