"""Replaying a capture's operations against a target, on the recorded schedule or at a set rate, and comparing
each answer with the recorded one.

What cannot be sent again as it was, and what is done instead:

- **MongoDB**: every request gets a fresh ``requestID``; session and cluster-time fields (``lsid``,
  ``txnNumber``, ``autocommit``, ``startTransaction``, ``$clusterTime``) are dropped, since the target never
  issued them (operations of a recorded transaction run one by one); cursor ids the capture's server handed
  out are mapped to the ones the target returns, so ``getMore`` and ``killCursors`` follow their cursor
  (across connections, as drivers send them); handshakes, authentication and session bookkeeping
  (``hello``, ``saslStart``, ``endSessions``) are not replayed, the replay opens its own connections;
  writes are replayed only with ``writes=True``. Requests go uncompressed.
- **DynamoDB**: the recorded signature is stale (it signs the recorded time and host), so each request is
  signed again with botocore's SigV4 signer for the target; writes only with ``writes=True``.
- **gRPC**: each call is sent with its method, metadata and message bytes over a fresh HTTP/2 connection.

Order is kept per recorded connection (one replay connection each, or ``connections`` of them shared in
turn), so a cursor's ``getMore`` still follows its ``find``. The lag of each operation (how far behind its
scheduled time it was sent) is measured, as mongoreplay reported it.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from bson.int64 import Int64

from meshproxy.codecs.dynamo import parse_response
from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.grpc import GrpcStatus
from meshproxy.codecs.http1 import Http1ResponseDecoder, HttpRequest
from meshproxy.codecs.mongo import (
    MongoDecoder,
    MongoMessage,
    OpMsg,
    ReplySummary,
    encode_op_msg,
    payload,
    summarize_reply,
)
from meshproxy.replay.operations import CapturedOperation, GrpcCall

MONGO_SKIPPED = {
    "hello": "handshake", "isMaster": "handshake", "ismaster": "handshake",
    "saslStart": "authentication", "saslContinue": "authentication", "authenticate": "authentication",
    "logout": "authentication", "getnonce": "authentication",
    "endSessions": "session bookkeeping", "startSession": "session bookkeeping",
    "refreshSessions": "session bookkeeping", "killSessions": "session bookkeeping",
}  # fmt: skip
MONGO_WRITES = frozenset(
    {
        "insert", "update", "delete", "findAndModify", "findandmodify", "bulkWrite", "create", "drop",
        "createIndexes", "dropIndexes", "dropDatabase", "renameCollection", "collMod", "commitTransaction",
        "abortTransaction",
    }
)  # fmt: skip
MONGO_DROPPED_FIELDS = ("lsid", "txnNumber", "autocommit", "startTransaction", "$clusterTime")
DYNAMO_WRITES = frozenset(
    {
        "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems", "CreateTable",
        "DeleteTable", "UpdateTable", "UpdateTimeToLive", "ExecuteStatement", "BatchExecuteStatement",
        "ExecuteTransaction", "TagResource", "UntagResource", "RestoreTableFromBackup", "CreateBackup",
        "DeleteBackup", "ImportTable",
    }
)  # fmt: skip
"""Operations that change data (PartiQL statements counted among them: a statement may be either)."""
HOP_BY_HOP = frozenset({b"host", b"content-length", b"connection", b"authorization", b"x-amz-date",
                        b"x-amz-security-token", b"x-amz-content-sha256", b"expect", b"transfer-encoding"})  # fmt: skip


@dataclass(slots=True, frozen=True)
class ReplayOptions:
    target: tuple[str, int]
    speed: float = 1.0
    """The recorded schedule divided by this (2: twice as fast); ignored when ``rate`` is set."""
    rate: float | None = None
    """Operations per second, evenly spaced, instead of the recorded schedule."""
    connections: int | None = None
    """Replay connections; None: one per recorded connection."""
    protocols: frozenset[str] | None = None
    operations: frozenset[str] | None = None
    namespaces: frozenset[str] | None = None
    """Keep operations whose namespace is one of these, or starts with one followed by ``.``."""
    writes: bool = False
    compare_bodies: bool = False
    ignore_fields: frozenset[str] = frozenset()
    """Fields left out of body comparisons (always left out: cursor ids, operationTime, $clusterTime)."""
    aws_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    """Credentials to sign DynamoDB requests with; None: botocore's default chain, else dummy keys."""
    timeout: float = 30.0


