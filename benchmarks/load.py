"""The load generator: N closed-loop connections sending a real ``find`` OP_MSG and timing each reply.

Each connection sends one request, waits for its reply, checks that the reply's responseTo is the
request's requestID, records the latency (``time.perf_counter_ns``) and sends the next one: a closed loop,
so N connections keep at most N operations in flight. The request bytes come from pymongo's own
``_op_msg`` once; each operation gets a fresh requestID (a process-wide counter) stamped into a copy.

Timeline of one run: connect all, ``warmup`` seconds unmeasured, ``duration`` seconds measured, then stop
sending and wait for every outstanding reply, so ``sent == received`` at the end and a proxy's operation
counters can be compared to ``sent`` exactly.

Run alone: ``python -m benchmarks.load --port P --connections 32 --duration 3`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import cast

from benchmarks import wire
from benchmarks.backend import install_uvloop, pin_to_cpu

_now_ns = time.perf_counter_ns


@dataclass(slots=True)
class LoadResult:
    """What one run measured. Latencies are in microseconds; ``ops_per_s`` covers the measured window."""

    connections: int
    duration_s: float
    measured_ops: int
    ops_per_s: float
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float
    sent: int
    received: int
    response_to_mismatches: int
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class _Shared:
    """State every connection of one run shares (plain attributes: one event loop, one thread)."""

    __slots__ = ("latencies", "measuring", "mismatches", "next_id", "received", "sent", "stopping")

    def __init__(self) -> None:
        self.next_id = 1
        self.measuring = False
        self.stopping = False
        self.latencies: list[int] = []
        self.sent = 0
        self.received = 0
        self.mismatches = 0


class ClosedLoopClient(asyncio.Protocol):
    """One connection: request, wait for the reply, record, repeat until told to stop."""

    __slots__ = ("_buffer", "_expect", "_head", "_sent_at", "_shared", "_tail", "_transport", "done")

    def __init__(self, shared: _Shared, request: bytes, done: asyncio.Future[None]) -> None:
        self._shared = shared
        self._head, self._tail = wire.split_request_template(request)
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._expect = b""
        self._sent_at = 0
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._send()

    def _send(self) -> None:
        shared = self._shared
        rid = shared.next_id.to_bytes(4, "little")
        shared.next_id = (shared.next_id + 1) & 0x7FFFFFFF or 1
        self._expect = rid
        shared.sent += 1
        self._sent_at = _now_ns()
        assert self._transport is not None
        self._transport.write(self._head + rid + self._tail)

    def data_received(self, data: bytes) -> None:
        now = _now_ns()
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        size = len(data)
        if size < 16 or size < int.from_bytes(data[0:4], "little"):
            self._buffer = data  # a partial reply: wait for the rest
            return
        if size != int.from_bytes(data[0:4], "little"):
            # A closed loop has one request in flight: one reply and nothing after it.
            self._fail(f"{size} bytes where one reply of {int.from_bytes(data[0:4], 'little')} was due")
            return
        shared = self._shared
        shared.received += 1
        if data[8:12] != self._expect:
            shared.mismatches += 1
        if shared.measuring:
            shared.latencies.append(now - self._sent_at)
        if shared.stopping:
            self._finish()
        else:
            self._send()

    def _fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(reason))
        if self._transport is not None:
            self._transport.close()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"connection lost before the run ended: {exc!r}"))


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


async def run_load(
    host: str,
    port: int,
    *,
    connections: int,
    duration: float,
    warmup: float = 0.5,
    drain_timeout: float = 5.0,
) -> LoadResult:
    """One run against ``host:port`` on the running loop (uvloop when the caller installed it)."""
    loop = asyncio.get_running_loop()
    request = wire.encode_find_request()
    shared = _Shared()
    errors: list[str] = []
    clients: list[ClosedLoopClient] = []
    transports: list[asyncio.BaseTransport] = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        _transport, client = await loop.create_connection(
            functools.partial(ClosedLoopClient, shared, request, done), host, port
        )
        clients.append(client)
        transports.append(_transport)

    await asyncio.sleep(warmup)
    shared.measuring = True
    received_at_start = shared.received
    started = time.perf_counter()
    await asyncio.sleep(duration)
    shared.stopping = True
    elapsed = time.perf_counter() - started
    shared.measuring = False
    measured = shared.received - received_at_start

    finished, unfinished = await asyncio.wait([c.done for c in clients], timeout=drain_timeout)
    errors.extend(str(f.exception()) for f in finished if f.exception() is not None)
    if unfinished:
        errors.append(f"{len(unfinished)} connections still waiting for a reply {drain_timeout}s after the run")
        for future in unfinished:
            future.cancel()
    for each in transports:
        each.close()

    lat = sorted(shared.latencies)
    return LoadResult(
        connections=connections,
        duration_s=round(elapsed, 4),
        measured_ops=measured,
        ops_per_s=round(measured / elapsed, 1) if elapsed > 0 else 0.0,
        p50_us=percentile(lat, 0.50) / 1000,
        p99_us=percentile(lat, 0.99) / 1000,
        mean_us=round(sum(lat) / len(lat) / 1000, 2) if lat else 0.0,
        max_us=(lat[-1] / 1000) if lat else 0.0,
        sent=shared.sent,
        received=shared.received,
        response_to_mismatches=shared.mismatches,
        errors=errors,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args(argv)
    pin_to_cpu(args.cpu)
    install_uvloop()
    result = asyncio.run(
        run_load(args.host, args.port, connections=args.connections, duration=args.duration, warmup=args.warmup)
    )
    print(result.to_json(), flush=True)
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
