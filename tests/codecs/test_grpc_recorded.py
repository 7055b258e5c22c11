"""The gRPC codec on HTTP/2 bytes recorded between a real grpcio client and server (``tests/fixtures/grpc``).

h2 replays each recorded direction (a server-mode connection for client-to-server bytes, a client-mode one
for server-to-client bytes), as the proxy session will; the gRPC codec then finds in its HEADERS, DATA and
trailers exactly what the recorder's client sent and received (``manifest.json``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    Event,
    PingAckReceived,
    PingReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codecs.grpc import (
    GrpcMessage,
    GrpcMessageDecoder,
    GrpcStatus,
    decode_binary_header,
    decompress,
    header,
    is_grpc_content_type,
    parse_path,
    parse_timeout,
    status_from_trailers,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "grpc"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
SCENARIOS: dict[str, dict[str, Any]] = MANIFEST["scenarios"]
NAMES = sorted(SCENARIOS)
SINGLE = [name for name in NAMES if SCENARIOS[name].get("calls", 1) == 1]  # one call on its connection

# What grpcio itself advertises; the replaying connections must accept frames and windows that large.
GRPCIO_SETTINGS = {SettingCodes.MAX_FRAME_SIZE: 4 * 1024 * 1024, SettingCodes.INITIAL_WINDOW_SIZE: 4 * 1024 * 1024}


def payload(spec: dict[str, Any]) -> bytes:
    """A payload as the manifest stores it: ``utf8`` text, or ``b64`` bytes optionally repeated ``times``."""
    if "utf8" in spec:
        return str(spec["utf8"]).encode()
    return base64.b64decode(spec["b64"]) * int(spec.get("times", 1))


@dataclass
class Direction:
    """One direction of one HTTP/2 stream, as h2 reports it."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset: int | None = None


@dataclass
class Replay:
    streams: dict[int, Direction]
    events: list[Event]


def _connection(client_side: bool, validate: bool = True) -> H2Connection:
    config = H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=validate,
        validate_outbound_headers=validate,
    )
    connection = H2Connection(config)
    connection.initiate_connection()
    connection.update_settings(GRPCIO_SETTINGS)  # in force at the recording's first SETTINGS ACK, but
    # h2 reads a receive_data() call's frames with the frame size limit it had when the call began:
    connection.max_inbound_frame_size = GRPCIO_SETTINGS[SettingCodes.MAX_FRAME_SIZE]
    connection.data_to_send()
    return connection


def _collect(connection: H2Connection, data: bytes) -> Replay:
    events = connection.receive_data(data)
    streams: dict[int, Direction] = {}
    for event in events:
        stream_id = getattr(event, "stream_id", 0)
        if not stream_id:
            continue
        side = streams.setdefault(stream_id, Direction())
        if isinstance(event, RequestReceived | ResponseReceived):
            side.headers = list(event.headers or [])
        elif isinstance(event, DataReceived):
            side.data.append(bytes(event.data or b""))
            connection.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        elif isinstance(event, TrailersReceived):
            side.trailers = list(event.headers or [])
        elif isinstance(event, StreamEnded):
            side.ended = True
        elif isinstance(event, StreamReset):
            side.reset = event.error_code
    return Replay(streams, events)


def replay(name: str, validate: bool = True) -> tuple[Replay, Replay]:
    """Both directions of a recorded connection as h2 decodes them: (client-to-server, server-to-client).

    h2 validates inbound headers as the proxy's will, except where ``validate`` is False: grpcio's "true
    binary" metadata (scenario ``true_binary``) is not a legal HTTP/2 field value.
    """
    server = _connection(client_side=False, validate=validate)
    requests = _collect(server, (FIXTURES / f"{name}.c2s.bin").read_bytes())
    client = _connection(client_side=True, validate=validate)
    for stream_id, side in requests.streams.items():  # open the streams the server is answering
        client.send_headers(stream_id, side.headers)
    responses = _collect(client, (FIXTURES / f"{name}.s2c.bin").read_bytes())
    return requests, responses


