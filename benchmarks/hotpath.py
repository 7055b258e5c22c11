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


def _per_op_us(fn: Callable[[], object], rounds: int = 20000) -> float:
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
        print(f"{name:42s} {_per_op_us(fn):7.2f} us")
    _http1_stages()


def _http1_stages() -> None:
    """The HTTP/1.1 framing under the DynamoDB codec, on a PutItem request boto3 sent to moto (recorded)."""
    from pathlib import Path

    from meshproxy.codecs.http1 import Http1RequestDecoder, Http1ResponseDecoder

    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "http1"
    request = (fixtures / "put_item.request.bin").read_bytes()
    (first_response,) = Http1ResponseDecoder().feed((fixtures / "dynamo_keepalive.s2c.bin").read_bytes())[:1]
    response = first_response.raw
    print(f"{'http1: decode a PutItem request':42s} {_per_op_us(lambda: Http1RequestDecoder().feed(request)):7.2f} us")
    print(f"{'http1: decode its response':42s} {_per_op_us(lambda: Http1ResponseDecoder().feed(response)):7.2f} us")


if __name__ == "__main__":
    main()