@dataclass(slots=True)
class ReplayResult:
    """One recorded operation and what became of it."""

    recorded: CapturedOperation
    scheduled_ms: float
    """When it was due, from the start of the replay."""
    sent_ms: float | None = None
    status: str | None = None
    documents: int | None = None
    latency_ms: float | None = None
    skipped: str | None = None
    """Why it was not sent (a write without ``writes``, a handshake, a cursor the target never opened)."""
    differences: list[str] = field(default_factory=list)

    @property
    def lag_ms(self) -> float | None:
        return None if self.sent_ms is None else max(0.0, self.sent_ms - self.scheduled_ms)


def select(operations: Sequence[CapturedOperation], options: ReplayOptions) -> list[CapturedOperation]:
    """The operations to replay, by the filters, in the order their requests were recorded."""

    def wanted(op: CapturedOperation) -> bool:
        if options.protocols is not None and op.protocol not in options.protocols:
            return False
        if options.operations is not None and op.operation not in options.operations:
            return False
        if options.namespaces is not None:
            space = op.namespace or ""
            return any(space == n or space.startswith(n + ".") for n in options.namespaces)
        return op.request is not None

    return sorted((op for op in operations if wanted(op)), key=lambda op: (op.time_ns, op.connection))


async def replay(
    operations: Sequence[CapturedOperation],
    options: ReplayOptions,
    progress: Callable[[ReplayResult], None] | None = None,
) -> list[ReplayResult]:
    """Replay ``operations`` (see ``select``) against ``options.target``; one result per operation."""
    chosen = select(operations, options)
    if not chosen:
        return []
    start_ns = chosen[0].time_ns
    results = [
        ReplayResult(op, (i / options.rate * 1000.0) if options.rate else (op.time_ns - start_ns) / 1e6 / options.speed)
        for i, op in enumerate(chosen)
    ]
    order = _CausalOrder(results)
    lanes: dict[int, list[ReplayResult]] = {}
    for result in results:
        original = result.recorded.connection
        key = original if options.connections is None else original % options.connections
        lanes.setdefault(key, []).append(result)
    shared = _Shared(options, order)
    began = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for lane in lanes.values():
                group.create_task(_run_lane(lane, shared, began, progress))
    except* OSError as failed:  # the target could not be reached at all: one plain error for the caller
        raise failed.exceptions[0] from None
    return results


class _CausalOrder:
    """Operations that had finished in the recording before another began finish in the replay before it is
    sent, whatever the pace: at ``rate`` or a high ``speed`` a table's ``PutItem`` on one connection must not
    overtake the ``CreateTable`` another connection was answered before it (recorded as "happened before").

    Operations are numbered by their recorded completion; ``required[i]`` is how many of them completed
    before operation ``i`` began, and it waits until that many (in that order's prefix) are done. No cycle
    is possible: what must come first began earlier still."""

    def __init__(self, results: list[ReplayResult]) -> None:
        def finished(result: ReplayResult) -> float:
            op = result.recorded
            return float("inf") if op.latency_ms is None else op.time_ns + op.latency_ms * 1e6

        by_completion = sorted(range(len(results)), key=lambda i: finished(results[i]))
        self.rank = {id(results[i]): rank for rank, i in enumerate(by_completion)}
        ends = [finished(results[i]) for i in by_completion]
        self.required = {
            id(result): bisect.bisect_right(ends, _started(result.recorded)) for result in results
        }
        self.done = [False] * len(results)
        self.prefix = 0
        self.changed = asyncio.Condition()

    async def wait_for(self, result: ReplayResult) -> None:
        needed = self.required[id(result)]
        if self.prefix >= needed:
            return
        async with self.changed:
            await self.changed.wait_for(lambda: self.prefix >= needed)

    async def finished(self, result: ReplayResult) -> None:
        self.done[self.rank[id(result)]] = True
        while self.prefix < len(self.done) and self.done[self.prefix]:
            self.prefix += 1
        async with self.changed:
            self.changed.notify_all()