def decode(side: Direction) -> list[GrpcMessage]:
    """Feed one direction's DATA payloads to a message decoder, one ``feed`` per DATA frame."""
    decoder = GrpcMessageDecoder()
    messages = [message for data in side.data for message in decoder.feed(data)]
    if side.ended:
        decoder.end_of_stream()
    assert decoder.buffered == 0
    return messages


REPLAYS = {name: replay(name, validate=name != "true_binary") for name in NAMES}


def only_stream(name: str) -> tuple[Direction, Direction]:
    requests, responses = REPLAYS[name]
    assert list(requests.streams) == [1], "one call per recorded connection"
    return requests.streams[1], responses.streams.get(1, Direction())


def metadata_matches(headers: list[tuple[bytes, bytes]], expected: list[list[Any]]) -> None:
    for key, spec in expected:
        value = header(headers, key.encode())
        assert value is not None, f"{key} missing from {headers}"
        if key.endswith("-bin"):
            assert decode_binary_header(value) == [payload(spec)]
        else:
            assert value == payload(spec)


# ------------------------------------------------------------------------------------------- requests


@pytest.mark.parametrize("name", SINGLE)
def test_request_headers_name_the_service_and_method_of_the_call(name: str) -> None:
    request, _ = only_stream(name)
    expected = SCENARIOS[name]
    path = header(request.headers, b":path")
    assert path == expected["path"].encode()
    assert parse_path(path) == (expected["service"], expected["method"])
    assert header(request.headers, b":method") == b"POST"
    assert header(request.headers, b"te") == b"trailers"
    assert is_grpc_content_type(header(request.headers, b"content-type") or b"")


@pytest.mark.parametrize("name", SINGLE)
def test_the_client_deadline_arrives_as_grpc_timeout_no_longer_than_it_was_set(name: str) -> None:
    request, _ = only_stream(name)
    timeout = parse_timeout(header(request.headers, b"grpc-timeout") or b"")
    assert 0 < timeout <= SCENARIOS[name]["deadline"]
    assert timeout > SCENARIOS[name]["deadline"] - 1.0  # sent at once, not after a second of waiting


@pytest.mark.parametrize("name", SINGLE)
def test_request_data_holds_exactly_the_messages_the_client_sent(name: str) -> None:
    request, _ = only_stream(name)
    expected = SCENARIOS[name]
    messages = decode(request)
    if expected.get("encoding"):
        assert all(m.compressed for m in messages)
    plain = [decompress(m, header(request.headers, b"grpc-encoding")) for m in messages]
    assert plain == [payload(p) for p in expected["requests"]]
    assert request.ended, "grpcio half-closes every request stream with END_STREAM"


@pytest.mark.parametrize("name", [n for n in SINGLE if "request_metadata" in SCENARIOS[n]])
def test_custom_request_metadata_travels_in_the_request_headers(name: str) -> None:
    request, _ = only_stream(name)
    metadata_matches(request.headers, SCENARIOS[name]["request_metadata"])


# ------------------------------------------------------------------------------------------ responses


@pytest.mark.parametrize("name", SINGLE)
def test_response_data_holds_the_messages_the_client_received(name: str) -> None:
    _, response = only_stream(name)
    expected = SCENARIOS[name]
    messages = decode(response)
    plain = [decompress(m, header(response.headers, b"grpc-encoding")) for m in messages]
    wanted = [payload(p) for p in expected["responses"]]
    if expected.get("responses_are_prefix"):
        assert plain[: len(wanted)] == wanted
    else:
        assert plain == wanted
    for message in messages:
        assert message.raw[5:] == message.data


