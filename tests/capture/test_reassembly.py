"""TCP reassembly on real captures: what the Mongo capture's streams decode to, and what loss, reordering,
retransmission, overlap, wraparound, mid-stream starts, resets and cuts do to the streams.

The damage is made in the test, from the real capture, so the expected result is known exactly: a deleted
packet's payload length and stream offset are read from the undamaged reassembly.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence

import pytest

from meshproxy.capture import (
    Closed,
    Connection,
    Data,
    Direction,
    Gap,
    Opened,
    Packet,
    StreamEvent,
    TcpReassembler,
    TcpSegment,
    decode_tcp,
    reassemble,
)
from meshproxy.codecs.mongo import MongoDecoder, MongoMessage, OpMsg, OpQuery

from .helpers import check_tiling, events_of, manifest, packets_of, server_port, streams

MONGO = "mongo.lo.pcap"
HANDSHAKE = {"ismaster", "isMaster", "hello"}


def segments(name: str) -> list[TcpSegment]:
    out = []
    for packet in packets_of(name):
        segment = decode_tcp(packet)
        assert isinstance(segment, TcpSegment)
        out.append(segment)
    return out


def decode_mongo(events: Iterable[StreamEvent]) -> dict[tuple[int, Direction], list[MongoMessage]]:
    """Each direction's Data fed to its own MongoDecoder; each stream must end on a message boundary."""
    decoders: dict[tuple[int, Direction], MongoDecoder] = {}
    messages: dict[tuple[int, Direction], list[MongoMessage]] = {}
    for event in events:
        if isinstance(event, Data):
            key = (event.conn.id, event.direction)
            decoder = decoders.setdefault(key, MongoDecoder())
            messages.setdefault(key, []).extend(decoder.feed(event.data))
    assert all(decoder.buffered == 0 for decoder in decoders.values())
    return messages


def command(message: MongoMessage) -> str:
    assert isinstance(message, OpMsg | OpQuery)
    name = message.command_name
    assert name is not None
    return name


def application_connection(messages: dict[tuple[int, Direction], list[MongoMessage]]) -> int:
    """The one connection that carried the workload's commands (the others are the driver's monitors)."""
    (conn,) = {
        conn
        for (conn, direction), sent in messages.items()
        if direction is Direction.CLIENT_TO_SERVER and any(command(m) not in HANDSHAKE for m in sent)
    }
    return conn


@pytest.mark.parametrize(
    "name",
    ["mongo.lo.pcap", "mongo.lo.pcapng", "mongo.any-sll.pcap", "mongo.any-sll2.nano.pcap", "mongo.lo+any.pcapng"],
)
def test_mongo_capture_decodes_to_exactly_the_commands_pymongo_sent(name: str) -> None:
    """How we know what pymongo sent: ``record.py`` kept the command names pymongo's own command monitoring
    reported (``CommandStartedEvent``, in order). By the driver specification those are every command of the
    application except the connection handshake, which is therefore expected as one extra ``hello`` /
    ``ismaster`` before them. Every command has exactly one reply; the find and its getMores return every
    document the workload read; the other connections (the driver's monitors) carry only handshakes."""
    events = events_of(packets_of(name), name)
    messages = decode_mongo(events)
    app = application_connection(messages)
    sent = messages[(app, Direction.CLIENT_TO_SERVER)]
    replies = messages[(app, Direction.SERVER_TO_CLIENT)]
    expected: list[str] = manifest()["mongo"]["commands"]
    assert command(sent[0]) in HANDSHAKE
    assert [command(m) for m in sent[1:]] == expected
    assert len(sent) == len(expected) + 1 == len(replies)
    for request, reply in zip(sent, replies, strict=True):
        assert reply.header.response_to == request.header.request_id
    found = 0
    for request, reply in zip(sent, replies, strict=True):
        if command(request) in ("find", "getMore"):
            assert isinstance(reply, OpMsg)
            cursor = reply.document()["cursor"]
            found += len(cursor.get("firstBatch", cursor.get("nextBatch", [])))
    assert found == manifest()["mongo"]["documents_found"]
    for (conn, direction), stream in messages.items():
        if conn != app and direction is Direction.CLIENT_TO_SERVER:
            assert {command(m) for m in stream} <= HANDSHAKE
    connections = {e.conn for e in events if isinstance(e, Opened)}
    assert all(c.roles == "syn" and c.server[1] == server_port(name) for c in connections)
    assert Counter(e.how for e in events if isinstance(e, Closed)) == {"fin": 2 * len(connections)}
    assert not any(isinstance(e, Gap) for e in events)


def test_every_chunk_carries_its_packets_time() -> None:
    times = {p.ts_ns for p in packets_of(MONGO)}
    events = events_of(packets_of(MONGO), MONGO)
    assert all(e.ts_ns in times for e in events if isinstance(e, Data))
    data = [e.ts_ns for e in events if isinstance(e, Data)]
    assert data == sorted(data)


