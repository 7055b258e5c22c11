"""Active health checking: probe every host of a cluster on a timer and mark it healthy or unhealthy.

Modelled on Envoy's health checkers. A ``HealthChecker`` runs one task per host; each task calls a
*checker* (an async callable ``(address, timeout) -> bool``) every ``interval`` seconds and flips the host's
``healthy`` flag only after ``unhealthy_threshold`` consecutive failures or ``healthy_threshold``
consecutive successes, so one lost probe does not take a host out of rotation and one lucky probe does not
put a flapping host back.

A checker answers ``True`` (healthy), ``False`` (the service answered, but not as a healthy one: a 503,
``NOT_SERVING``, ``ok: 0``), or raises. Network trouble (refused, reset, timeout, the peer closing early)
counts as ``network_failure``, anything else raised as ``failure``, as Envoy keeps the two apart: the first
says the host is unreachable, the second that it is reachable and sick.

Checkers here: ``tcp_check`` (connect, optionally send bytes and expect a reply prefix), ``http_check``
(HTTP/1.1 GET, expected statuses), ``grpc_check`` (``grpc.health.v1.Health/Check`` over h2), ``mongo_check``
(OP_MSG ``hello``) and ``dynamodb_check`` (an unsigned ``ListTables`` with ``Limit`` 1). Health checks are
not on the data path, so they use plain anyio streams rather than protocol callbacks.
"""

from __future__ import annotations

import json
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.abc
import bson
import h2.config
import h2.connection
import h2.events
from anyio.streams.buffered import BufferedByteReceiveStream

from meshproxy.codecs.mongo import MongoDecoder, OpMsg, encode_op_msg
from meshproxy.stats import Counter, Gauge, StatsStore

__all__ = [
    "Checker",
    "HealthCheckConfig",
    "HealthCheckStats",
    "HealthChecker",
    "HealthEvent",
    "dynamodb_check",
    "grpc_check",
    "http_check",
    "mongo_check",
    "tcp_check",
]

log = logging.getLogger(__name__)

Checker = Callable[[tuple[str, int], float], Awaitable[bool]]
"""``await check(address, timeout)``: ``True`` healthy, ``False`` unhealthy; raising is a failure too."""

NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is a subclass)
    TimeoutError,
    EOFError,  # asyncio.IncompleteReadError
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)
"""What a checker raises when the host could not be reached or hung up: counted as ``network_failure``."""

_MAX_RESPONSE = 64 * 1024
"""The most bytes a checker reads from a host: a probe's answer is small, and a confused peer must not make
the proxy buffer without bound."""


class CheckedHost(Protocol):
    """What the health checker needs of a host (``meshproxy.cluster.cluster.Host`` is one)."""

    address: tuple[str, int]
    healthy: bool

    @property
    def name(self) -> str: ...