@pytest.mark.parametrize("name", [n for n in SINGLE if SCENARIOS[n]["status_on_wire"]])
def test_the_status_and_its_unicode_message_come_from_the_trailers(name: str) -> None:
    _, response = only_stream(name)
    expected = SCENARIOS[name]
    assert header(response.headers, b":status") == b"200"
    assert is_grpc_content_type(header(response.headers, b"content-type") or b"")
    trailers = response.trailers if response.trailers is not None else response.headers  # Trailers-Only
    code, message = status_from_trailers(trailers)
    assert code == expected["status"]
    assert message == expected["message"]
    assert response.ended


def test_an_immediate_error_is_a_trailers_only_response_with_a_percent_encoded_message() -> None:
    _, response = only_stream("error_unicode")
    assert response.trailers is None
    assert response.data == []
    assert status_from_trailers(response.headers) == (GrpcStatus.FAILED_PRECONDITION, "ünïcødé ✓ 100% done")
    raw = header(response.headers, b"grpc-message") or b""
    assert raw.isascii()
    assert b"%25" in raw
    assert b"%C3%BC" in raw.upper()


def test_an_unknown_method_is_answered_unimplemented_with_trailers_only() -> None:
    _, response = only_stream("unimplemented")
    assert response.trailers is None
    assert status_from_trailers(response.headers)[0] == GrpcStatus.UNIMPLEMENTED


@pytest.mark.parametrize("name", [n for n in SINGLE if "trailing_metadata" in SCENARIOS[n]])
def test_custom_response_metadata_is_in_the_headers_and_the_trailers(name: str) -> None:
    _, response = only_stream(name)
    metadata_matches(response.headers, SCENARIOS[name]["initial_metadata"])
    metadata_matches(response.trailers or response.headers, SCENARIOS[name]["trailing_metadata"])


def test_gzip_messages_carry_the_compressed_flag_and_inflate_to_what_was_sent() -> None:
    request, response = only_stream("gzip")
    expected = SCENARIOS["gzip"]
    assert header(request.headers, b"grpc-encoding") == b"gzip"
    assert header(response.headers, b"grpc-encoding") == b"gzip"
    for side, wanted in ((request, expected["requests"]), (response, expected["responses"])):
        (message,) = decode(side)
        assert message.compressed
        assert message.data[:2] == b"\x1f\x8b"  # a gzip member
        assert len(message.data) < len(payload(wanted[0]))
        assert decompress(message, b"gzip") == payload(wanted[0])


# ----------------------------------------------------------------------------- what the proxy must handle


def test_a_cancelled_call_ends_with_the_client_resetting_the_stream_and_no_trailers() -> None:
    request, response = only_stream("cancel")
    assert request.reset == 8  # RST_STREAM CANCEL from the client
    assert response.trailers is None
    assert not response.ended
    decoder = GrpcMessageDecoder()
    assert [m.data for d in response.data for m in decoder.feed(d)][:2] == [b"tick-0", b"tick-1"]


def test_an_expired_deadline_is_a_client_reset_and_the_server_may_race_it_with_trailers_only() -> None:
    """Both ends track the deadline: the client resets the stream (CANCEL); the server, if its own timer
    fires first, answers Trailers-Only DEADLINE_EXCEEDED and then resets with NO_ERROR (PROTOCOL-HTTP2,
    "Early Server Closure"). Which one the recording caught is a race; a proxy sees either."""
    request, response = only_stream("deadline")
    assert request.reset == 8
    assert response.data == []
    assert response.trailers is None
    if response.headers:
        assert status_from_trailers(response.headers)[0] == GrpcStatus.DEADLINE_EXCEEDED
        assert response.ended
    if response.reset is not None:
        assert response.reset == 0


def test_h2_rejects_grpcio_true_binary_metadata_so_the_proxy_must_not_negotiate_it() -> None:
    with pytest.raises(ProtocolError, match="Illegal character"):
        replay("true_binary")
    request, response = only_stream("true_binary")
    raw = header(request.headers, b"trace-bin") or b""
    assert raw.startswith(b"\x00")
    assert decode_binary_header(raw) == [b"\x00\x01\x02\xfe\xff"]
    assert (header(response.trailers or [], b"stats-bin") or b"").startswith(b"\x00")
    assert b"\xfe\x03\x00\x00\x00\x01" in (FIXTURES / "true_binary.c2s.bin").read_bytes()[:80]  # SETTINGS 0xfe03=1
    assert b"\xfe\x03" not in (FIXTURES / "unary.c2s.bin").read_bytes()[:80]


