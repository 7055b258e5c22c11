"""The recorded boto3 <-> moto exchanges (``tests/fixtures/dynamo``) as ``DynamoOperation``s, and a chain
that drives filters the way the DynamoDB session will: ``on_request`` in order, then the response (from
upstream or a filter's ``LocalResponse``) back through ``on_response`` in reverse order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from meshproxy.codecs.dynamo import DynamoRequest, parse_request, parse_response
from meshproxy.filters.dynamo.api import (
    ConnectionInfo,
    DynamoFilter,
    DynamoOperation,
    LocalResponse,
    RequestAction,
)

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "dynamo"
STEPS: list[str] = [entry["file"] for entry in json.loads((FIXTURES / "manifest.json").read_text())]
CONNECTION = ConnectionInfo(id=7, client="127.0.0.1:50000", listener="dynamo", local_address=("127.0.0.1", 8000))


class HttpMessage(NamedTuple):
    start_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    size: int

    @property
    def status(self) -> int:
        return int(self.start_line.split(b" ", 2)[1])


def split_http(stream: bytes) -> list[HttpMessage]:
    """Content-Length framing of the recorded streams (well-formed by construction; the real HTTP/1.1
    layer is ``meshproxy.codecs.http1``)."""
    messages: list[HttpMessage] = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        start_line, *lines = head.split(b"\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]
        length = next((int(v) for k, v in headers if k.lower() == b"content-length"), 0)
        messages.append(HttpMessage(start_line, headers, rest[:length], len(head) + 4 + length))
        stream = rest[length:]
    return messages


@dataclass(slots=True)
class Exchange:
    """One recorded request and the response moto gave it."""

    step: str
    request: HttpMessage
    response: HttpMessage

    def parsed_request(self) -> DynamoRequest:
        return parse_request(self.request.headers, self.request.body)


def exchanges(step: str) -> list[Exchange]:
    requests = split_http((FIXTURES / f"{step}.req.http").read_bytes())
    responses = split_http((FIXTURES / f"{step}.resp.http").read_bytes())
    return [Exchange(step, q, r) for q, r in zip(requests, responses, strict=True)]


def workload() -> list[Exchange]:
    """Every recorded exchange, in recording order (19 requests)."""
    return [exchange for step in STEPS for exchange in exchanges(step)]


class Chain:
    """Filters driven like a session would, with a fake clock (each request takes ``latency_ms``)."""

    def __init__(self, filters: list[DynamoFilter], latency_ms: float = 5.0) -> None:
        self.filters = filters
        self.latency_ns = int(latency_ms * 1_000_000)
        self.clock_ns = 1_000_000_000

    def request(self, request: DynamoRequest, size: int) -> tuple[DynamoOperation, RequestAction | None, int]:
        """``on_request`` through the chain until a filter acts; returns the op, the action and how many
        filters saw the request."""
        op = DynamoOperation(connection=CONNECTION, request=request, started_ns=self.clock_ns, request_size=size)
        for i, f in enumerate(self.filters):
            action = f.on_request(op)
            if action is not None:
                return op, action, i + (0 if isinstance(action, LocalResponse) else 1)
        return op, None, len(self.filters)

    def respond(self, op: DynamoOperation, status: int, headers: list[tuple[bytes, bytes]], body: bytes, seen: int,
                size: int) -> None:
        op.response = parse_response(status, headers, body, op.request)
        op.response_size = size
        self.clock_ns += self.latency_ns
        op.finished_ns = self.clock_ns
        for f in reversed(self.filters[:seen]):
            f.on_response(op)

    def run(self, exchange: Exchange) -> DynamoOperation:
        """The exchange through the chain: the recorded response, unless a filter answered locally."""
        op, action, seen = self.request(exchange.parsed_request(), exchange.request.size)
        if isinstance(action, LocalResponse):
            op.local_response = True
            self.respond(op, action.status, list(action.headers), action.body, seen, len(action.body))
            return op
        response = exchange.response
        self.respond(op, response.status, response.headers, response.body, len(self.filters), response.size)
        return op