def _passes(host: CheckedHost) -> bool:
    """The host's own health-check verdict. A cluster ``Host`` keeps it in ``passes_health_checks``: its
    ``healthy`` is also false while outlier detection has ejected it, which says nothing of its checks (read
    as the verdict, an ejected dead host would never be marked down, and traffic would go back to it each time
    its ejection ends)."""
    return bool(getattr(host, "passes_health_checks", host.healthy))


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Envoy's knobs, with Envoy's meaning. Times are seconds."""

    interval: float = 5.0
    """Between two checks of a healthy host."""
    jitter: float = 0.0
    """A random extra in ``[0, jitter)`` added to every wait, so hosts checked together drift apart."""
    timeout: float = 1.0
    """How long one check may take before it counts as a network failure."""
    unhealthy_threshold: int = 3
    """Consecutive failures that make a healthy host unhealthy."""
    healthy_threshold: int = 2
    """Consecutive successes that make an unhealthy host healthy (at startup one is enough, as in Envoy)."""
    unhealthy_interval: float | None = None
    """Between two checks of an unhealthy host; ``None`` means ``interval``."""
    no_traffic_interval: float | None = None
    """Between two checks of a host that had no traffic (asked of the checker's ``has_traffic``); ``None``
    means ``interval``. Envoy uses it to probe idle clusters less often."""
    initially_healthy: bool = True
    """Whether hosts start healthy; when ``False`` they start unhealthy and their first success admits them."""
    event_log_size: int = 1000
    """How many events ``HealthChecker.events`` keeps (the oldest go first)."""
    event_log_path: str | None = None
    """Optional file every event is appended to as one JSON line (Envoy's ``event_log_path``)."""

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if self.jitter < 0:
            raise ValueError("jitter must not be negative")
        if self.unhealthy_threshold < 1 or self.healthy_threshold < 1:
            raise ValueError("thresholds must be at least 1")
        for name in ("unhealthy_interval", "no_traffic_interval"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(slots=True)
class HealthCheckStats:
    """``cluster.<name>.health_check.*``; Prometheus ``meshproxy_cluster_health_check_*{cluster=...}``."""

    attempt: Counter
    success: Counter
    failure: Counter
    network_failure: Counter
    healthy: Gauge
    """Hosts currently healthy."""

    @classmethod
    def register(cls, store: StatsStore, cluster: str) -> HealthCheckStats:
        labels = {"cluster": cluster}

        def counter(stat: str) -> Counter:
            return store.counter(
                f"cluster.{cluster}.health_check.{stat}", prom=f"meshproxy_cluster_health_check_{stat}", labels=labels
            )

        return cls(
            attempt=counter("attempt"),
            success=counter("success"),
            failure=counter("failure"),
            network_failure=counter("network_failure"),
            healthy=store.gauge(
                f"cluster.{cluster}.health_check.healthy", prom="meshproxy_cluster_health_check_healthy", labels=labels
            ),
        )


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """One line of the event log. ``event`` is ``eject_unhealthy``, ``add_healthy`` or ``first_failure`` (a
    healthy host's first failed check, so an operator sees trouble before the threshold is reached)."""

    time: float
    cluster: str
    host: str
    event: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"time": self.time, "cluster": self.cluster, "host": self.host, "event": self.event, "detail": self.detail}
        )


@dataclass(slots=True)
class _HostState:
    successes: int = 0
    failures: int = 0
    checked: bool = False


@dataclass(slots=True)
class HealthChecker:
    """Checks every host of one cluster with ``check`` until cancelled (``await run()``).

    Hosts may come and go while it runs (``add_host`` / ``remove_host``; the cluster calls them when its
    membership changes). A host added that way starts unhealthy and its first passing check admits it, as
    Envoy treats hosts that join a health-checked cluster: no traffic to a host nobody has seen answer."""

    cluster_name: str
    hosts: Sequence[CheckedHost]
    """The hosts checked. When it is the cluster's own list (changed in place), ``add_host`` and
    ``remove_host`` only start and stop the checks; otherwise they also add to or remove from a private copy."""
    check: Checker
    config: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    stats: HealthCheckStats | None = None
    """Defaults to stats registered in a private ``StatsStore``; pass ``HealthCheckStats.register(store, name)``
    to export them."""
    has_traffic: Callable[[CheckedHost], bool] | None = None
    """Used with ``config.no_traffic_interval``: ``False`` means the host had no traffic lately."""
    clock: Callable[[], float] = time.time
    """Timestamps of events (wall-clock seconds)."""
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    rng: random.Random = field(default_factory=random.Random)
    on_change: Callable[[CheckedHost], None] | None = None
    """Called after a host turns healthy or unhealthy (the cluster rebuilds its balancer)."""
    events: deque[HealthEvent] = field(init=False)
    _states: dict[int, _HostState] = field(init=False, repr=False)
    _task_group: anyio.abc.TaskGroup | None = field(default=None, init=False, repr=False)
    _scopes: dict[int, anyio.CancelScope] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.stats is None:
            self.stats = HealthCheckStats.register(StatsStore(), self.cluster_name)
        self.events = deque(maxlen=self.config.event_log_size)
        self._states = {id(host): _HostState() for host in self.hosts}
        for host in self.hosts:
            host.healthy = self.config.initially_healthy
        self._update_gauge()

    async def run(self) -> None:
        """Check every host concurrently, forever (cancel the enclosing scope to stop)."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            try:
                for host in self.hosts:
                    self._start(host)
                await anyio.sleep_forever()
            finally:
                self._task_group = None

    def add_host(self, host: CheckedHost) -> None:
        """Start checking ``host``, a newcomer: it is unhealthy until its first check passes."""
        hosts = self._own_list()
        if not any(h is host for h in hosts):
            hosts.append(host)
        self._states[id(host)] = _HostState()
        host.healthy = False
        self._update_gauge()
        if self._task_group is not None:
            self._start(host)

    def remove_host(self, host: CheckedHost) -> None:
        """Stop checking ``host`` (a check in flight is cancelled) and forget its counts."""
        hosts = self._own_list()
        hosts[:] = [h for h in hosts if h is not host]
        self._states.pop(id(host), None)
        scope = self._scopes.pop(id(host), None)
        if scope is not None:
            scope.cancel()
        self._update_gauge()

    def _own_list(self) -> list[CheckedHost]:
        """``hosts`` as a list changed in place (the cluster's own list stays shared with the cluster)."""
        if not isinstance(self.hosts, list):
            self.hosts = list(self.hosts)
        return self.hosts

    def _start(self, host: CheckedHost) -> None:
        assert self._task_group is not None
        scope = anyio.CancelScope()
        self._scopes[id(host)] = scope
        self._task_group.start_soon(
            self._check_forever, host, scope, name=f"health check {self.cluster_name} {host.name}"
        )

    async def _check_forever(self, host: CheckedHost, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await self.check_once(host)
                await self.sleep(self.next_interval(host))

    def next_interval(self, host: CheckedHost) -> float:
        """The wait before ``host``'s next check: unhealthy, then no-traffic, then plain interval; plus jitter."""
        config = self.config
        interval = config.interval
        if not _passes(host) and config.unhealthy_interval is not None:
            interval = config.unhealthy_interval
        elif config.no_traffic_interval is not None and self.has_traffic is not None and not self.has_traffic(host):
            interval = config.no_traffic_interval
        if config.jitter:
            interval += self.rng.uniform(0, config.jitter)
        return interval

    async def check_once(self, host: CheckedHost) -> bool:
        """Run one check of ``host``, count it, apply the thresholds; return whether the check passed."""
        stats = self.stats
        assert stats is not None
        stats.attempt.inc()
        detail = ""
        try:
            with anyio.fail_after(self.config.timeout):
                passed = await self.check(host.address, self.config.timeout)
        except NETWORK_ERRORS as exc:
            stats.network_failure.inc()
            passed, detail = False, f"network: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a checker's protocol error: the host answered, wrongly
            stats.failure.inc()
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        else:
            if passed:
                stats.success.inc()
            else:
                stats.failure.inc()
                detail = "check failed"
        self._apply(host, passed, detail)
        return passed

    def _apply(self, host: CheckedHost, passed: bool, detail: str) -> None:
        state = self._states.setdefault(id(host), _HostState())
        first_check, state.checked = not state.checked, True
        if passed:
            state.failures = 0
            state.successes += 1
            if not _passes(host) and (first_check or state.successes >= self.config.healthy_threshold):
                host.healthy = True
                self._record(host, "add_healthy", "")
        else:
            state.successes = 0
            state.failures += 1
            if _passes(host):
                if state.failures >= self.config.unhealthy_threshold:
                    host.healthy = False
                    self._record(host, "eject_unhealthy", detail)
                elif state.failures == 1:
                    self._record(host, "first_failure", detail)

    def _record(self, host: CheckedHost, event: str, detail: str) -> None:
        self._update_gauge()
        if event != "first_failure" and self.on_change is not None:
            self.on_change(host)
        entry = HealthEvent(self.clock(), self.cluster_name, host.name, event, detail)
        self.events.append(entry)
        level = logging.INFO if event == "add_healthy" else logging.WARNING
        log.log(level, "health check: cluster %s host %s %s %s", self.cluster_name, host.name, event, detail)
        if self.config.event_log_path is not None:
            with open(self.config.event_log_path, "a", encoding="utf-8") as sink:
                sink.write(entry.to_json() + "\n")

    def _update_gauge(self) -> None:
        assert self.stats is not None
        self.stats.healthy.set(sum(1 for host in self.hosts if _passes(host)))


# -- checkers ------------------------------------------------------------------------------------------------


async def _connect(address: tuple[str, int]) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp(address[0], address[1])


async def _read_to_eof(stream: anyio.abc.ByteReceiveStream) -> bytes:
    data = bytearray()
    while len(data) <= _MAX_RESPONSE:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)
    raise ValueError(f"response longer than {_MAX_RESPONSE} bytes")


def tcp_check(send: bytes = b"", expect: bytes = b"") -> Checker:
    """Healthy when a connection opens and, if ``expect`` is given, the reply to ``send`` starts with it."""

    async def check(address: tuple[str, int], timeout: float) -> bool:
        async with await _connect(address) as stream:
            if send:
                await stream.send(send)
            if not expect:
                return True
            reply = await BufferedByteReceiveStream(stream).receive_exactly(len(expect))
            return reply == expect

    return check


async def _http_exchange(address: tuple[str, int], request: bytes) -> tuple[int, bytes]:
    """Send one ``Connection: close`` request; return the status code and the body (read to EOF)."""
    async with await _connect(address) as stream:
        await stream.send(request)
        response = await _read_to_eof(stream)
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        if not response:
            raise EOFError("the server closed the connection without answering")
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    return int(parts[1]), body


def http_check(
    path: str = "/", *, host: str | None = None, expected_statuses: Container[int] = frozenset({200})
) -> Checker:
    """Healthy when ``GET path`` answers a status in ``expected_statuses`` (Envoy's default: 200 only).

    ``host`` is the ``Host`` header (default: the address). The body is read to EOF and ignored."""

    async def check(address: tuple[str, int], timeout: float) -> bool:
        authority = host or f"{address[0]}:{address[1]}"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: meshproxy-health-check\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        status, _ = await _http_exchange(address, request)
        return status in expected_statuses

    return check


_AUTH_ERRORS = frozenset(
    {
        "MissingAuthenticationTokenException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "AccessDeniedException",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
    }
)


def dynamodb_check(*, host: str | None = None) -> Checker:
    """Healthy when an unsigned ``ListTables`` (``{"Limit": 1}``) gets a 200, or a 400 whose error is about
    credentials (the probe is unsigned: a real DynamoDB refusing it still proves the service answers).
    Other 4xx and every 5xx are failures."""

    async def check(address: tuple[str, int], timeout: float) -> bool:
        body = b'{"Limit":1}'
        authority = host or f"{address[0]}:{address[1]}"
        request = (
            f"POST / HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: meshproxy-health-check\r\n"
            "Content-Type: application/x-amz-json-1.0\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        status, reply = await _http_exchange(address, request)
        if status == 200:
            return True
        if status != 400:
            return False
        try:
            error_type = str(json.loads(reply).get("__type", ""))
        except (ValueError, AttributeError):
            return False
        return error_type.rpartition("#")[2] in _AUTH_ERRORS

    return check


def _protobuf_string(field_number: int, value: str) -> bytes:
    data = value.encode()
    return _varint(field_number << 3 | 2) + _varint(len(data)) + data if data else b""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _health_status(message: bytes) -> int:
    """``HealthCheckResponse.status`` (field 1, varint) from its protobuf encoding; 0 (UNKNOWN) when absent."""
    pos, status = 0, 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        wire_type = key & 7
        if wire_type == 0:
            value, pos = _read_varint(message, pos)
            if key >> 3 == 1:
                status = value
        elif wire_type == 2:
            length, pos = _read_varint(message, pos)
            pos += length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
    return status


_SERVING = 1


def grpc_check(service: str = "", *, authority: str | None = None) -> Checker:
    """Healthy when ``grpc.health.v1.Health/Check`` for ``service`` answers ``SERVING`` (plaintext HTTP/2).

    The request and response are encoded by hand (one string field; one varint field), so no gRPC library
    is needed. A non-zero ``grpc-status`` (``NOT_FOUND`` for an unknown service) is a failure."""

    async def check(address: tuple[str, int], timeout: float) -> bool:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/grpc.health.v1.Health/Check"),
                (":authority", authority or f"{address[0]}:{address[1]}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("user-agent", "meshproxy-health-check"),
            ],
        )
        request = _protobuf_string(1, service)
        conn.send_data(stream_id, b"\x00" + struct.pack(">I", len(request)) + request, end_stream=True)
        body = bytearray()
        grpc_status: str | None = None
        async with await _connect(address) as stream:
            await stream.send(conn.data_to_send())
            ended = False
            while not ended:
                data = await stream.receive()
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                        body += event.data
                        if len(body) > _MAX_RESPONSE:
                            raise ValueError("health response too large")
                        conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        for name, value in event.headers or []:
                            if name == b"grpc-status":
                                grpc_status = bytes(value).decode("ascii", "replace")
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                        ended = True
                    elif isinstance(event, h2.events.StreamReset):
                        raise ConnectionResetError(f"stream reset by the server (error {event.error_code})")
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        raise ConnectionResetError(f"GOAWAY from the server (error {event.error_code})")
                pending = conn.data_to_send()
                if pending:
                    await stream.send(pending)
        if grpc_status != "0" or len(body) < 5:
            return False
        (length,) = struct.unpack_from(">I", body, 1)
        if body[0] != 0:
            raise ValueError("compressed health response (none was offered)")
        return _health_status(bytes(body[5 : 5 + length])) == _SERVING

    return check


def mongo_check() -> Checker:
    """Healthy when ``{hello: 1, $db: "admin"}`` (OP_MSG) answers ``ok: 1``."""
    request_ids = iter(range(1, 1 << 31))

    async def check(address: tuple[str, int], timeout: float) -> bool:
        request = encode_op_msg({"hello": 1, "$db": "admin"}, request_id=next(request_ids))
        decoder = MongoDecoder(max_message_size=16 * 1024 * 1024)
        async with await _connect(address) as stream:
            await stream.send(request.raw)
            while True:
                messages = decoder.feed(await stream.receive())
                if messages:
                    break
        reply = messages[0]
        if not isinstance(reply, OpMsg):
            raise ValueError(f"unexpected reply to hello: {type(reply).__name__}")
        return bool(bson.decode(reply.body).get("ok") == 1)

    return check
