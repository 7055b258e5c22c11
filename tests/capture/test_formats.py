"""Reading every format and link type from real captures (``tests/fixtures/capture``, recorded by
``record.py`` with tcpdump and dumpcap on loopback), and from rewrites of them where no program on this machine
writes the variant (big-endian files, simple and obsolete packet blocks, null/loopback and raw IP link types,
VLAN tags, IPv6)."""

from __future__ import annotations

import struct

import pytest

from meshproxy.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureReader,
    CaptureReport,
    Packet,
    Skipped,
    TcpSegment,
    decode_tcp,
    read_packets,
)

from .helpers import (
    FILES,
    FIXTURES,
    SHB,
    WORKLOADS,
    Block,
    epb,
    events_of,
    fixture_bytes,
    idb,
    packets_of,
    pcapng_blocks,
    server_port,
    streams,
    write_pcap,
    write_pcapng,
)

EXPECTED = {
    # file suffix: (format, link types of its interfaces, nanosecond timestamps)
    "lo.pcap": ("pcap", [LINKTYPE_ETHERNET], False),
    "any-sll.pcap": ("pcap", [LINKTYPE_LINUX_SLL], False),
    "any-sll2.nano.pcap": ("pcap", [LINKTYPE_LINUX_SLL2], True),
    "lo.pcapng": ("pcapng", [LINKTYPE_ETHERNET], True),
    "lo+any.pcapng": ("pcapng", [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL], True),
}


def test_every_workload_was_recorded_in_every_variant() -> None:
    assert sorted(f"{w}.{suffix}" for w in WORKLOADS for suffix in EXPECTED) == FILES