def _data_packets(name: str) -> list[int]:
    return [i for i, s in enumerate(segments(name)) if s.length]


def _offset_of(events: Sequence[StreamEvent], packet: TcpSegment) -> tuple[Connection, Direction, int]:
    """Where the reference reassembly put a packet's payload (matched by time and length)."""
    for event in events:
        if isinstance(event, Data) and event.ts_ns == packet.ts_ns and len(event.data) == packet.length:
            return event.conn, event.direction, event.offset
    raise AssertionError("payload not found")


def test_any_one_lost_segment_gives_one_gap_of_exactly_its_length() -> None:
    """Delete one data-carrying packet from the real capture, in turn each of them (both directions, first
    to last): exactly one Gap, at that payload's offset and of its length; every other byte as before."""
    victims = _data_packets(MONGO)
    assert len(victims) > 40
    for index in victims:
        _lose(index)


def _lose(index: int) -> None:
    reference_events = events_of(packets_of(MONGO), MONGO)
    reference = streams(reference_events)
    lost = segments(MONGO)[index]
    conn, direction, offset = _offset_of(reference_events, lost)
    damaged = [p for p in packets_of(MONGO) if p.index != index]
    events = events_of(damaged, MONGO)
    gaps = [e for e in events if isinstance(e, Gap)]
    assert [(g.conn.client, g.direction, g.offset, g.length) for g in gaps] == [
        (conn.client, direction, offset, lost.length)
    ]
    assert gaps[0].reason == "lost"
    key = (conn.client, conn.server, direction)
    expected = dict(reference)
    stream = expected[key]
    expected[key] = stream[:offset] + b"\0" * lost.length + stream[offset + lost.length :]
    assert streams(events) == expected
    # The messages before the hole still decode.
    decoder = MongoDecoder()
    before = []
    for event in events:
        if isinstance(event, Gap):
            break
        if isinstance(event, Data) and event.direction is direction and event.conn.client == conn.client:
            before += decoder.feed(event.data)
    whole = decode_mongo(e for e in reference_events if isinstance(e, Data) and e.conn.client == conn.client)
    assert before == whole[(gaps[0].conn.id, direction)][: len(before)]


def _reordered(packets: Sequence[Packet], window: int) -> list[Packet]:
    """Reverse every run of ``window`` consecutive packets between handshakes (no packet crosses a SYN: a
    SYN captured after its connection's data starts a new connection, see docs/capture.md)."""
    out = list(packets)
    runs: list[list[int]] = [[]]
    for i, packet in enumerate(packets):
        segment = decode_tcp(packet)
        if isinstance(segment, TcpSegment) and segment.syn:
            runs.append([])
        elif len(runs[-1]) == window:
            runs.append([i])
        else:
            runs[-1].append(i)
    for run in runs:
        for i, j in zip(run, reversed(run), strict=True):
            out[i] = packets[j]
    assert out != list(packets)
    return out


@pytest.mark.parametrize("name", ["mongo.lo.pcap", "grpc.lo.pcap", "dynamo.lo.pcap"])
@pytest.mark.parametrize("window", [2, 3, 5])
def test_reordered_packets_reassemble_identically(name: str, window: int) -> None:
    reference = streams(events_of(packets_of(name), name))
    events = events_of(_reordered(packets_of(name), window), name)
    assert not [e for e in events if isinstance(e, Gap)]
    assert streams(events) == reference


def test_retransmissions_and_overlaps_are_delivered_once() -> None:
    """Every data segment sent three times: whole, then as two overlapping pieces in reverse order (the later
    piece first, so it is held), as a sender repacketising a retransmission would."""
    name = "grpc.lo.pcap"
    reference = streams(events_of(packets_of(name), name))
    fed: list[TcpSegment] = []
    for segment in segments(name):
        fed.append(segment)
        if segment.length > 4:
            cut_a, cut_b = segment.length // 3, 2 * segment.length // 3
            late = dataclasses.replace(
                segment,
                seq=(segment.seq + cut_a) % 2**32,
                payload=segment.payload[cut_a:],
                length=segment.length - cut_a,
                flags=segment.flags & ~0x01,
            )
            early = dataclasses.replace(segment, payload=segment.payload[:cut_b], length=cut_b, flags=segment.flags)
            fed += [late, early, segment]
    reassembler = TcpReassembler(server_ports=[server_port(name)])
    events = [e for s in fed for e in reassembler.feed(s)] + reassembler.finish()
    assert streams(events) == reference
    assert reassembler.stats["retransmitted segments"] > 0


