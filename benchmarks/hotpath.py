"""CPU cost of one Mongo operation's L7 path, without sockets: ``python -m benchmarks.hotpath``.

Feeds the load generator's real ``find`` request (pymongo's encoding) and the canned backend's reply
through a ``MongoSession``'s decoders and the default filter chain, the same calls the proxy makes per
operation, and prints microseconds per operation for each stage. Deterministic enough to compare changes
on a busy machine, unlike the end-to-end benchmark.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from benchmarks.backend import _slow_answer
from benchmarks.wire import encode_find_request
from meshproxy.codecs.mongo import MongoDecoder, payload, summarize_reply
from meshproxy.config import StatsFilterConfig, TopologyRewriteFilterConfig
from meshproxy.filters.mongo.api import ConnectionInfo, MongoOperation
from meshproxy.filters.mongo.factory import build_mongo_filters
from meshproxy.stats import StatsStore


def per_op_us(fn: Callable[[], object], rounds: int = 20000) -> float:
    """Microseconds per call of ``fn``: the best of five batches of ``rounds`` calls (also used by sigv4.py)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / rounds / 1000)
    return best


def main() -> None:
    request = encode_find_request()
    reply = b"".join(_slow_answer(request))
    connection = ConnectionInfo(1, "127.0.0.1:1", "bench", ("127.0.0.1", 2))
    filters = build_mongo_filters(
        [StatsFilterConfig(), TopologyRewriteFilterConfig()],
        stats=StatsStore(),
        prefix="bench",
        listener_address=("127.0.0.1", 2),
    )
    for f in filters:
        f.on_connection_open(connection)
    requests, replies = MongoDecoder(), MongoDecoder(validate_documents=False)
    request_id = struct.unpack_from("<i", request, 4)[0]

    def full() -> None:
        (message,) = requests.feed(request)
        op = MongoOperation(connection, message, 1)
        for f in filters:
            f.on_request(op)
        (response,) = replies.feed(reply)
        op.response = response
        op.replies += 1
        op.finished_ns = 2
        for f in reversed(filters):
            f.on_response(op)

    (decoded_request,) = MongoDecoder().feed(request)
    (decoded_reply,) = MongoDecoder().feed(reply)
    assert decoded_reply.header.response_to == request_id
    stages = {
        "decode request": lambda: requests.feed(request),
        "decode reply": lambda: replies.feed(reply),
        "operation + command/db/collection": lambda: (
            (op := MongoOperation(connection, decoded_request, 1)).command, op.database, op.collection
        ),
        "summarize_reply": lambda: summarize_reply(payload(decoded_reply)),
        "whole operation (decode both + filters)": full,
    }
    for name, fn in stages.items():
        print(f"{name:42s} {per_op_us(fn):7.2f} us")
    _http1_stages()
    _dynamo_session_stages()
    _grpc_stages()


def _http1_stages() -> None:
    """The HTTP/1.1 framing under the DynamoDB codec, on a PutItem request boto3 sent to moto (recorded)."""
    from pathlib import Path

    from meshproxy.codecs.http1 import Http1RequestDecoder, Http1ResponseDecoder

    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "http1"
    request = (fixtures / "put_item.request.bin").read_bytes()
    (first_response,) = Http1ResponseDecoder().feed((fixtures / "dynamo_keepalive.s2c.bin").read_bytes())[:1]
    response = first_response.raw
    print(f"{'http1: decode a PutItem request':42s} {per_op_us(lambda: Http1RequestDecoder().feed(request)):7.2f} us")
    print(f"{'http1: decode its response':42s} {per_op_us(lambda: Http1ResponseDecoder().feed(response)):7.2f} us")



