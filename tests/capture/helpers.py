"""What the capture tests share: the recorded fixtures, small independent pcap/pcapng writers used to rewrite
real captures (other byte orders, other link types, other block kinds), and stream checks.

The writers here are deliberately separate from the reader under test: a rewritten file that reads back to
the same packets proves the reader understood both.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from meshproxy.capture import Closed, Data, Direction, Gap, Packet, StreamEvent, read_packets, reassemble

FIXTURES = Path(__file__).parent.parent / "fixtures" / "capture"
WORKLOADS = ("mongo", "dynamo", "grpc")
FILES = sorted(p.name for p in FIXTURES.glob("*.pcap*"))


@cache
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
    return data


def server_port(name: str) -> int:
    return int(manifest()[name.split(".")[0]]["server_port"])


@cache
def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@cache
def packets_of(name: str) -> tuple[Packet, ...]:
    return tuple(read_packets(FIXTURES / name))


# --- pcap ---


def write_pcap(packets: Iterable[Packet], link_type: int, *, nano: bool = False, big_endian: bool = False) -> bytes:
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, link_type)]
    for packet in packets:
        seconds, ns = divmod(packet.ts_ns, 1_000_000_000)
        fraction = ns if nano else ns // 1000
        out.append(struct.pack(order + "IIII", seconds, fraction, len(packet.data), packet.original_length))
        out.append(packet.data)
    return b"".join(out)


# --- pcapng ---


@dataclass
class Block:
    type: int
    body: bytes


def pcapng_blocks(data: bytes) -> list[Block]:
    """The blocks of a little-endian pcapng file (what dumpcap writes on this machine)."""
    blocks = []
    at = 0
    while at < len(data):
        block_type, total = struct.unpack_from("<II", data, at)
        blocks.append(Block(block_type, data[at + 8 : at + total - 4]))
        at += total
    return blocks


def _swap_options(options: bytes, eight_byte_codes: Sequence[int]) -> bytes:
    out = []
    at = 0
    while at + 4 <= len(options):
        code, length = struct.unpack_from("<HH", options, at)
        value = options[at + 4 : at + 4 + length]
        padded = (length + 3) & ~3
        if code in eight_byte_codes and length == 8:
            value = struct.pack(">Q", struct.unpack("<Q", value)[0])
        out.append(struct.pack(">HH", code, length) + value + b"\0" * (padded - length))
        at += 4 + padded
        if code == 0:
            break
    return b"".join(out)


def to_big_endian(block: Block) -> Block:
    """The same block as a big-endian writer would have written it (fields and options swapped)."""
    body = block.body
    if block.type == 0x0A0D0D0A:
        _magic, major, minor, length = struct.unpack_from("<IHHq", body, 0)
        return Block(block.type, struct.pack(">IHHq", 0x1A2B3C4D, major, minor, length) + _swap_options(body[16:], ()))
    if block.type == 1:
        link, reserved, snaplen = struct.unpack_from("<HHI", body, 0)
        return Block(block.type, struct.pack(">HHI", link, reserved, snaplen) + _swap_options(body[8:], (8, 14)))
    if block.type == 6:
        fields = struct.unpack_from("<IIIII", body, 0)
        captured = fields[3]
        padded = (captured + 3) & ~3
        data = body[20 : 20 + padded]
        return Block(block.type, struct.pack(">IIIII", *fields) + data + _swap_options(body[20 + padded :], ()))
    return block  # unknown to this helper: left as is (the reader skips it by its length)


def write_pcapng(blocks: Iterable[Block], *, big_endian: bool = False) -> bytes:
    out = []
    for block in blocks:
        if big_endian:
            block = to_big_endian(block)
        body = block.body + b"\0" * (-len(block.body) % 4)
        total = len(body) + 12
        order = ">" if big_endian else "<"
        out.append(struct.pack(order + "II", block.type, total) + body + struct.pack(order + "I", total))
    return b"".join(out)


def idb(link_type: int, *, tsresol: int | None = None, tsoffset: int | None = None, snaplen: int = 262144) -> Block:
    options = b""
    if tsresol is not None:
        options += struct.pack("<HHB3x", 9, 1, tsresol)
    if tsoffset is not None:
        options += struct.pack("<HHq", 14, 8, tsoffset)
    if options:
        options += struct.pack("<HH", 0, 0)
    return Block(1, struct.pack("<HHI", link_type, 0, snaplen) + options)


SHB = Block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def epb(interface: int, ticks: int, data: bytes, original: int | None = None) -> Block:
    original = len(data) if original is None else original
    head = struct.pack("<IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), original)
    return Block(6, head + data + b"\0" * (-len(data) % 4))


# --- streams ---


def check_tiling(events: Iterable[StreamEvent]) -> None:
    """Data and Gap events of each direction cover the stream from 0 with no hole or overlap; nothing of a
    direction comes after its Closed."""
    ends: dict[tuple[int, Direction], int] = {}
    closed: set[tuple[int, Direction]] = set()
    for event in events:
        if isinstance(event, Data | Gap):
            key = (event.conn.id, event.direction)
            assert key not in closed, event
            assert event.offset == ends.get(key, 0), event
            ends[key] = event.offset + (len(event.data) if isinstance(event, Data) else event.length)
            assert isinstance(event.ts_ns, int)
        elif isinstance(event, Closed):
            closed.add((event.conn.id, event.direction))


StreamKey = tuple[tuple[str, int], tuple[str, int], Direction]


def streams(events: Iterable[StreamEvent]) -> dict[StreamKey, bytes]:
    """Each direction's bytes, gaps as ``\\x00`` runs, keyed by (client, server, direction)."""
    events = list(events)
    check_tiling(events)
    out: dict[StreamKey, bytearray] = {}
    for event in events:
        if isinstance(event, Data | Gap):
            key = (event.conn.client, event.conn.server, event.direction)
            chunk = event.data if isinstance(event, Data) else b"\0" * event.length
            out.setdefault(key, bytearray()).extend(chunk)
    return {key: bytes(value) for key, value in out.items()}


def events_of(packets: Iterable[Packet], name: str, **options: Any) -> list[StreamEvent]:
    return list(reassemble(packets, server_ports=[server_port(name)], **options))