def _shift_sequence_numbers(items: list[TcpSegment], start: int) -> list[TcpSegment]:
    """Every direction's sequence numbers moved so its first byte is at ``start`` (acks moved to match)."""
    isn: dict[tuple[str, int], int] = {}
    for s in items:
        if s.syn:
            isn.setdefault((s.src, s.sport), s.seq)
    out = []
    for s in items:
        seq = (s.seq - isn[(s.src, s.sport)] + start) % 2**32
        ack = (s.ack - isn[(s.dst, s.dport)] + start) % 2**32
        out.append(dataclasses.replace(s, seq=seq, ack=ack))
    return out


@pytest.mark.parametrize("start", [2**32 - 1, 2**32 - 700, 2**32 - 5000, 0])
def test_sequence_number_wraparound(start: int) -> None:
    name = "mongo.lo.pcap"
    reference = streams(events_of(packets_of(name), name))
    shifted = _shift_sequence_numbers(segments(name), start)
    assert streams(reassemble(shifted, server_ports=[server_port(name)])) == reference


@pytest.mark.parametrize(
    ("ports", "server", "roles"),
    [(True, None, "server port"), (False, 27017, "port numbers"), (False, None, "first sender")],
)
def test_connection_caught_mid_way_starts_at_the_first_sequence_number_seen(
    ports: bool, server: int | None, roles: str
) -> None:
    """The gRPC capture without its first packets: neither handshake nor the start of either stream. With the
    server's port named, or on a usual server port (the capture's is ephemeral: moved to 27017 here), the
    sides are told apart; with neither, the first sender is taken for the client."""
    name = "grpc.lo.pcap"
    port = server_port(name)
    reference = streams(events_of(packets_of(name), name))
    items = segments(name)
    first_data = next(i for i, s in enumerate(items) if s.length and s.dport == port)
    later = items[first_data + 10 :]
    first_sender = (later[0].src, later[0].sport)
    if server is not None:
        later = [
            dataclasses.replace(
                s, sport=server if s.sport == port else s.sport, dport=server if s.dport == port else s.dport
            )
            for s in later
        ]
    events = list(reassemble(later, server_ports=[port] if ports else []))
    (opened,) = [e for e in events if isinstance(e, Opened)]
    assert opened.conn.roles == roles
    assert opened.conn.mid_stream
    if roles == "first sender":
        assert opened.conn.client == first_sender
    else:
        assert opened.conn.server[1] == (server or port)
    # Each direction is a proper suffix of the real one.
    got = streams(events)
    assert len(got) == 2
    for (_, _, direction), data in got.items():
        if roles != "first sender":
            whole = next(v for (_, _, d), v in reference.items() if d is direction)
            assert whole.endswith(data)
            assert len(data) < len(whole)
        else:
            assert any(whole.endswith(data) and len(data) < len(whole) for whole in reference.values())
    assert not any(isinstance(e, Gap) for e in events)


def test_a_reset_closes_both_directions() -> None:
    name = "mongo.lo.pcap"
    items = segments(name)
    first_fin = next(i for i, s in enumerate(items) if s.fin)
    items[first_fin] = dataclasses.replace(items[first_fin], flags=0x04)  # RST instead of FIN
    events = list(reassemble(items[: first_fin + 1], server_ports=[server_port(name)]))
    closed = [e for e in events if isinstance(e, Closed) and e.how == "rst"]
    assert len(closed) == 2
    assert {e.direction for e in closed} == set(Direction)
    check_tiling(events)


def test_held_bytes_are_bounded_and_the_hole_is_given_up_as_a_gap() -> None:
    """Lose the first segment of a big server answer, hold at most 100 bytes: the hole is declared at once
    (``buffer limit``) and nothing is held beyond the bound; the stream's length is unchanged."""
    name = "mongo.lo.pcap"
    reference = streams(events_of(packets_of(name), name))
    items = segments(name)
    victim = max(range(len(items)), key=lambda i: items[i].length)
    damaged = items[:victim] + items[victim + 1 :]
    events = list(reassemble(damaged, server_ports=[server_port(name)], max_buffered=100, reorder_window=1000))
    gaps = [e for e in events if isinstance(e, Gap)]
    assert [g.length for g in gaps] == [items[victim].length]
    assert gaps[0].reason == "buffer limit"
    got = streams(events)
    assert {k: len(v) for k, v in got.items()} == {k: len(v) for k, v in reference.items()}


def test_bytes_cut_by_the_snapshot_length_are_a_gap() -> None:
    name = "mongo.lo.pcap"
    reference = streams(events_of(packets_of(name), name))
    packets = list(packets_of(name))
    victim = max(range(len(packets)), key=lambda i: len(packets[i].data))
    cut = packets[victim]
    packets[victim] = dataclasses.replace(cut, data=cut.data[:200])
    events = events_of(packets, name)
    (gap,) = [e for e in events if isinstance(e, Gap)]
    assert gap.reason == "not captured"
    assert gap.length == len(cut.data) - 200
    assert {k: len(v) for k, v in streams(events).items()} == {k: len(v) for k, v in reference.items()}