@pytest.mark.parametrize("name", FILES)
def test_real_capture_reads_whole_with_its_format_link_types_and_resolution(name: str) -> None:
    report = CaptureReport()
    packets = list(read_packets(FIXTURES / name, report))
    fmt, links, nano = EXPECTED[name.split(".", 1)[1]]
    assert report.format == fmt
    assert [i.link_type for i in report.interfaces] == links
    assert report.damage == []
    assert report.complete
    assert report.packets == len(packets) > 50
    assert [p.index for p in packets] == list(range(len(packets)))
    assert {p.interface for p in packets} == set(range(len(links)))
    assert all(report.interfaces[p.interface].link_type == p.link_type for p in packets)
    # Times are integers in nanoseconds, in the year the fixtures were recorded, never going back per interface.
    for interface in range(len(links)):
        times = [p.ts_ns for p in packets if p.interface == interface]
        assert all(isinstance(t, int) for t in times)
        assert 1.7e18 < times[0] < 2.2e18
    sub_microsecond = sum(p.ts_ns % 1000 != 0 for p in packets)
    assert (sub_microsecond > len(packets) // 2) if nano else sub_microsecond == 0
    # Every frame is a TCP segment of the workload's server.
    port = server_port(name)
    for packet in packets:
        segment = decode_tcp(packet)
        assert isinstance(segment, TcpSegment), (packet.index, segment)
        assert port in (segment.sport, segment.dport)
        assert segment.src == "127.0.0.1"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_same_traffic_in_every_file_gives_the_same_streams(workload: str) -> None:
    """Ethernet, SLL and SLL2, pcap and pcapng, one interface and two (where each packet is there twice,
    and the two interfaces' packets are not in time order): the same connections carry the same bytes.
    (tcpdump on ``any`` dropped a few packets of the DynamoDB run; where it did, the streams differ only by
    gaps of exactly the missing length: ``test_reassembly`` checks that.)"""
    reference = streams(events_of(packets_of(f"{workload}.lo.pcap"), workload))
    assert reference
    for suffix in ("lo.pcapng", "lo+any.pcapng", "any-sll.pcap", "any-sll2.nano.pcap"):
        name = f"{workload}.{suffix}"
        got = streams(events_of(packets_of(name), name))
        if workload == "dynamo" and suffix.startswith("any"):
            assert got.keys() <= reference.keys()
            assert all(len(got[key]) <= len(reference[key]) for key in got)
        else:
            assert got == reference, name


def test_pcap_and_pcapng_times_of_the_same_packets_agree() -> None:
    """tcpdump and dumpcap read the same kernel timestamps (to the microsecond, give or take one)."""
    pcap = packets_of("mongo.lo.pcap")
    pcapng = packets_of("mongo.lo.pcapng")
    assert len(pcap) == len(pcapng)
    for a, b in zip(pcap, pcapng, strict=True):
        assert a.data == b.data
        assert abs(a.ts_ns - b.ts_ns) < 2_000


@pytest.mark.parametrize("nano", [False, True])
def test_big_endian_pcap_reads_the_same_as_little_endian(nano: bool) -> None:
    """No program here writes a big-endian pcap (a big-endian host's tcpdump does): rewrite a real one."""
    name = "mongo.any-sll2.nano.pcap"
    original = packets_of(name)
    data = write_pcap(original, LINKTYPE_LINUX_SLL2, nano=nano, big_endian=True)
    back = list(read_packets(data))
    assert [p.data for p in back] == [p.data for p in original]
    assert [p.ts_ns for p in back] == [p.ts_ns if nano else p.ts_ns // 1000 * 1000 for p in original]


def test_big_endian_pcapng_reads_the_same_as_little_endian() -> None:
    name = "mongo.lo+any.pcapng"
    blocks = pcapng_blocks(fixture_bytes(name))
    report = CaptureReport()
    back = list(read_packets(write_pcapng(blocks, big_endian=True), report))
    assert report.damage == []
    assert back == list(packets_of(name))


def test_several_sections_each_with_its_own_interfaces() -> None:
    """Two real files end to end make two sections; interfaces are numbered across the file."""
    data = fixture_bytes("mongo.lo+any.pcapng") + fixture_bytes("grpc.lo.pcapng")
    report = CaptureReport()
    packets = list(read_packets(data, report))
    first, second = packets_of("mongo.lo+any.pcapng"), packets_of("grpc.lo.pcapng")
    assert report.sections == 2
    assert [(i.section, i.link_type) for i in report.interfaces] == [(0, 1), (0, 113), (1, 1)]
    assert [p.data for p in packets] == [p.data for p in first + second]
    assert [p.interface for p in packets[len(first) :]] == [2] * len(second)
    assert [p.index for p in packets] == list(range(len(packets)))


def test_unknown_blocks_are_skipped_and_counted() -> None:
    blocks = pcapng_blocks(fixture_bytes("grpc.lo.pcapng"))
    custom = Block(0x00000BAD, b"vendor data!")
    spliced = [blocks[0], blocks[1], custom, *blocks[2:5], custom, *blocks[5:]]
    report = CaptureReport()
    assert list(read_packets(write_pcapng(spliced), report)) == list(packets_of("grpc.lo.pcapng"))
    assert report.skipped_blocks[0x00000BAD] == 2
    assert report.damage == []


def test_simple_and_obsolete_packet_blocks() -> None:
    """Enhanced packet blocks of a real capture rewritten as simple packet blocks (no interface, no time: they
    take the time of the packet before) and as the obsolete packet block (type 2)."""
    blocks = pcapng_blocks(fixture_bytes("grpc.lo.pcapng"))
    original = packets_of("grpc.lo.pcapng")
    simple, obsolete = [], []
    for block in blocks:
        if block.type != 6:
            simple.append(block)
            obsolete.append(block)
            continue
        interface, high, low, captured, length = struct.unpack_from("<IIIII", block.body)
        data = block.body[20 : 20 + captured]
        simple.append(Block(3, struct.pack("<I", length) + data))
        obsolete.append(Block(2, struct.pack("<HHIIII", interface, 0, high, low, captured, length) + data))
    from_simple = list(read_packets(write_pcapng(simple)))
    assert [p.data for p in from_simple] == [p.data for p in original]
    assert not any(p.timestamp_known for p in from_simple)
    assert list(read_packets(write_pcapng(obsolete))) == list(original)
    # A timed packet before simple ones lends them its time.
    mixed = [blocks[0], blocks[1], epb(0, 5_000_000_000_123, original[0].data), simple[3]]
    got = list(read_packets(write_pcapng(mixed)))
    assert [p.ts_ns for p in got] == [5_000_000_000_123, 5_000_000_000_123]


@pytest.mark.parametrize(
    ("tsresol", "ticks", "expected_ns"),
    [
        (None, 1_700_000_000_123_456, 1_700_000_000_123_456_000),  # default: microseconds
        (6, 1_700_000_000_123_456, 1_700_000_000_123_456_000),
        (9, 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        (3, 1_700_000_000_123, 1_700_000_000_123_000_000),
        (12, 123_456_789_123, 123_456_789),  # picoseconds (2**64 of them is 213 days), floored
        (0x80 | 20, (1_700_000_000 << 20) + (1 << 19), 1_700_000_000_500_000_000),  # 2**-20 s ticks
    ],
)
def test_if_tsresol_gives_integer_nanoseconds(tsresol: int | None, ticks: int, expected_ns: int) -> None:
    data = write_pcapng([SHB, idb(LINKTYPE_RAW, tsresol=tsresol), epb(0, ticks, b"\x45" + b"\0" * 39)])
    (packet,) = read_packets(data)
    assert packet.ts_ns == expected_ns


def test_if_tsoffset_and_per_interface_resolution() -> None:
    data = write_pcapng(
        [
            SHB,
            idb(LINKTYPE_RAW, tsresol=9),
            idb(LINKTYPE_IPV4, tsresol=6, tsoffset=100),
            epb(0, 7, b"\x45"),
            epb(1, 7, b"\x45"),
        ]
    )
    reader = CaptureReader(data)
    assert [(p.interface, p.link_type, p.ts_ns) for p in reader] == [(0, 101, 7), (1, 228, 100_000_007_000)]
    assert [i.ticks_per_second for i in reader.report.interfaces] == [10**9, 10**6]


# --- link types no program on this machine writes, made from real Ethernet frames ---


def _ipv4_frames() -> list[Packet]:
    return list(packets_of("mongo.lo.pcap"))


def _relink(packets: list[Packet], link_type: int, header: bytes, strip: int = 14) -> bytes:
    rewritten = [Packet(p.index, p.ts_ns, link_type, header + p.data[strip:], p.original_length) for p in packets]
    return write_pcap(rewritten, link_type)


def _ipv6_frame(packet: Packet, extension_headers: bytes = b"", first_next_header: int = 6) -> bytes:
    """The IPv4 frame's TCP segment carried over IPv6 between ::1 and ::1 (the TCP checksum is not checked)."""
    ip = packet.data[14:]
    header_length = (ip[0] & 0x0F) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    tcp = ip[header_length:total]
    loopback = b"\0" * 15 + b"\1"
    payload = extension_headers + tcp
    return struct.pack("!IHBB", 0x60000000, len(payload), first_next_header, 64) + loopback + loopback + payload


@pytest.mark.parametrize(
    ("link_type", "header"),
    [
        (LINKTYPE_NULL, struct.pack("<I", 2)),  # AF_INET in little-endian host order (macOS lo0 on arm64/x86)
        (LINKTYPE_NULL, struct.pack(">I", 2)),  # ... and as a big-endian host wrote it
        (LINKTYPE_LOOP, struct.pack(">I", 2)),  # OpenBSD loop: always network order
        (LINKTYPE_RAW, b""),
        (LINKTYPE_IPV4, b""),
        (LINKTYPE_ETHERNET, b"\0" * 12 + b"\x81\x00\x00\x05" + b"\x88\xa8\x00\x07" + b"\x08\x00"),  # two VLAN tags
    ],
)
def test_other_link_types_give_the_same_streams(link_type: int, header: bytes) -> None:
    frames = _ipv4_frames()
    reference = streams(events_of(frames, "mongo"))
    rewritten = list(read_packets(_relink(frames, link_type, header)))
    assert {p.link_type for p in rewritten} == {link_type}
    assert streams(events_of(rewritten, "mongo")) == reference


@pytest.mark.parametrize(
    ("link_type", "header"),
    [
        (LINKTYPE_IPV6, b""),
        (LINKTYPE_RAW, b""),
        (LINKTYPE_NULL, struct.pack("<I", 30)),  # AF_INET6 on macOS
        (LINKTYPE_NULL, struct.pack("<I", 10)),  # ... on Linux
        (LINKTYPE_ETHERNET, b"\0" * 12 + b"\x86\xdd"),
        (LINKTYPE_LINUX_SLL2, b"\x86\xdd" + b"\0" * 18),
    ],
)
@pytest.mark.parametrize("with_extension_headers", [False, True])
def test_ipv6_with_and_without_extension_headers(link_type: int, header: bytes, with_extension_headers: bool) -> None:
    frames = _ipv4_frames()
    reference = {
        ((("::1", c[1]), ("::1", s[1]), d)): data for (c, s, d), data in streams(events_of(frames, "mongo")).items()
    }
    if with_extension_headers:
        # hop-by-hop (8 bytes) -> destination options (16 bytes) -> atomic fragment header -> TCP
        extensions = bytes([60, 0]) + b"\1\4\0\0\0\0" + bytes([44, 1]) + b"\1\14" + b"\0" * 12 + bytes([6, 0, 0, 0])
        extensions += b"\0" * 4
        first = 0
    else:
        extensions, first = b"", 6
    packets = [
        Packet(p.index, p.ts_ns, link_type, header + _ipv6_frame(p, extensions, first), p.original_length)
        for p in frames
    ]
    back = list(read_packets(write_pcap(packets, link_type)))
    assert streams(events_of(back, "mongo")) == reference


def test_fragments_are_skipped_and_named() -> None:
    frame = _ipv4_frames()[3]
    ip = bytearray(frame.data[14:])
    ip[6:8] = struct.pack("!H", 0x2000)  # more fragments
    first_piece = Packet(0, 0, LINKTYPE_RAW, bytes(ip), len(ip))
    ip[6:8] = struct.pack("!H", 0x0010)  # offset 128
    later_piece = Packet(1, 0, LINKTYPE_RAW, bytes(ip), len(ip))
    assert decode_tcp(first_piece) == decode_tcp(later_piece) == Skipped("ipv4 fragment")
    ipv6 = _ipv6_frame(frame, bytes([6, 0]) + struct.pack("!HI", 0x0001, 7), 44)  # fragment header, more = 1
    assert decode_tcp(Packet(2, 0, LINKTYPE_IPV6, ipv6, len(ipv6))) == Skipped("ipv6 fragment")


def test_frames_that_are_not_tcp_say_why() -> None:
    def reason(link: int, data: bytes) -> str:
        found = decode_tcp(Packet(0, 0, link, data, len(data)))
        assert isinstance(found, Skipped)
        return found.reason

    assert reason(LINKTYPE_ETHERNET, b"\0" * 12 + b"\x08\x06" + b"\0" * 28) == "not ip"  # ARP
    assert reason(LINKTYPE_RAW, b"\x45" + b"\0" * 8 + b"\x11" + b"\0" * 10) == "not tcp"  # UDP
    assert reason(105, b"\0" * 40) == "unsupported link type 105"
    assert reason(LINKTYPE_ETHERNET, b"\0" * 5) == "truncated link header"
    assert reason(LINKTYPE_RAW, b"\x45\0\0") == "truncated ipv4 header"
