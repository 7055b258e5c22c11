"""A grpcio workload over every call shape, with the exact counts a proxy should report for it.

``run_workload(address)`` makes the calls the gRPC acceptance asks for (unary with metadata both ways,
1000-message server stream, client stream, bidi ping-pong, a 4 MiB message, 100 concurrent calls on one
channel, a non-OK status with a unicode message, a client cancel, an expiring deadline, a health check)
and returns a ``Ledger``: what each call returned, comparable between a direct run and one through the
proxy, and per method the calls, messages each way and status codes it made.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from testbeds.grpc.service import SERVICE, EchoClient

BIG = 4 << 20
STREAMED = 1000
CONCURRENT = 100
UNICODE_MESSAGE = "précondition échouée ✓ 失败"


@dataclass
class MethodCounts:
    calls: int = 0
    request_messages: int = 0
    response_messages: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


@dataclass
class Ledger:
    results: dict[str, Any] = field(default_factory=dict)
    methods: dict[tuple[str, str], MethodCounts] = field(default_factory=dict)

    def record(self, service: str, method: str, status: grpc.StatusCode, sent: int, received: int) -> None:
        counts = self.methods.setdefault((service, method), MethodCounts())
        counts.calls += 1
        counts.request_messages += sent
        counts.response_messages += received
        counts.statuses[status.value[0]] += 1


def run_workload(address: tuple[str, int], *, server_saw_cancel: Any = None) -> Ledger:
    """Every call, in order; ``server_saw_cancel`` (an Event) is awaited after the client's cancel."""
    ledger = Ledger()
    ok = grpc.StatusCode.OK
    with EchoClient(address) as client:
        answer, call = client.unary.with_call(
            b"hello", metadata=(("x-request-id", "r-1"), ("x-blob-bin", b"\x00\xff\x10")), timeout=10
        )
        ledger.results["unary"] = (
            answer,
            sorted((m.key, m.value) for m in call.initial_metadata() if m.key.startswith("x-")),
            sorted((m.key, m.value) for m in call.trailing_metadata()),
        )
        ledger.record(SERVICE, "Unary", ok, 1, 1)

        streamed = list(client.count(b"%d" % STREAMED, timeout=30))
        ledger.results["server_stream"] = (len(streamed), streamed[0], streamed[-1])
        ledger.record(SERVICE, "Count", ok, 1, STREAMED)

        ledger.results["client_stream"] = client.sum(iter([b"x" * 100] * 50), timeout=10)
        ledger.record(SERVICE, "Sum", ok, 50, 1)

        pongs = list(client.ping(iter([b"%d" % i for i in range(20)]), timeout=10))
        ledger.results["bidi"] = pongs
        ledger.record(SERVICE, "Ping", ok, 20, 20)

        big = client.unary(b"b" * BIG, timeout=60)
        ledger.results["big"] = (len(big), big[:5], big[-1:])
        ledger.record(SERVICE, "Unary", ok, 1, 1)

        calls = [client.unary.future(b"%d" % i, timeout=30) for i in range(CONCURRENT)]
        ledger.results["concurrent"] = sorted(f.result() for f in calls)
        for _ in range(CONCURRENT):
            ledger.record(SERVICE, "Unary", ok, 1, 1)

        code = grpc.StatusCode.FAILED_PRECONDITION
        try:
            client.fail(f"{code.value[0]} {UNICODE_MESSAGE}".encode(), timeout=10)
            ledger.results["failure"] = "no error"
        except grpc.RpcError as error:
            ledger.results["failure"] = (error.code(), error.details())
        ledger.record(SERVICE, "Fail", code, 1, 0)

        stream = client.wait(b"", timeout=30)
        ticks = [next(stream) for _ in range(3)]
        stream.cancel()
        seen = server_saw_cancel.wait(10) if server_saw_cancel is not None else None
        ledger.results["cancel"] = (ticks, stream.code(), seen)
        # Ticks the server sent after the three read, before the cancel reached it, are not known here:
        # ``Wait`` is recorded without its response count (tests compare ``calls`` and statuses for it).
        ledger.record(SERVICE, "Wait", grpc.StatusCode.CANCELLED, 1, 0)

        started = time.monotonic()
        try:
            client.sleep(b"2000", timeout=0.3)
            ledger.results["deadline"] = "no error"
        except grpc.RpcError as error:
            ledger.results["deadline"] = (error.code(), time.monotonic() - started < 1.5)
        ledger.record(SERVICE, "Sleep", grpc.StatusCode.DEADLINE_EXCEEDED, 1, 0)

        ledger.results["health"] = client.check_health(SERVICE)
        ledger.record("grpc.health.v1.Health", "Check", ok, 1, 1)
    return ledger