class _NullTransport:
    """Stands in for both sockets of a session: writes are counted and dropped."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


def _dynamo_session_stages() -> None:
    """A whole GetItem through ``DynamoSession`` (framing, parsing, filters, forwarding; no syscalls)."""
    import asyncio
    from pathlib import Path

    from meshproxy.cluster import Cluster
    from meshproxy.codecs.dynamo import parse_request, parse_response
    from meshproxy.codecs.http1 import Http1RequestDecoder, Http1ResponseDecoder
    from meshproxy.config import dynamo_sidecar_config
    from meshproxy.transport.dynamo_session import DynamoSession
    from meshproxy.transport.listener import ListenerRuntime

    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dynamo"
    request = (fixtures / "04_get_item.req.http").read_bytes()
    (response,) = Http1ResponseDecoder().feed((fixtures / "04_get_item.resp.http").read_bytes())
    # The same response as a keep-alive server sends it (moto's says Connection: close, which re-dials).
    keep_alive = response.raw.replace(b"Connection: close\r\n", b"")
    (framed_request,) = Http1RequestDecoder().feed(request)
    parsed = parse_request(framed_request.headers, framed_request.body)
    print(f"{'dynamo: parse_request (GetItem)':42s} "
          f"{per_op_us(lambda: parse_request(framed_request.headers, framed_request.body)):7.2f} us")
    print(f"{'dynamo: parse_response':42s} "
          f"{per_op_us(lambda: parse_response(200, response.headers, response.body, parsed)):7.2f} us")

    async def measure(filters: list[dict[str, object]]) -> float:
        store = StatsStore()
        config = dynamo_sidecar_config(
            listen=("127.0.0.1", 0), upstream=("127.0.0.1", 1), admin=None, stat_prefix="bench", filters=filters
        )
        listener = ListenerRuntime(config.listeners[0], Cluster.from_config(config.clusters[0], store), store)
        await listener.start()
        session = DynamoSession(listener, 1)
        session.connection_made(_NullTransport())  # type: ignore[arg-type]
        upstream = session.upstream_protocol()
        session.up_transport = _NullTransport()  # type: ignore[assignment]

        def one_request() -> None:
            session.data_received(request)
            upstream.data_received(keep_alive)

        try:
            return per_op_us(one_request)
        finally:
            listener.stop_accepting()

    for label, filters in (("no filters", []), ("stats filter", [{"type": "stats"}])):
        cost = asyncio.run(measure(filters))
        print(f"{'dynamo: whole GetItem via session, ' + label:42s} {cost:7.2f} us")



def _grpc_stages() -> None:
    """gRPC through ``GrpcSession`` and the upstream pool, with h2 peers in memory on both sides: the proxy's
    CPU per unary call and per streamed message (a DATA frame on an open stream), plus h2's own costs."""
    import asyncio
    import time as _time

    import h2.config
    import h2.connection
    import h2.events

    from meshproxy.cluster import Cluster
    from meshproxy.config import grpc_sidecar_config
    from meshproxy.transport.grpc_session import GrpcSession
    from meshproxy.transport.h2_upstream import H2UpstreamConnection
    from meshproxy.transport.listener import ListenerRuntime

    request_headers = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/bench.Svc/Unary"), (b":authority", b"bench"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    ]  # fmt: skip
    message = b"\x00\x00\x00\x00\x0a0123456789"

    class Pipe(_NullTransport):
        def __init__(self) -> None:
            super().__init__()
            self.chunks: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.chunks.append(data)

        def take(self) -> bytes:
            data = b"".join(self.chunks)
            self.chunks.clear()
            return data

        def get_write_buffer_size(self) -> int:
            return 0

    def peer(client: bool) -> h2.connection.H2Connection:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
        conn.initiate_connection()
        return conn

    async def measure(filters: list[dict[str, object]]) -> tuple[float, float]:
        store = StatsStore()
        config = grpc_sidecar_config(
            listen=("127.0.0.1", 0), upstream=("127.0.0.1", 1), admin=None, stat_prefix="bench", filters=filters
        )
        cluster = Cluster.from_config(config.clusters[0], store)
        listener = ListenerRuntime(config.listeners[0], cluster, store)
        await listener.start()
        pool = listener.grpc_pool
        assert pool is not None
        down, up_pipe = Pipe(), Pipe()
        session = GrpcSession(listener, 1)
        session.connection_made(down)  # type: ignore[arg-type]
        upstream = H2UpstreamConnection(pool, cluster.hosts[0])
        upstream.connection_made(up_pipe)  # type: ignore[arg-type]
        pool.connections.append(upstream)
        client, server = peer(True), peer(False)
        spent = [0]

        def through(feed: Callable[[bytes], None], data: bytes) -> None:
            if data:
                start = _time.perf_counter_ns()
                feed(data)
                pool.flusher.run()
                spent[0] += _time.perf_counter_ns() - start

        def turn(answer: bool) -> int:
            through(session.data_received, client.data_to_send())
            for event in server.receive_data(up_pipe.take()):
                if isinstance(event, h2.events.DataReceived):
                    server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, h2.events.StreamEnded) and answer:
                    server.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                    server.send_data(event.stream_id, message)
                    server.send_headers(event.stream_id, [(b"grpc-status", b"0")], end_stream=True)
            through(upstream.data_received, server.data_to_send())
            ended = 0
            for event in client.receive_data(down.take()):
                if isinstance(event, h2.events.DataReceived):
                    client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                ended += isinstance(event, h2.events.StreamEnded)
            return ended

        turn(True)
        calls = 2000
        spent[0] = 0
        for _ in range(calls):
            stream = client.get_next_available_stream_id()
            client.send_headers(stream, request_headers)
            client.send_data(stream, message, end_stream=True)
            while not turn(True):
                pass
        per_call = spent[0] / calls / 1000
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, request_headers)
        turn(False)
        messages = 5000
        spent[0] = 0
        for _ in range(messages):
            client.send_data(stream, message)
            turn(False)
        per_message = spent[0] / messages / 1000
        listener.stop_accepting()
        return per_call, per_message

    for label, filters in (("no filters", []), ("stats filter", [{"type": "stats"}])):
        per_call, per_message = asyncio.run(measure(filters))
        print(f"{'grpc: unary call via session+pool, ' + label:42s} {per_call:7.2f} us")
        print(f"{'grpc: streamed message (DATA), ' + label:42s} {per_message:7.2f} us")


if __name__ == "__main__":
    main()
