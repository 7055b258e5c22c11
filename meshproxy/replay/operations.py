"""Operations out of captured TCP streams: every MongoDB command, DynamoDB request and gRPC call a capture holds,
with its answer, sizes and latency. What ``meshproxy decode`` prints, and what a replay sends again.

The input is ``meshproxy.capture``'s reassembled stream events; each connection's protocol is sniffed from
its client's first bytes (``meshproxy.codecs.sniff``) and its two directions are fed to that protocol's own
sans-IO codecs, the same ones the proxy uses: ``MongoDecoder``; the HTTP/1.1 decoders under the DynamoDB
codec; hyperframe and hpack for HTTP/2 under gRPC.

Captures are imperfect, and the decoder says so rather than guess (``notes``):

- **A gap** (a segment the capture lost) breaks a byte stream. MongoDB and HTTP/1.1 streams re-synchronise
  on the next plausible message boundary (a Mongo header whose length and opcode make sense and that
  decodes; an HTTP request or status line); operations cut by the gap are reported without an answer.
- **A connection caught mid-way** (no SYN seen) starts in that searching state too.
- **HTTP/2 cannot re-synchronise**: header blocks are compressed against a table built from the first
  byte of the connection (HPACK), so a connection without its preface, or with a gap, is reported and not
  decoded further.

Times are integer nanoseconds from the capture: an operation's ``time_ns`` is when its request was
complete, its latency runs to when its answer was complete (the last reply, for exhaust cursors and
streams).
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    RstStreamFrame,
)

from meshproxy.capture import Closed, Connection, Data, Direction, Gap, Opened, StreamEvent
from meshproxy.codecs.dynamo import parse_request, parse_response
from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.grpc import GrpcMessageCounter, GrpcStatus
from meshproxy.codecs.http1 import Http1RequestDecoder, Http1ResponseDecoder, HttpRequest, HttpResponse
from meshproxy.codecs.mongo import DEFAULT_MAX_MESSAGE_SIZE, MongoDecoder, MongoMessage, summarize_reply
from meshproxy.codecs.sniff import HTTP2_PREFACE, sniff
from meshproxy.filters.mongo.api import ConnectionInfo, MongoOperation

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT

MAX_SEARCH = 16 * 1024 * 1024
"""Bytes a stream may skip while looking for a message boundary before it is given up."""
MAX_KEPT_BODY = 16 * 1024 * 1024
"""Request bytes a gRPC call keeps for replay; a larger call is decoded but marked ``truncated``."""
MAX_FRAME = 16 * 1024 * 1024 - 1
"""HTTP/2's largest frame (2^24 - 1): a header declaring more is damage."""


@dataclass(slots=True)
class CapturedOperation:
    """One operation of a capture, with its answer when the capture has it."""

    time_ns: int
    connection: int
    client: str
    server: str
    protocol: str
    """``mongodb``, ``dynamodb``, ``grpc`` (``http`` for HTTP/1.1 that is not DynamoDB)."""
    operation: str
    """The Mongo command as the client sent it (``insert``, ``getMore``, ``ismaster``); the DynamoDB
    operation (``PutItem``); the gRPC path (``/pkg.Service/Method``)."""
    namespace: str | None
    """``db.collection`` (or the database), the table(s), or the gRPC service."""
    status: str | None = None
    """``ok`` or the error's name (Mongo ``codeName``); the HTTP status and DynamoDB error type
    (``400 ConditionalCheckFailedException``); the gRPC status name (``OK``, ``UNAVAILABLE``). None: no
    answer in the capture."""
    request_bytes: int = 0
    response_bytes: int = 0
    latency_ms: float | None = None
    request: Any = field(default=None, repr=False)
    """What a replay sends again: the ``MongoMessage``, the ``HttpRequest``, or ``GrpcCall``."""
    response: Any = field(default=None, repr=False)
    documents: int | None = None
    """Documents or items answered (Mongo batch length, DynamoDB item count), for comparisons."""

    def as_json(self) -> dict[str, Any]:
        return {
            "time_ns": self.time_ns,
            "connection": self.connection,
            "client": self.client,
            "server": self.server,
            "protocol": self.protocol,
            "operation": self.operation,
            "namespace": self.namespace,
            "status": self.status,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "documents": self.documents,
        }


@dataclass(slots=True)
class GrpcCall:
    """A captured gRPC call, kept for replay: request headers and the DATA bytes (length-prefixed messages)."""

    headers: list[tuple[str, str]]
    data: bytes
    messages: int
    truncated: bool = False