def _started(op: CapturedOperation) -> float:
    """When the recorded request was sent (its ``time_ns`` is when it was complete; near enough for a
    request, which is small next to its answer's wait)."""
    return float(op.time_ns)


@dataclass(slots=True)
class _Shared:
    """What every lane of one replay shares."""

    options: ReplayOptions
    order: _CausalOrder
    cursors: dict[int, int] = field(default_factory=dict)
    """Recorded cursor id -> the target's (0: exhausted there)."""
    request_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    signer: Any = None


async def _run_lane(
    lane: list[ReplayResult], shared: _Shared, began: float, progress: Callable[[ReplayResult], None] | None
) -> None:
    mongo: _MongoLink | None = None
    http: _HttpLink | None = None
    try:
        for result in lane:
            delay = result.scheduled_ms / 1000.0 - (time.perf_counter() - began)
            if delay > 0:
                await asyncio.sleep(delay)
            await shared.order.wait_for(result)
            op = result.recorded
            try:
                if op.protocol == "mongodb":
                    mongo = mongo or await _MongoLink.open(shared.options)
                    await mongo.replay(result, shared, began)
                elif op.protocol in ("dynamodb", "http"):
                    http = http or await _HttpLink.open(shared.options)
                    await http.replay(result, shared, began)
                elif op.protocol == "grpc":
                    await _replay_grpc(result, shared, began)
                else:
                    result.skipped = f"no replay for protocol {op.protocol}"
            except (OSError, DecodeError, TimeoutError, ConnectionError, h2.exceptions.ProtocolError) as error:
                result.status = f"error: {type(error).__name__}: {error}"
                result.differences.append(f"status: recorded {op.status}, replay failed ({error})")
                if mongo is not None:
                    mongo.close()
                    mongo = None
                if http is not None:
                    http.close()
                    http = None
            if result.skipped is None and not result.differences and result.status is not None:
                _compare(result, shared.options)
            await shared.order.finished(result)
            if progress is not None:
                progress(result)
    finally:
        if mongo is not None:
            mongo.close()
        if http is not None:
            http.close()


def _compare(result: ReplayResult, options: ReplayOptions) -> None:
    recorded = result.recorded
    if recorded.status is None:
        return  # nothing recorded to compare with
    if result.status != recorded.status:
        result.differences.append(f"status: recorded {recorded.status}, replayed {result.status}")
    if recorded.documents is not None and result.documents is not None and recorded.documents != result.documents:
        result.differences.append(f"documents: recorded {recorded.documents}, replayed {result.documents}")


def _now_ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000.0


# -- MongoDB ------------------------------------------------------------------------------------------------


