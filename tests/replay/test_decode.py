"""``meshproxy decode``: real captures of real clients and servers (tests/fixtures/capture, recorded with
tcpdump and dumpcap by ``record.py``) decode to exactly what each client did, in every capture format; damaged
captures decode as far as they can, and say where they could not.

What the clients did is in ``manifest.json``: for MongoDB the commands pymongo's command monitoring reported
(which leaves out the connection handshakes and the monitor's ``hello``s, so those are left out here too).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshproxy.capture import Packet, TcpSegment, decode_tcp, read_packets, reassemble
from meshproxy.cli import main
from meshproxy.replay.decode import decode_file, run_decode
from meshproxy.replay.operations import CaptureDecoder, CapturedOperation

FIXTURES = Path(__file__).parents[1] / "fixtures" / "capture"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
FORMATS = ["lo.pcap", "any-sll2.nano.pcap", "any-sll.pcap", "lo.pcapng", "lo+any.pcapng"]
HANDSHAKES = {"hello", "isMaster", "ismaster"}


def capture(workload: str, fmt: str) -> Path:
    return FIXTURES / f"{workload}.{fmt}"


def decode_packets(
    packets: list[Packet], server_ports: tuple[int, ...] = ()
) -> tuple[list[CapturedOperation], CaptureDecoder]:
    decoder = CaptureDecoder()
    operations: list[CapturedOperation] = []
    for event in reassemble(packets, server_ports=server_ports):
        operations += decoder.feed(event)
    operations += decoder.finish()
    return operations, decoder


@pytest.mark.parametrize("fmt", FORMATS)
def test_mongo_commands_equal_what_pymongo_sent(fmt: str) -> None:
    decoded = decode_file(capture("mongo", fmt))
    commands = [op.operation for op in decoded.operations if op.operation not in HANDSHAKES]
    assert Counter(commands) == Counter(MANIFEST["mongo"]["commands"])
    assert all(op.protocol == "mongodb" for op in decoded.operations)
    answered = [op for op in decoded.operations if op.operation not in HANDSHAKES]
    assert all(op.status == "ok" and op.latency_ms is not None for op in answered)
    # The find and its getMores returned every document the client read.
    cursor = [op for op in answered if op.operation in ("find", "getMore")]
    assert sum(op.documents or 0 for op in cursor) == MANIFEST["mongo"]["documents_found"]
    assert {op.namespace for op in answered if op.operation == "insert"} == {"shop.people"}
    assert decoded.notes == []
    assert decoded.lost_bytes == 0


@pytest.mark.parametrize("fmt", ["lo.pcap", "lo.pcapng", "lo+any.pcapng"])
def test_dynamodb_operations_equal_what_boto3_sent_in_order(fmt: str) -> None:
    decoded = decode_file(capture("dynamo", fmt))
    assert [op.operation for op in decoded.operations] == MANIFEST["dynamo"]["operations"]
    assert all(op.protocol == "dynamodb" and op.status == "200" for op in decoded.operations)
    assert all(op.namespace for op in decoded.operations)  # every call names its table(s)
    assert decoded.lost_bytes == 0


@pytest.mark.parametrize("fmt", ["any-sll.pcap", "any-sll2.nano.pcap"])
def test_dynamodb_requests_the_capture_lost_are_reported_and_the_rest_decoded(fmt: str) -> None:
    """tcpdump on ``any`` lost segments of this workload (real loss: these files hold fewer packets than the
    loopback ones of the same traffic). Every request it did not lose decodes, in order; each lost one is
    matched by a reported gap."""
    decoded = decode_file(capture("dynamo", fmt))
    operations = [op.operation for op in decoded.operations]
    expected = iter(MANIFEST["dynamo"]["operations"])
    assert all(name in expected for name in operations)  # an in-order subsequence of what boto3 sent
    missing = len(MANIFEST["dynamo"]["operations"]) - len(operations)
    assert 0 < missing <= len(decoded.gaps)
    assert decoded.lost_bytes > 0
    assert any("missing from the capture" in note.what for note in decoded.notes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_grpc_calls_equal_what_grpcio_made(fmt: str) -> None:
    decoded = decode_file(capture("grpc", fmt))
    methods = [op.operation.rpartition("/")[2] for op in decoded.operations]
    expected = [call.rpartition("/")[2] for call in MANIFEST["grpc"]["calls"]]
    assert Counter(methods) == Counter(expected)
    statuses = {op.operation.rpartition("/")[2]: op.status for op in decoded.operations}
    assert statuses["Fail"] != "OK"
    assert all(status == "OK" for method, status in statuses.items() if method != "Fail")
    streaming = {op.operation.rpartition("/")[2]: op for op in decoded.operations}
    assert streaming["Sum"].request.messages > 1  # client streaming: several request messages in DATA frames
    assert {op.namespace for op in decoded.operations} == {"meshproxy.test.Echo", "grpc.health.v1.Health"}


def test_a_lost_segment_is_reported_and_mongo_resynchronises_on_the_next_message() -> None:
    packets = list(read_packets(capture("mongo", "lo.pcap")))
    port = MANIFEST["mongo"]["server_port"]
    inserts = [
        i for i, p in enumerate(packets)
        if isinstance(s := decode_tcp(p), TcpSegment) and b"insert" in s.payload and s.dport == port
    ]  # fmt: skip
    lost = inserts[4]  # the fifth insert never reaches the capture
    operations, decoder = decode_packets(packets[:lost] + packets[lost + 1 :])
    commands = Counter(op.operation for op in operations if op.operation not in HANDSHAKES)
    expected = Counter(MANIFEST["mongo"]["commands"])
    expected["insert"] -= 1
    assert commands == expected  # everything but the lost insert, including every later command
    notes = " | ".join(note.what for note in decoder.notes)
    assert "missing from the capture" in notes
    assert "re-synchronised" in notes
    assert "not in the capture" in notes  # the lost insert's reply has no request to pair with


def test_http2_cannot_resynchronise_after_a_gap_and_says_so() -> None:
    packets = list(read_packets(capture("grpc", "lo.pcap")))
    port = MANIFEST["grpc"]["server_port"]
    client_data = [
        i for i, p in enumerate(packets)
        if isinstance(s := decode_tcp(p), TcpSegment) and s.payload and s.dport == port
    ]  # fmt: skip
    lost = client_data[len(client_data) // 2]
    operations, decoder = decode_packets(packets[:lost] + packets[lost + 1 :])
    assert 0 < len(operations) < len(MANIFEST["grpc"]["calls"]) + 1
    assert any("cannot re-synchronise" in note.what for note in decoder.notes)


def test_a_truncated_file_decodes_what_it_holds_and_reports_the_damage(tmp_path: Path) -> None:
    whole = capture("dynamo", "lo.pcapng").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(whole[: len(whole) * 2 // 3 + 7])  # mid-block
    out, err = io.StringIO(), io.StringIO()
    assert run_decode(str(cut), as_json=True, summary=False, out=out, err=err) == 0
    operations = [json.loads(line) for line in out.getvalue().splitlines()]
    assert 0 < len(operations) < len(MANIFEST["dynamo"]["operations"])
    assert [op["operation"] for op in operations if op["status"]] == MANIFEST["dynamo"]["operations"][: len(
        [op for op in operations if op["status"]]
    )]
    assert "damage: at byte" in err.getvalue()


def test_not_a_capture_and_a_missing_file_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"definitely not a capture file")
    assert main(["decode", str(junk)]) == 1
    assert "not a pcap or pcapng file" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "missing.pcap")]) == 1
    assert "cannot open" in capsys.readouterr().err


def test_the_cli_json_lines_carry_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--json", str(capture("mongo", "lo.pcap"))]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for field in ("protocol", "operation", "namespace", "status", "request_bytes", "response_bytes", "latency_ms"):
        assert all(field in line for line in lines)
    get_more = next(line for line in lines if line["operation"] == "getMore")
    assert get_more["protocol"] == "mongodb"
    assert get_more["namespace"] == "shop.people"


def test_the_summary_totals_per_operation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--summary", "--json", str(capture("dynamo", "lo.pcap"))]) == 0
    rows = {row["operation"]: row for row in json.loads(capsys.readouterr().out)["operations"]}
    assert rows["PutItem"]["count"] == MANIFEST["dynamo"]["operations"].count("PutItem")
    assert rows["PutItem"]["errors"] == 0
    assert rows["PutItem"]["p50_ms"] is not None


def test_a_capture_that_starts_mid_stream_resynchronises_on_the_next_mongo_message() -> None:
    """The capture began while the connections were already busy: the first packets (the handshakes and
    the first inserts) are missing. Each connection is taken mid-way, searched for a message boundary, and
    decoded from there; what came after decodes as pymongo sent it. The server's port tells the sides apart
    (``--server-port``): without the handshake, the side that spoke first would be taken for the client, and
    the monitor's connection was caught while its server was streaming."""
    packets = list(read_packets(capture("mongo", "lo.pcap")))
    port = MANIFEST["mongo"]["server_port"]
    data_packets = [
        i for i, p in enumerate(packets)
        if isinstance(s := decode_tcp(p), TcpSegment) and s.payload and s.dport == port
    ]  # fmt: skip
    start = data_packets[6] + 1  # from after the sixth client message (handshakes and inserts gone)
    operations, decoder = decode_packets(packets[start:], server_ports=(port,))
    commands = [op.operation for op in operations if op.operation not in HANDSHAKES]
    assert commands
    tail = MANIFEST["mongo"]["commands"][-len(commands) :]
    assert commands == tail  # a suffix of what pymongo sent, in order
    assert "find" in commands
    assert all(op.status == "ok" for op in operations if op.operation in ("find", "getMore"))
    assert any("re-synchronised" in note.what for note in decoder.notes)