def test_grpcio_pings_on_every_connection_and_both_sides_answer() -> None:
    for name in NAMES:
        requests, responses = REPLAYS[name]
        assert any(isinstance(e, PingReceived) for e in responses.events), name  # the server's BDP ping
        assert any(isinstance(e, PingAckReceived) for e in requests.events + responses.events), name


def test_a_20_kib_message_crosses_in_one_data_frame_because_grpcio_allows_4_mib_frames() -> None:
    request, response = only_stream("large")
    assert [len(d) for d in request.data] == [5 + 20480]
    (message,) = decode(response)
    assert message.data == payload(SCENARIOS["large"]["responses"][0])


def test_concurrent_calls_on_one_connection_each_keep_their_own_messages_and_status() -> None:
    """Four unary calls at once: streams 1, 3, 5 and 7, their later HEADERS compressed against the HPACK
    table the earlier ones filled, so a proxy must run one HPACK state per connection (h2 does)."""
    requests, responses = REPLAYS["multiplexed"]
    expected = SCENARIOS["multiplexed"]
    assert sorted(requests.streams) == sorted(responses.streams) == [1, 3, 5, 7]
    sent = []
    for stream_id, request in requests.streams.items():
        response = responses.streams[stream_id]
        assert parse_path(header(request.headers, b":path") or b"") == (expected["service"], expected["method"])
        metadata_matches(request.headers, expected["request_metadata"])
        (asked,) = decode(request)
        (answer,) = decode(response)
        assert answer.data == b"pong:" + asked.data
        assert status_from_trailers(response.trailers or []) == (GrpcStatus.OK, "")
        sent.append(asked.data)
    assert sorted(sent) == sorted(payload(p) for p in expected["requests"])


# ------------------------------------------------------------------------------------ splits (hypothesis)

PAYLOADS = {
    f"{name}.{direction}.{stream_id}": b"".join(side.data)
    for name in NAMES
    for direction, recorded in zip(("c2s", "s2c"), REPLAYS[name], strict=True)
    for stream_id, side in recorded.streams.items()
    if side.data
}
EXPECTED = {key: [m.raw for m in GrpcMessageDecoder().feed(data)] for key, data in PAYLOADS.items()}


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(PAYLOADS)), data=st.data())
def test_any_split_of_recorded_data_yields_the_same_messages(key: str, data: st.DataObject) -> None:
    stream = PAYLOADS[key]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    as_view = data.draw(st.booleans())
    decoder = GrpcMessageDecoder()
    messages = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        piece = memoryview(stream)[start:stop] if as_view else stream[start:stop]
        messages += decoder.feed(piece)
    decoder.end_of_stream()
    assert [m.raw for m in messages] == EXPECTED[key]


@pytest.mark.parametrize("key", [k for k in sorted(PAYLOADS) if len(PAYLOADS[k]) < 2000])
def test_every_single_cut_of_a_recorded_payload_yields_the_same_messages(key: str) -> None:
    stream = PAYLOADS[key]
    for cut in range(len(stream) + 1):
        decoder = GrpcMessageDecoder()
        messages = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [m.raw for m in messages] == EXPECTED[key], cut


@pytest.mark.parametrize("key", sorted(PAYLOADS))
def test_a_recorded_payload_fed_one_byte_at_a_time_yields_the_same_messages(key: str) -> None:
    stream = PAYLOADS[key]
    decoder = GrpcMessageDecoder()
    messages = [m for index in range(len(stream)) for m in decoder.feed(stream[index : index + 1])]
    assert [m.raw for m in messages] == EXPECTED[key]
    assert decoder.buffered == 0