class _MongoLink:
    """One replay connection to a Mongo target: whole requests out, the reply to each read back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.decoder = MongoDecoder(validate_documents=False)
        self.replies: list[MongoMessage] = []

    @classmethod
    async def open(cls, options: ReplayOptions) -> _MongoLink:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*options.target), options.timeout)
        return cls(reader, writer, options.timeout)

    def close(self) -> None:
        self.writer.close()

    async def replay(self, result: ReplayResult, shared: _Shared, began: float) -> None:
        op = result.recorded
        message = payload(op.request)
        command = op.operation
        reason = MONGO_SKIPPED.get(command)
        if reason is None and not isinstance(message, OpMsg):
            reason = f"legacy opcode {type(message).__name__}"
        if reason is None and not shared.options.writes and _is_write(command, message):
            reason = "write (replay writes with --writes)"
        if reason is not None:
            result.skipped = reason
            return
        assert isinstance(message, OpMsg)
        document = {k: v for k, v in message.document().items() if k not in MONGO_DROPPED_FIELDS}
        if command == "getMore":
            target_id = shared.cursors.get(int(document["getMore"]))
            if not target_id:
                result.skipped = "its cursor is not open on the target"
                result.differences.append("cursor: the target did not open (or already exhausted) this cursor")
                return
            document["getMore"] = Int64(target_id)
        elif command == "killCursors":
            document["cursors"] = [Int64(shared.cursors.pop(int(c), 0)) for c in document.get("cursors", [])]
        request_id = next(shared.request_ids) & 0x7FFFFFFF
        more_to_come = bool(message.flag_bits & 0b10)
        outgoing = encode_op_msg(document, request_id=request_id, flag_bits=message.flag_bits & 0b10,
                                 sequences=message.sequences)  # fmt: skip
        result.sent_ms = _now_ms(began)
        self.writer.write(outgoing.raw)
        await self.writer.drain()
        if more_to_come:  # fire-and-forget (w: 0): no reply to wait for
            result.status = op.status
            return
        reply = await asyncio.wait_for(self._reply_to(request_id), self.timeout)
        result.latency_ms = _now_ms(began) - result.sent_ms
        summary = summarize_reply(reply)
        result.status = "ok" if summary.ok else (summary.code_name or f"code {summary.code}")
        result.documents = summary.num_docs
        _map_cursor(op, summary, shared)
        if shared.options.compare_bodies and op.response is not None:
            result.differences += _body_differences(op.response, reply, shared.options.ignore_fields)

    async def _reply_to(self, request_id: int) -> MongoMessage:
        while True:
            for index, reply in enumerate(self.replies):
                if reply.header.response_to == request_id:
                    return self.replies.pop(index)
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the target closed the connection")
            self.replies += self.decoder.feed(data)


def _is_write(command: str, message: Any) -> bool:
    if command in MONGO_WRITES:
        return True
    if command != "aggregate" or not isinstance(message, OpMsg):
        return False
    return b"$out" in message.body or b"$merge" in message.body


def _map_cursor(op: CapturedOperation, summary: ReplySummary, shared: _Shared) -> None:
    if op.response is None:
        return
    recorded = summarize_reply(op.response).cursor_id
    if recorded:
        shared.cursors[recorded] = summary.cursor_id or 0


IGNORED_ALWAYS = frozenset({"id", "operationTime", "$clusterTime", "ns", "electionId", "localTime"})


def _body_differences(recorded: MongoMessage, replayed: MongoMessage, ignore: frozenset[str]) -> list[str]:
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in ignore and k not in IGNORED_ALWAYS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    before, after = payload(recorded), payload(replayed)
    if not isinstance(before, OpMsg) or not isinstance(after, OpMsg):
        return []
    if clean(before.document()) != clean(after.document()):
        return ["body: the reply's documents differ"]
    return []


# -- DynamoDB (and plain HTTP/1.1) -------------------------------------------------------------------------


class _HttpLink:
    """One keep-alive HTTP/1.1 connection to the target, reopened when the server closes it."""

    def __init__(self, options: ReplayOptions) -> None:
        self.options = options
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.decoder = Http1ResponseDecoder()

    @classmethod
    async def open(cls, options: ReplayOptions) -> _HttpLink:
        return cls(options)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def replay(self, result: ReplayResult, shared: _Shared, began: float) -> None:
        op = result.recorded
        request: HttpRequest = op.request
        if op.protocol == "dynamodb" and not self.options.writes and op.operation in DYNAMO_WRITES:
            result.skipped = "write (replay writes with --writes)"
            return
        if op.protocol == "dynamodb":
            wire = _signed_request(request, self.options, shared)
        else:
            wire = _plain(request, self.options)
        for attempt in (0, 1):  # once more on a fresh connection if a kept-alive one was closed meanwhile
            if self.writer is None:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.options.target), self.options.timeout
                )
                self.decoder = Http1ResponseDecoder()
            writer = self.writer
            assert writer is not None
            result.sent_ms = _now_ms(began)
            writer.write(wire)
            await writer.drain()
            try:
                response = await asyncio.wait_for(self._response(), self.options.timeout)
                break
            except ConnectionError:
                self.close()
                if attempt:
                    raise
        result.latency_ms = _now_ms(began) - (result.sent_ms or 0.0)
        if not response.keep_alive:
            self.close()
        if op.protocol == "dynamodb":
            answer = parse_response(response.status, response.headers, response.body)
            result.status = str(response.status) + (f" {answer.error_type}" if answer.error_type else "")
            result.documents = answer.item_count
        else:
            result.status = str(response.status)

    async def _response(self) -> Any:
        assert self.reader is not None
        while True:
            data = await self.reader.read(65536)
            if not data:
                done = self.decoder.end_of_stream()
                if done:
                    return done[-1]
                raise ConnectionError("the target closed the connection before answering")
            for response in self.decoder.feed(data):
                if response.status >= 200:
                    return response


def _plain(request: HttpRequest, options: ReplayOptions) -> bytes:
    host, port = options.target
    headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP]
    return _wire(request.method, request.target, [(b"host", f"{host}:{port}".encode()), *headers], request.body)


def _signed_request(request: HttpRequest, options: ReplayOptions, shared: _Shared) -> bytes:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    if shared.signer is None:
        shared.signer = SigV4Auth(_credentials(options), "dynamodb", options.aws_region)
    host, port = options.target
    headers = {k.decode(): v.decode(errors="replace") for k, v in request.headers if k.lower() not in HOP_BY_HOP}
    aws = AWSRequest(method=request.method.decode(), url=f"http://{host}:{port}{request.target.decode()}",
                     data=request.body, headers=headers)  # fmt: skip
    shared.signer.add_auth(aws)
    prepared = [(k.encode(), str(v).encode()) for k, v in aws.headers.items()]
    return _wire(request.method, request.target, [(b"host", f"{host}:{port}".encode()), *prepared], request.body)


def _credentials(options: ReplayOptions) -> Any:
    from botocore.credentials import Credentials
    from botocore.session import Session

    if options.aws_access_key_id and options.aws_secret_access_key:
        return Credentials(options.aws_access_key_id, options.aws_secret_access_key)
    found = Session().get_credentials()
    return found.get_frozen_credentials() if found is not None else Credentials("replay", "replay")


def _wire(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [k + b": " + v for k, v in headers]
    lines.append(b"content-length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- gRPC ---------------------------------------------------------------------------------------------------

_GRPC_DROPPED = frozenset({":authority", ":scheme", ":method", ":path", "grpc-timeout"})


async def _replay_grpc(result: ReplayResult, shared: _Shared, began: float) -> None:
    call: GrpcCall = result.recorded.request
    if call.truncated:
        result.skipped = "its request was larger than the decoder keeps"
        return
    options = shared.options
    host, port = options.target
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), options.timeout)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        path = dict(call.headers).get(":path", result.recorded.operation)
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"{host}:{port}")]
        headers += [(k, v) for k, v in call.headers if k not in _GRPC_DROPPED]
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, headers)
        result.sent_ms = _now_ms(began)
        status: str | None = None
        pending = call.data
        ended = answered = False
        async with asyncio.timeout(options.timeout):
            while True:
                while pending:
                    window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
                    if window <= 0:
                        break
                    conn.send_data(stream, pending[:window])
                    pending = pending[window:]
                if not pending and not ended:
                    conn.end_stream(stream)
                    ended = True
                writer.write(conn.data_to_send())
                await writer.drain()
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the target closed the connection")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        fields = _text(event.headers or [])
                        code = fields.get("grpc-status")
                        if code is not None:
                            status = _grpc_status(code)
                        elif status is None and isinstance(event, h2.events.ResponseReceived):
                            status = f"HTTP {fields.get(':status', '?')}"
                    elif isinstance(event, h2.events.StreamEnded):
                        answered = True
                    elif isinstance(event, h2.events.StreamReset):
                        status = f"RST_STREAM {event.error_code}"
                        answered = True
                if answered:
                    break
        result.latency_ms = _now_ms(began) - result.sent_ms
        result.status = status
    finally:
        writer.close()


def _text(headers: Any) -> dict[str, str]:
    """h2's headers as text, whichever form its configuration gave them in."""
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in headers
    }


def _grpc_status(code: str) -> str:
    try:
        return GrpcStatus(int(code)).name
    except ValueError:
        return code