@dataclass(slots=True, frozen=True)
class StreamNote:
    """Something the decoder could not take at face value, for the report."""

    connection: int
    direction: str | None
    what: str


def _name(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- one connection ---------------------------------------------------------------------------------------


class _Conversation:
    """A protocol's view of one connection: bytes each way in, operations out."""

    def __init__(self, conn: Connection, notes: list[StreamNote]) -> None:
        self.conn = conn
        self.notes = notes
        self.client, self.server = _name(conn.client), _name(conn.server)

    def note(self, direction: Direction | None, what: str) -> None:
        self.notes.append(StreamNote(self.conn.id, None if direction is None else direction.value, what))

    def operation(self, ts_ns: int, protocol: str, name: str, namespace: str | None, **extra: Any) -> CapturedOperation:
        return CapturedOperation(ts_ns, self.conn.id, self.client, self.server, protocol, name, namespace, **extra)

    def data(self, direction: Direction, ts_ns: int, data: bytes) -> list[CapturedOperation]:
        raise NotImplementedError

    def gap(self, direction: Direction, ts_ns: int, length: int) -> list[CapturedOperation]:
        raise NotImplementedError

    def close(self) -> list[CapturedOperation]:
        """The connection ended (or the capture did): what is still unanswered, without an answer."""
        return []


class _Searching:
    """A direction that lost its framing: bytes kept (bounded) until a boundary is found."""

    __slots__ = ("buffer", "skipped")

    def __init__(self) -> None:
        self.buffer = b""
        self.skipped = 0


class _Resynchronising(_Conversation):
    """A protocol whose streams can find their next message boundary after lost bytes (MongoDB, HTTP/1.1):
    a direction caught mid-way, or after a gap, searches before it decodes."""

    def __init__(self, conn: Connection, notes: list[StreamNote]) -> None:
        super().__init__(conn, notes)
        self.searching: dict[Direction, _Searching | None] = {
            C2S: _Searching() if conn.mid_stream else None,
            S2C: _Searching() if conn.mid_stream else None,
        }

    def framed(self, direction: Direction, data: bytes) -> bytes:
        """``data`` as the decoder should see it: from a boundary on (b"" while still searching)."""
        searching = self.searching[direction]
        return data if searching is None else self._search(direction, searching, data)

    def _search(self, direction: Direction, searching: _Searching, data: bytes) -> bytes:
        raise NotImplementedError


_MONGO_OPCODES = frozenset({1, 2001, 2002, 2004, 2005, 2006, 2007, 2010, 2011, 2012, 2013})


class _MongoConversation(_Resynchronising):
    protocol = "mongodb"

    def __init__(self, conn: Connection, notes: list[StreamNote]) -> None:
        super().__init__(conn, notes)
        self.info = ConnectionInfo(id=conn.id, client=self.client, listener="capture", local_address=conn.server)
        self.decoders = {C2S: self._decoder(C2S), S2C: self._decoder(S2C)}
        self.pending: dict[int, tuple[MongoOperation, CapturedOperation]] = {}

    @staticmethod
    def _decoder(direction: Direction) -> MongoDecoder:
        return MongoDecoder(max_message_size=DEFAULT_MAX_MESSAGE_SIZE, validate_documents=direction is C2S)

    def data(self, direction: Direction, ts_ns: int, data: bytes) -> list[CapturedOperation]:
        data = self.framed(direction, data)
        if not data:
            return []
        try:
            messages = self.decoders[direction].feed(data)
        except DecodeError as error:
            decoder = self.decoders[direction]
            good = decoder.decoded_before_error()
            self.note(direction, f"undecodable message ({error}); searching for the next message")
            self.decoders[direction] = self._decoder(direction)
            self.searching[direction] = _Searching()
            done = self._messages(direction, ts_ns, good)
            return done + self.data(direction, ts_ns, decoder.unconsumed()[1:])
        return self._messages(direction, ts_ns, messages)

    def _search(self, direction: Direction, searching: _Searching, data: bytes) -> bytes:
        """The bytes from the next plausible message boundary on, or b"" while none is found yet."""
        buffer = searching.buffer + data
        for pos in range(max(0, len(buffer) - 15)):
            length, _, _, opcode = struct.unpack_from("<iiii", buffer, pos)
            if opcode not in _MONGO_OPCODES or not 16 <= length <= DEFAULT_MAX_MESSAGE_SIZE:
                continue
            probe = self._decoder(direction)
            try:
                probe.feed(buffer[pos : pos + length])
            except DecodeError:
                continue
            self.searching[direction] = None
            skipped = searching.skipped + pos
            self.note(direction, f"re-synchronised on a message boundary after skipping {skipped} bytes")
            return buffer[pos:]
        keep = buffer[-15:]
        searching.skipped += len(buffer) - len(keep)
        searching.buffer = keep
        if searching.skipped > MAX_SEARCH:
            self.note(direction, f"no message boundary in {searching.skipped} bytes; the rest is not decoded")
            searching.buffer = b""
        return b""

    def _messages(self, direction: Direction, ts_ns: int, messages: list[MongoMessage]) -> list[CapturedOperation]:
        done: list[CapturedOperation] = []
        for message in messages:
            if direction is C2S:
                op = MongoOperation(self.info, message, ts_ns)
                captured = self.operation(
                    ts_ns, "mongodb", op.command, _namespace(op), request_bytes=len(message.raw), request=message
                )
                if op.expects_reply:
                    self.pending[message.header.request_id] = (op, captured)
                else:
                    done.append(captured)
                continue
            entry = self.pending.pop(message.header.response_to, None)
            if entry is None:
                self.note(direction, f"a reply to request {message.header.response_to}, not in the capture")
                continue
            op, captured = entry
            op.response = message
            captured.response_bytes += len(message.raw)
            captured.response = message
            try:
                summary = summarize_reply(message)
            except (DecodeError, TypeError) as error:
                captured.status = f"undecodable reply ({error})"
            else:
                captured.status = "ok" if summary.ok else (summary.code_name or f"code {summary.code}")
                captured.documents = (captured.documents or 0) + summary.num_docs
            if op.more_to_come:
                self.pending[message.header.request_id] = (op, captured)  # the stream's next reply answers it
                continue
            captured.latency_ms = (ts_ns - captured.time_ns) / 1e6
            done.append(captured)
        return done

    def gap(self, direction: Direction, ts_ns: int, length: int) -> list[CapturedOperation]:
        self.note(direction, f"{length} bytes missing from the capture; searching for the next message")
        self.decoders[direction] = self._decoder(direction)
        self.searching[direction] = _Searching()
        return []

    def close(self) -> list[CapturedOperation]:
        unanswered = [captured for _, captured in self.pending.values()]
        self.pending.clear()
        return unanswered


def _namespace(op: MongoOperation) -> str | None:
    database, collection = op.database, op.collection
    if database is None:
        return None
    return f"{database}.{collection}" if collection else database


_REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) \S+ HTTP/1\.[01]\r\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] \d{3} ")