def test_compressed_mongo_traffic_decodes_to_what_pymongo_sent() -> None:
    """pymongo with ``compressors=zlib``: every command after the handshake travels as OP_COMPRESSED."""
    replay_fixtures = FIXTURES.parent / "replay"
    manifest = json.loads((replay_fixtures / "manifest.json").read_text())["mongo-cursors"]
    decoded = decode_file(replay_fixtures / "mongo-cursors.pcap")
    commands = [op.operation for op in decoded.operations if op.operation not in HANDSHAKES]
    assert Counter(commands) == Counter(manifest["commands"])
    compressed = [op for op in decoded.operations if type(op.request).__name__ == "OpCompressed"]
    assert len(compressed) >= len(manifest["commands"]) - 1  # all but what came before the negotiation
    reads = [op for op in decoded.operations if op.operation in ("find", "getMore", "aggregate")]
    # Both finds, the group-by aggregate and count_documents' aggregate (one document), over all their batches.
    expected = manifest["found"] + manifest["found_by_hint"] + manifest["groups"] + 1
    assert sum(op.documents or 0 for op in reads) == expected


def test_garbage_inside_a_mongo_stream_is_reported_and_the_next_message_decodes() -> None:
    """Bytes that are not a message (a corrupt capture, another protocol on the port) cost one note, not the
    connection: the decoder searches on and pairs the next request with its reply as usual."""
    from filters.wire import op_msg

    from meshproxy.capture import Connection, Data, Direction
    from meshproxy.codecs.mongo import encode_op_msg

    conn = Connection(0, ("127.0.0.1", 40000), ("127.0.0.1", 27017), "syn")
    c2s, s2c = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
    first, second = op_msg({"ping": 1}, "admin"), op_msg({"find": "orders"}, "shop")
    request_ids = [int.from_bytes(m[4:8], "little") for m in (first, second)]
    replies = [encode_op_msg({"ok": 1.0}, request_id=90 + i, response_to=rid).raw for i, rid in enumerate(request_ids)]
    garbage = b"\xff" * 20 + (2**31 - 1).to_bytes(4, "little") + b"\x00" * 1000  # declares 2 GB: never allocated
    decoder = CaptureDecoder()
    done: list[CapturedOperation] = []
    sent = {c2s: 0, s2c: 0}  # each direction's stream offset
    for step, (direction, data) in enumerate(
        [(c2s, first), (s2c, replies[0]), (c2s, garbage), (c2s, second), (s2c, replies[1])]
    ):
        done += decoder.feed(Data(conn, direction, step * 1_000_000, sent[direction], data))
        sent[direction] += len(data)
    done += decoder.finish()
    assert [(op.operation, op.status) for op in done] == [("ping", "ok"), ("find", "ok")]
    notes = " | ".join(note.what for note in decoder.notes)
    assert "undecodable message" in notes
    assert "re-synchronised" in notes