def test_real_loss_in_a_real_capture_is_reported_to_the_byte() -> None:
    """tcpdump on ``any`` missed some packets of the DynamoDB run that tcpdump on ``lo`` got (both recorded
    at once). Each stream of the ``any`` file is as long as the ``lo`` file's, and it differs only inside
    reported gaps."""
    reference = streams(events_of(packets_of("dynamo.lo.pcap"), "dynamo"))
    for name in ("dynamo.any-sll.pcap", "dynamo.any-sll2.nano.pcap"):
        events = events_of(packets_of(name), name)
        got = streams(events)
        for key, data in got.items():
            whole = reference[key]
            assert len(data) == len(whole), (name, key)
            holes = [(g.offset, g.length) for g in events if isinstance(g, Gap) and g.conn.client == key[0]
                     and g.direction is key[2]]  # fmt: skip
            masked = bytearray(whole)
            for offset, length in holes:
                masked[offset : offset + length] = b"\0" * length
            assert data == bytes(masked)


def test_a_reused_four_tuple_is_a_new_connection_and_late_acks_are_not() -> None:
    """The gRPC capture fed twice, the second time with new initial sequence numbers (a new connection
    from the same client port): two connections with the same streams; the final ACKs after each close do
    not open phantom connections."""
    name = "grpc.lo.pcap"
    items = segments(name)
    again = [dataclasses.replace(s, ts_ns=s.ts_ns + 10**9) for s in _shift_sequence_numbers(items, 123_456)]
    events = list(reassemble(items + again, server_ports=[server_port(name)]))
    opened = [e.conn for e in events if isinstance(e, Opened)]
    assert [c.id for c in opened] == [0, 1]
    assert opened[0].client == opened[1].client
    by_conn: dict[int, dict[Direction, bytes]] = {}
    for e in events:
        if isinstance(e, Data):
            by_conn.setdefault(e.conn.id, {}).setdefault(e.direction, b"")
            by_conn[e.conn.id][e.direction] += e.data
    assert by_conn[0] == by_conn[1]


def test_stats_name_what_was_skipped() -> None:
    reassembler = TcpReassembler()
    arp = Packet(0, 0, 1, b"\0" * 12 + b"\x08\x06" + b"\0" * 28, 42)
    assert reassembler.feed(arp) == []
    assert reassembler.stats == {"not ip": 1}


def _seg(seq: int, flags: int, payload: bytes = b"", ack: int = 0, forward: bool = True) -> TcpSegment:
    a, b = ("10.0.0.1", 40000), ("10.0.0.2", 27017)
    (src, sport), (dst, dport) = (a, b) if forward else (b, a)
    return TcpSegment(0, src, sport, dst, dport, seq, ack, flags, payload, len(payload))


def test_nothing_is_delivered_beyond_a_fin() -> None:
    """A FIN (sequence 6 after 5 bytes) seen before a held segment that claims bytes past it: the stream
    ends at the FIN; the bogus bytes are dropped and counted."""
    reassembler = TcpReassembler()
    events = []
    events += reassembler.feed(_seg(0, 0x02))  # SYN, isn 0
    events += reassembler.feed(_seg(4, 0x10, b"late-and-long"))  # held: offsets 3..16
    events += reassembler.feed(_seg(6, 0x11))  # FIN at offset 5
    events += reassembler.feed(_seg(1, 0x10, b"hello"))  # offsets 0..5
    events += reassembler.finish()
    data = b"".join(e.data for e in events if isinstance(e, Data))
    assert data == b"hello"
    assert [e.how for e in events if isinstance(e, Closed) and e.direction is Direction.CLIENT_TO_SERVER] == ["fin"]
    assert reassembler.stats["beyond fin"] == 1


@pytest.mark.parametrize(("missing", "roles"), [("SYN", "syn-ack"), ("SYN+ACK", "syn")])
def test_one_lost_handshake_packet_costs_nothing(missing: str, roles: str) -> None:
    """Without the SYN (or without the SYN+ACK), the other side's acknowledgement says where the stream
    whose handshake packet was lost starts: the streams are the same to the byte, offsets included."""
    name = "mongo.lo.pcap"
    reference = streams(events_of(packets_of(name), name))
    items = segments(name)
    wanted = 0x02 if missing == "SYN" else 0x12
    kept = [s for s in items if s.flags & 0x12 != wanted]
    assert len(items) - len(kept) == 3  # one per connection
    events = list(reassemble(kept))
    assert {e.conn.roles for e in events if isinstance(e, Opened)} == {roles}
    assert streams(events) == reference
    assert not any(isinstance(e, Gap) for e in events)