class _Http1Conversation(_Resynchronising):
    """HTTP/1.1: DynamoDB's JSON protocol (``X-Amz-Target``), else plain HTTP. Answers pair in order."""

    def __init__(self, conn: Connection, notes: list[StreamNote]) -> None:
        super().__init__(conn, notes)
        self.requests = Http1RequestDecoder()
        self.responses = Http1ResponseDecoder()
        self.waiting: deque[tuple[CapturedOperation, Any]] = deque()

    def data(self, direction: Direction, ts_ns: int, data: bytes) -> list[CapturedOperation]:
        data = self.framed(direction, data)
        if not data:
            return []
        try:
            if direction is C2S:
                return self._requests(ts_ns, self.requests.feed(data))
            return self._responses(ts_ns, self.responses.feed(data))
        except DecodeError as error:
            self.note(direction, f"undecodable HTTP ({error}); searching for the next message")
            self._lose(direction)
            return []

    def _search(self, direction: Direction, searching: _Searching, data: bytes) -> bytes:
        buffer = searching.buffer + data
        found = (_REQUEST_LINE if direction is C2S else _STATUS_LINE).search(buffer)
        if found is None:
            keep = buffer[-64:]
            searching.skipped += len(buffer) - len(keep)
            searching.buffer = keep
            return b""
        self.searching[direction] = None
        skipped = searching.skipped + found.start()
        self.note(direction, f"re-synchronised on an HTTP message after skipping {skipped} bytes")
        return buffer[found.start() :]

    def _requests(self, ts_ns: int, requests: list[HttpRequest]) -> list[CapturedOperation]:
        for request in requests:
            self.responses.expect_response(head=request.method == b"HEAD")
            dynamo = parse_request(request.headers, request.body)
            if dynamo.target is not None:
                name = dynamo.operation or dynamo.target.decode(errors="replace")
                captured = self.operation(
                    ts_ns, "dynamodb", name, ",".join(dynamo.tables) or None,
                    request_bytes=len(request.raw), request=request,
                )  # fmt: skip
            else:
                captured = self.operation(
                    ts_ns, "http", f"{request.method.decode()} {request.target.decode(errors='replace')}", None,
                    request_bytes=len(request.raw), request=request,
                )  # fmt: skip
            self.waiting.append((captured, dynamo))
        return []

    def _responses(self, ts_ns: int, responses: list[HttpResponse]) -> list[CapturedOperation]:
        done = []
        for response in responses:
            if 100 <= response.status < 200:
                continue
            if not self.waiting:
                self.note(S2C, f"a {response.status} response to a request not in the capture")
                continue
            captured, dynamo = self.waiting.popleft()
            captured.response = response
            captured.response_bytes = len(response.raw)
            captured.latency_ms = (ts_ns - captured.time_ns) / 1e6
            if captured.protocol == "dynamodb":
                answer = parse_response(response.status, response.headers, response.body, dynamo)
                captured.status = str(response.status) + (f" {answer.error_type}" if answer.error_type else "")
                captured.documents = answer.item_count
            else:
                captured.status = str(response.status)
            done.append(captured)
        return done

    def _lose(self, direction: Direction) -> None:
        """Framing lost on one side: both sides search again, since answers pair with requests by order."""
        self.requests, self.responses = Http1RequestDecoder(), Http1ResponseDecoder()
        self.searching = {C2S: _Searching(), S2C: _Searching()}

    def gap(self, direction: Direction, ts_ns: int, length: int) -> list[CapturedOperation]:
        self.note(direction, f"{length} bytes missing from the capture; searching for the next message")
        unanswered = [captured for captured, _ in self.waiting]
        self.waiting.clear()
        self._lose(direction)
        return unanswered

    def close(self) -> list[CapturedOperation]:
        unanswered = [captured for captured, _ in self.waiting]
        self.waiting.clear()
        return unanswered


