"""A real grpcio server for tests and the testbed: the four call shapes, failures on demand, health checks.

Messages are raw bytes (generic handlers with identity serializers), so no generated code is needed and any
payload size can be sent. Service ``meshproxy.test.Echo``:

| method | shape | behaviour |
| --- | --- | --- |
| ``Unary`` | unary | answers ``echo:`` + the request; echoes ``x-*`` request metadata as initial metadata; |
| | | sends trailing metadata ``x-trailer: done`` |
| ``Fail`` | unary | aborts with the status and message the request names: ``<code> <message>`` (UTF-8) |
| ``Sleep`` | unary | sleeps the number of milliseconds the request names, then answers |
| ``Count`` | server streaming | streams as many messages as the request names (``m0``, ``m1``, ...) |
| ``Sum`` | client streaming | answers the number of messages and bytes it received |
| ``Ping`` | bidi | answers each message with ``pong:`` + it, in step |
| ``Wait`` | server streaming | streams one message per 10 ms until cancelled; records that it saw the cancel |
| ``Flaky`` | unary | request ``<key> <failures> <where>``: the first ``failures`` calls with that key fail |
| | | ``UNAVAILABLE``, in a trailers-only response (``where`` = ``headers``) or in trailers after |
| | | response headers (``trailers``) |

plus ``grpc.health.v1.Health`` reporting ``SERVING`` for ``""`` and ``meshproxy.test.Echo``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "meshproxy.test.Echo"
MAX_MESSAGE = 64 << 20
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


def _identity(data: bytes) -> bytes:
    return data


class EchoService:
    """The handlers, with what tests need to observe (cancellations seen by the server)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.sleeping = threading.Event()
        """Set while a ``Sleep`` call is in progress at the server."""
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        echoed = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-"))
        context.send_initial_metadata(echoed)
        context.set_trailing_metadata((("x-trailer", "done"),))
        return b"echo:" + request

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        code_text, _, message = request.decode().partition(" ")
        code = next(c for c in grpc.StatusCode if c.value[0] == int(code_text))
        context.abort(code, message)
        raise AssertionError("abort raises")

    def sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.sleeping.set()
        try:
            time.sleep(int(request) / 1000)
        finally:
            self.sleeping.clear()
        return b"awake"

    def flaky(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        key, failures, where = request.decode().split()
        with self._lock:
            attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        if attempt <= int(failures):
            if where == "trailers":
                context.send_initial_metadata((("x-attempt", str(attempt)),))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"attempt {attempt} fails")
        return b"ok:%d" % attempt

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for index in range(int(request)):
            yield b"m%d" % index

    def sum(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        messages = size = 0
        for message in requests:
            messages += 1
            size += len(message)
        return b"%d %d" % (messages, size)

    def ping(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield b"pong:" + message

    def wait(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        context.add_callback(self._maybe_cancelled(context))
        while context.is_active():
            yield b"tick"
            time.sleep(0.01)

    def _maybe_cancelled(self, context: grpc.ServicerContext) -> Any:
        def callback() -> None:
            if context.code() is None or context.code() == grpc.StatusCode.CANCELLED:
                self.cancelled.set()

        return callback

    def handler(self) -> grpc.GenericRpcHandler:
        unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": unary(self.unary, _identity, _identity),
                "Fail": unary(self.fail, _identity, _identity),
                "Flaky": unary(self.flaky, _identity, _identity),
                "Sleep": unary(self.sleep, _identity, _identity),
                "Count": stream(self.count, _identity, _identity),
                "Sum": grpc.stream_unary_rpc_method_handler(self.sum, _identity, _identity),
                "Ping": grpc.stream_stream_rpc_method_handler(self.ping, _identity, _identity),
                "Wait": stream(self.wait, _identity, _identity),
            },
        )


class EchoServer:
    """``with EchoServer() as server:`` a started grpcio server on 127.0.0.1 (``server.port``)."""

    def __init__(self, workers: int = 16) -> None:
        self.service = EchoService()
        self.server = grpc.server(futures.ThreadPoolExecutor(workers), options=OPTIONS)
        self.server.add_generic_rpc_handlers((self.service.handler(),))
        health_servicer = health.HealthServicer()
        for name in ("", SERVICE):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> EchoServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


class EchoClient:
    """Stubs for every method on one channel."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.channel = grpc.insecure_channel(f"{address[0]}:{address[1]}", options=OPTIONS)
        channel = self.channel
        path = f"/{SERVICE}/"
        self.unary = channel.unary_unary(path + "Unary", _identity, _identity)
        self.fail = channel.unary_unary(path + "Fail", _identity, _identity)
        self.flaky = channel.unary_unary(path + "Flaky", _identity, _identity)
        self.sleep = channel.unary_unary(path + "Sleep", _identity, _identity)
        self.count = channel.unary_stream(path + "Count", _identity, _identity)
        self.sum = channel.stream_unary(path + "Sum", _identity, _identity)
        self.ping = channel.stream_stream(path + "Ping", _identity, _identity)
        self.wait = channel.unary_stream(path + "Wait", _identity, _identity)
        self.health = health_pb2_grpc.HealthStub(channel)

    def check_health(self, service: str = "") -> int:
        return int(self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