@dataclass(slots=True)
class _Stream:
    captured: CapturedOperation
    headers: list[tuple[str, str]]
    request: bytearray = field(default_factory=bytearray)
    request_messages: GrpcMessageCounter = field(default_factory=GrpcMessageCounter)
    response_headers: list[tuple[str, str]] | None = None
    truncated: bool = False


class _Http2Conversation(_Conversation):
    """HTTP/2 (gRPC): frames by hyperframe, header blocks by one HPACK decoder per direction."""

    def __init__(self, conn: Connection, notes: list[StreamNote]) -> None:
        super().__init__(conn, notes)
        self.buffers = {C2S: b"", S2C: b""}
        self.preface = True
        self.hpack = {C2S: _hpack_decoder(), S2C: _hpack_decoder()}
        self.block: dict[Direction, tuple[int, bytes, bool] | None] = {C2S: None, S2C: None}
        """A header block still waiting for its CONTINUATION frames: (stream, fragment so far, END_STREAM)."""
        self.streams: dict[int, _Stream] = {}
        self.broken: str | None = None

    def data(self, direction: Direction, ts_ns: int, data: bytes) -> list[CapturedOperation]:
        if self.broken is not None:
            return []
        buffer = self.buffers[direction] + data
        if direction is C2S and self.preface:
            if len(buffer) < len(HTTP2_PREFACE):
                self.buffers[direction] = buffer
                return []
            if not buffer.startswith(HTTP2_PREFACE):
                return self._break(direction, "an HTTP/2 connection without its preface cannot be decoded (HPACK)")
            buffer = buffer[len(HTTP2_PREFACE) :]
            self.preface = False
        done: list[CapturedOperation] = []
        pos = 0
        while len(buffer) - pos >= 9:
            try:
                frame, length = Frame.parse_frame_header(memoryview(buffer[pos : pos + 9]))
            except Exception as error:  # hyperframe raises its own errors for unknown or bad headers
                return done + self._break(direction, f"bad HTTP/2 frame header ({error})")
            if length > MAX_FRAME:
                return done + self._break(direction, f"an HTTP/2 frame declares {length} bytes")
            if len(buffer) - pos < 9 + length:
                break
            body = memoryview(buffer[pos + 9 : pos + 9 + length])
            pos += 9 + length
            try:
                frame.parse_body(body)
            except Exception as error:
                return done + self._break(direction, f"bad HTTP/2 {type(frame).__name__} ({error})")
            done += self._frame(direction, ts_ns, frame)
            if self.broken is not None:
                return done
        self.buffers[direction] = buffer[pos:]
        return done

    def _frame(self, direction: Direction, ts_ns: int, frame: Frame) -> list[CapturedOperation]:
        if isinstance(frame, HeadersFrame):
            block = (frame.stream_id, bytes(frame.data), "END_STREAM" in frame.flags)
            if "END_HEADERS" not in frame.flags:
                self.block[direction] = block
                return []
            return self._headers(direction, ts_ns, *block)
        if isinstance(frame, ContinuationFrame):
            pending = self.block[direction]
            if pending is None or pending[0] != frame.stream_id:
                return self._break(direction, "a CONTINUATION frame without its HEADERS")
            block = (pending[0], pending[1] + bytes(frame.data), pending[2])
            if "END_HEADERS" not in frame.flags:
                self.block[direction] = block
                return []
            self.block[direction] = None
            return self._headers(direction, ts_ns, *block)
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            return []
        if isinstance(frame, DataFrame):
            payload = bytes(frame.data)
            if direction is C2S:
                stream.captured.request_bytes += len(payload)
                stream.request_messages.feed(payload)
                if len(stream.request) + len(payload) <= MAX_KEPT_BODY:
                    stream.request += payload
                else:
                    stream.truncated = True
                if "END_STREAM" in frame.flags:
                    stream.captured.time_ns = ts_ns
                return []
            stream.captured.response_bytes += len(payload)
            if "END_STREAM" in frame.flags:
                return self._finish(frame.stream_id, ts_ns, None)
            return []
        if isinstance(frame, RstStreamFrame):
            return self._finish(frame.stream_id, ts_ns, f"RST_STREAM {frame.error_code}")
        return []

    def _headers(
        self, direction: Direction, ts_ns: int, stream_id: int, block: bytes, end: bool
    ) -> list[CapturedOperation]:
        try:
            headers = [(str(k), str(v)) for k, v in self.hpack[direction].decode(block, raw=False)]
        except Exception as error:  # hpack's errors: the table is now unknown, nothing after can be read
            return self._break(direction, f"HPACK decoding failed ({error})")
        if direction is C2S:
            fields = dict(headers)
            path = fields.get(":path", "")
            service = path.strip("/").rpartition("/")[0] or None
            captured = self.operation(ts_ns, "grpc", path, service)
            self.streams[stream_id] = _Stream(captured, headers)
            return []
        stream = self.streams.get(stream_id)
        if stream is None:
            return []
        if stream.response_headers is None:
            stream.response_headers = headers
            if not end:
                return []
        return self._finish(stream_id, ts_ns, None, trailers=headers)

    def _finish(
        self, stream_id: int, ts_ns: int, reset: str | None, trailers: list[tuple[str, str]] | None = None
    ) -> list[CapturedOperation]:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return []
        captured = stream.captured
        captured.latency_ms = (ts_ns - captured.time_ns) / 1e6
        messages = stream.request_messages.count
        captured.request = GrpcCall(stream.headers, bytes(stream.request), messages, stream.truncated)
        if reset is not None:
            captured.status = reset
        else:
            fields = dict(trailers or [])
            code = fields.get("grpc-status")
            if code is not None and code.isdigit():
                try:
                    captured.status = GrpcStatus(int(code)).name
                except ValueError:
                    captured.status = code
            else:
                captured.status = f"HTTP {fields.get(':status', '?')}"
        return [captured]

    def _break(self, direction: Direction, why: str) -> list[CapturedOperation]:
        self.broken = why
        self.note(direction, why + "; the rest of the connection is not decoded")
        return self.close()

    def gap(self, direction: Direction, ts_ns: int, length: int) -> list[CapturedOperation]:
        if self.broken is not None:
            return []
        return self._break(direction, f"{length} bytes missing: an HTTP/2 stream cannot re-synchronise (HPACK)")

    def close(self) -> list[CapturedOperation]:
        unanswered = [stream.captured for stream in self.streams.values()]
        self.streams.clear()
        return unanswered


def _hpack_decoder() -> hpack.Decoder:
    decoder = hpack.Decoder(max_header_list_size=1 << 20)
    # A passive reader never sends SETTINGS: accept any table size the encoder announces (up to 1 MiB).
    decoder.max_allowed_table_size = 1 << 20
    return decoder


class _Unknown(_Conversation):
    """A connection no codec claims: counted in the notes, not decoded."""

    def data(self, direction: Direction, ts_ns: int, data: bytes) -> list[CapturedOperation]:
        return []

    def gap(self, direction: Direction, ts_ns: int, length: int) -> list[CapturedOperation]:
        self.note(direction, f"{length} bytes missing from the capture (the protocol could not be told)")
        return []


_CONVERSATIONS: dict[str, type[_Conversation]] = {
    "mongodb": _MongoConversation,
    "http1": _Http1Conversation,
    "http2": _Http2Conversation,
}


class _Pending:
    """A connection whose protocol is not known yet: its events wait (bounded) for enough client bytes."""

    __slots__ = ("events", "prefix")

    def __init__(self) -> None:
        self.prefix = b""
        self.events: list[StreamEvent] = []


# -- a whole capture ----------------------------------------------------------------------------------


class CaptureDecoder:
    """Stream events in (``meshproxy.capture.reassemble``), operations out, in the order they completed."""

    def __init__(self) -> None:
        self.notes: list[StreamNote] = []
        self.protocols: dict[int, str] = {}
        """Connection id -> the protocol sniffed (``mongodb``, ``http1``, ``http2``, ``tcp``)."""
        self._conversations: dict[int, _Conversation] = {}
        self._pending: dict[int, _Pending] = {}

    def feed(self, event: StreamEvent) -> list[CapturedOperation]:
        if isinstance(event, Opened):
            return []
        conn = event.conn
        conversation = self._conversations.get(conn.id)
        if conversation is None:
            return self._sniff(event)
        return self._dispatch(conversation, event)

    def _sniff(self, event: StreamEvent) -> list[CapturedOperation]:
        conn = event.conn
        pending = self._pending.setdefault(conn.id, _Pending())
        pending.events.append(event)
        if isinstance(event, Data) and event.direction is C2S:
            pending.prefix += event.data
        return self._decide(conn, ended=isinstance(event, Closed) or len(pending.events) > 1000)

    def _decide(self, conn: Connection, *, ended: bool) -> list[CapturedOperation]:
        """Sniff the connection's protocol once its client said enough (or it ended), then decode what it
        held back."""
        pending = self._pending[conn.id]
        verdict = sniff(pending.prefix[:64]) if pending.prefix else None
        if verdict is None and conn.mid_stream and pending.prefix:
            verdict = _guess_mid_stream(pending.prefix)
        if verdict is None and not ended:
            return []
        protocol = verdict or "tcp"
        self.protocols[conn.id] = protocol
        kind = _CONVERSATIONS.get(protocol, _Unknown)
        conversation = kind(conn, self.notes)
        self._conversations[conn.id] = conversation
        if kind is _Unknown:
            what = "TLS: encrypted, not decoded" if protocol == "tls" else "no codec recognises this connection"
            self.notes.append(StreamNote(conn.id, None, what + "; not decoded" * (protocol != "tls")))
        del self._pending[conn.id]
        done: list[CapturedOperation] = []
        for held in pending.events:
            done += self._dispatch(conversation, held)
        return done

    def _dispatch(self, conversation: _Conversation, event: StreamEvent) -> list[CapturedOperation]:
        if isinstance(event, Data):
            return conversation.data(event.direction, event.ts_ns, event.data)
        if isinstance(event, Gap):
            return conversation.gap(event.direction, event.ts_ns, event.length)
        if isinstance(event, Closed):
            return conversation.close()
        return []

    def finish(self) -> list[CapturedOperation]:
        """The capture ended: connections still waiting to be sniffed are decided, unanswered operations
        come out without an answer."""
        done: list[CapturedOperation] = []
        for pending in list(self._pending.values()):
            done += self._decide(pending.events[0].conn, ended=True)
        for conversation in self._conversations.values():
            done += conversation.close()
        return done


def _guess_mid_stream(prefix: bytes) -> str | None:
    """A connection caught mid-way does not start with its first message: look for one further in."""
    if _REQUEST_LINE.search(prefix):
        return "http1"
    for pos in range(max(0, len(prefix) - 15)):
        length, _, _, opcode = struct.unpack_from("<iiii", prefix, pos)
        if opcode in _MONGO_OPCODES and 16 <= length <= DEFAULT_MAX_MESSAGE_SIZE:
            return "mongodb"
    return "http2" if len(prefix) >= 4096 else None


def decode_events(events: Iterable[StreamEvent]) -> Iterator[CapturedOperation]:
    """Operations of a stream of events, with a ``CaptureDecoder`` of its own (notes are lost: use the class
    to keep them)."""
    decoder = CaptureDecoder()
    for event in events:
        yield from decoder.feed(event)
    yield from decoder.finish()
