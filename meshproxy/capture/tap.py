"""The tap: what passes through a live listener, both directions of every connection, recorded to pcapng.

Why it is shaped like this:

- **Free when off.** Sessions (``meshproxy.transport.relay.Relay``) hold ``tap``, ``None`` unless a tap is
  recording their listener; the data path pays one attribute load and a test per read and per write.
- **Cheap on the event loop when on.** A session's hook (``ConnectionTap.client`` / ``.server``) appends
  ``(time, connection, bytes)`` to a deque and adds to a counter: no framing, no redaction, no file I/O on
  the loop. A writer thread does the rest: redaction, TCP/IP framing (``meshproxy.capture.writer``) and file
  writes in bounded chunks.
- **Bounded.** At most ``max_buffered`` bytes wait for the writer; past that, bytes are dropped and counted
  (the capture shows a hole of exactly their size where they were, so a reader reports it rather than
  misreading what follows). The file stops at ``max_bytes`` (the block that would pass it is not written)
  and the recording at ``duration``: either way the tap stops itself, closes the file cleanly and counts why.
- **Real addresses.** Each connection is written as a TCP conversation between the client's address and
  port and the address and port it connected to, as a capture on the proxy's host would show them (the
  bytes are those the client sent and received: decrypted, for a TLS listener). Connections open when the
  tap starts are recorded from that moment, without a handshake, as tcpdump would show a connection caught
  mid-way; those opened later get a full handshake.
- **Safe from the admin endpoint.** Files are written only inside the tap directory (``TapManager``);
  a path outside it is refused, and an existing file is never overwritten.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio

from meshproxy.capture.redact import Redactor, redactor_for
from meshproxy.capture.writer import PcapngWriter, TcpConversation
from meshproxy.stats import Counter, StatsStore

if TYPE_CHECKING:
    from meshproxy.admin import AdminRequest, AdminResponse, Route
    from meshproxy.transport.listener import ListenerRuntime
    from meshproxy.transport.relay import Relay

__all__ = ["DEFAULT_DURATION", "DEFAULT_MAX_BYTES", "ConnectionTap", "Tap", "TapManager", "TapStats"]

log = logging.getLogger("meshproxy.tap")

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_DURATION = 300.0
DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024
"""Bytes waiting for the writer thread before new ones are dropped."""
WRITE_CHUNK = 1024 * 1024
"""The writer writes at most this much per call, so that a stop never waits behind one huge write."""
WAKE_BYTES = 256 * 1024
"""The loop wakes the writer when this much is waiting; otherwise the writer looks every ``POLL`` seconds."""
POLL = 0.05
_EVENT_COST = 64
"""What an event without bytes (open, close, a drop) counts against ``max_buffered``."""

_OPEN, _CLIENT, _SERVER, _SKIP_CLIENT, _SKIP_SERVER, _CLOSE = range(6)


@dataclass(slots=True)
class TapStats:
    """``tap.<listener>.*``: what every recording of a listener did, summed."""

    started: Counter
    stopped_max_bytes: Counter
    stopped_duration: Counter
    stopped_admin: Counter
    stopped_error: Counter
    bytes_written: Counter
    """Bytes of pcapng written."""
    connections: Counter
    dropped_bytes: Counter
    """Connection bytes not recorded: the writer could not keep up (``max_buffered``)."""

    @classmethod
    def create(cls, stats: StatsStore, listener: str) -> TapStats:
        return cls(
            *(
                stats.counter(f"tap.{listener}.{name}", prom=f"meshproxy_tap_{name}", labels={"listener": listener})
                for name in cls.__dataclass_fields__
            )
        )


@dataclass(slots=True, eq=False)
class ConnectionTap:
    """One connection as a tap sees it: the hooks a session calls, and the writer's state for it."""

    tap: Tap
    client_address: tuple[str, int]
    server_address: tuple[str, int]
    kind: str
    conversation: TcpConversation | None = None
    """Made by the writer thread (only it touches this and the redactors)."""
    redactors: tuple[Redactor, Redactor] | None = None

    def client(self, data: bytes) -> None:
        """Bytes the client sent (``Relay.data_received``)."""
        self.tap.enqueue(_CLIENT, self, data)

    def server(self, data: bytes) -> None:
        """Bytes sent to the client (``Relay.send_downstream``)."""
        self.tap.enqueue(_SERVER, self, data)

    def closed(self, *, local: bool, abort: bool) -> None:
        """The connection closed: by the proxy (``local``) or the client; ``abort``: with a reset."""
        self.tap.enqueue(_CLOSE, self, (local, abort))


@dataclass(slots=True, eq=False)
class Tap:
    """One recording of one listener into one file. Made and stopped on the event loop."""

    listener: ListenerRuntime
    path: Path
    file: BinaryIO
    stats: TapStats
    max_bytes: int = DEFAULT_MAX_BYTES
    duration: float = DEFAULT_DURATION
    redact: bool = False
    max_buffered: int = DEFAULT_MAX_BUFFERED
    state: str = "recording"
    """``recording``, ``stopping`` (the writer is finishing the file), ``stopped``."""
    reason: str = ""
    """Why it stopped: ``admin``, ``max_bytes``, ``duration``, ``shutdown`` or ``error: ...``."""
    started_at: float = field(default_factory=time.time)
    bytes_written: int = 0
    connections: int = 0
    dropped_bytes: int = 0
    packets: int = 0
    _queue: collections.deque[tuple[int, ConnectionTap, Any, int]] = field(default_factory=collections.deque)
    _enqueued: int = 0
    """Bytes (and event costs) the loop queued; only the loop writes it."""
    _consumed: int = 0
    """The same, taken by the writer; only the writer writes it."""
    _wake: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    _stopping: bool = False
    _timer: Any = None
    _thread: threading.Thread | None = None

    # -- on the event loop ----------------------------------------------------------------------------

    def start(self, sessions: Iterable[Relay]) -> None:
        """Begin: attach to the listener's open connections and new ones, start the writer and the timer."""
        import asyncio

        loop = asyncio.get_running_loop()
        self.stats.started.inc()
        self._thread = threading.Thread(
            target=self._write_loop, args=(loop,), name=f"tap {self.path.name}", daemon=True
        )
        self._thread.start()
        self.listener.tap = self
        for session in sessions:
            if session.tap is None and not session.closed:
                session.tap = self.attach(session, mid_stream=True)
        self._timer = loop.call_later(self.duration, self.stop, "duration")

    def attach(self, session: Relay, *, mid_stream: bool = False) -> ConnectionTap | None:
        """A connection to record (``Relay.connection_made``, or at start for one already open)."""
        if self._stopping:
            return None
        transport = session.down_transport
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        local = transport.get_extra_info("sockname") or self.listener.address
        if not isinstance(peer, tuple) or not isinstance(local, tuple):
            return None  # not an IP socket
        conn = ConnectionTap(self, (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1])), session.kind)
        self.connections += 1
        self.stats.connections.inc()
        self.enqueue(_OPEN, conn, mid_stream)
        return conn

    def enqueue(self, kind: int, conn: ConnectionTap, payload: Any) -> None:
        if self._stopping:
            return
        size = len(payload) if kind in (_CLIENT, _SERVER) else _EVENT_COST
        if self._enqueued - self._consumed + size > self.max_buffered and kind in (_CLIENT, _SERVER):
            self.dropped_bytes += size
            self.stats.dropped_bytes.inc(size)
            kind, payload, size = kind + 2, size, _EVENT_COST  # the writer leaves a hole this big
            # open, close and drop events are always queued: the file must stay coherent
        self._queue.append((kind, conn, payload, time.time_ns()))
        self._enqueued += size
        if self._enqueued - self._consumed > WAKE_BYTES or kind == _CLOSE:
            self._wake.set()

    def stop(self, reason: str = "admin") -> None:
        """Stop recording (idempotent): detach from every connection; the writer finishes the file."""
        if self._stopping:
            return
        self._stopping = True
        self.state = "stopping"
        self.reason = reason
        counter = {
            "admin": self.stats.stopped_admin, "max_bytes": self.stats.stopped_max_bytes,
            "duration": self.stats.stopped_duration,
        }.get(reason, self.stats.stopped_error)  # fmt: skip
        counter.inc()
        if self._timer is not None:
            self._timer.cancel()
        if self.listener.tap is self:
            self.listener.tap = None
        for session in list(self.listener.sessions):  # closed sessions are gone from it, and need nothing
            if session.tap is not None and session.tap.tap is self:
                session.tap = None
        if self._done.is_set():
            self._queue.clear()
        self._wake.set()
        log.info("tap of listener %s into %s stopped (%s)", self.listener.name, self.path, reason)

    async def wait(self) -> None:
        """Until the writer has closed the file."""
        await anyio.to_thread.run_sync(self._done.wait)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def status(self) -> dict[str, Any]:
        return {
            "listener": self.listener.name,
            "state": "stopped" if self._done.is_set() else self.state,
            "reason": self.reason or None,
            "path": str(self.path),
            "redact": self.redact,
            "max_bytes": self.max_bytes,
            "duration": self.duration,
            "started_at": self.started_at,
            "bytes_written": self.bytes_written,
            "packets": self.packets,
            "connections": self.connections,
            "dropped_bytes": self.dropped_bytes,
            "buffered_bytes": max(0, self._enqueued - self._consumed),
        }

    # -- in the writer thread -------------------------------------------------------------------------

    def _write_loop(self, loop: Any) -> None:
        writer = PcapngWriter()
        reason = ""
        try:
            self._write(writer.header())
            while True:
                self._wake.wait(POLL)
                self._wake.clear()
                stopping = self._stopping
                reason = self._drain(writer)
                if reason or stopping:
                    break
        except OSError as exc:
            reason = f"error: {exc.strerror or exc}"
            log.error("tap into %s failed: %s", self.path, exc)
        finally:
            with contextlib.suppress(OSError):
                self.file.close()
            self._queue.clear()  # what the file had no room for; the loop clears what arrives until it stops
            self.state = "stopped"
            self._done.set()
            if reason and not self._stopping:
                with contextlib.suppress(RuntimeError):  # the loop is closed already: nothing to detach from
                    loop.call_soon_threadsafe(self.stop, reason)

    def _drain(self, writer: PcapngWriter) -> str:
        """Write what is queued; ``max_bytes`` when the file is full."""
        out: list[bytes] = []
        size = 0
        queue = self._queue
        while queue:
            kind, conn, payload, ts = queue.popleft()
            self._consumed += len(payload) if kind in (_CLIENT, _SERVER) else _EVENT_COST
            for block in self._blocks(writer, kind, conn, payload, ts):
                if self.bytes_written + size + len(block) > self.max_bytes:
                    self._flush(out)
                    return "max_bytes"
                out.append(block)
                size += len(block)
                self.packets += 1
            if size >= WRITE_CHUNK:
                self._flush(out)
                out, size = [], 0
        self._flush(out)
        return ""

    def _flush(self, blocks: list[bytes]) -> None:
        if blocks:
            self._write(b"".join(blocks))

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()
        self.bytes_written += len(data)
        self.stats.bytes_written.inc(len(data))

    def _blocks(self, writer: PcapngWriter, kind: int, conn: ConnectionTap, payload: Any, ts: int) -> list[bytes]:
        if kind == _OPEN:
            conv = conn.conversation = TcpConversation(conn.client_address, conn.server_address)
            if self.redact:
                # A connection caught mid-way has no known message boundary: a redactor that guessed one could
                # let a value through, so all its bytes are written as zeros.
                protocol = "unknown" if payload else conn.kind
                conn.redactors = (redactor_for(protocol, client=True), redactor_for(protocol, client=False))
            frames = conv.resume(ts) if payload else conv.open(ts)
        else:
            if conn.conversation is None:
                return []
            conv = conn.conversation
            redactors = conn.redactors
            if kind == _CLIENT:
                frames = conv.client_data(ts, redactors[0].feed(payload) if redactors else payload)
            elif kind == _SERVER:
                frames = conv.server_data(ts, redactors[1].feed(payload) if redactors else payload)
            elif kind in (_SKIP_CLIENT, _SKIP_SERVER):
                client = kind == _SKIP_CLIENT
                frames = []
                if redactors:  # what the redactor held is lost with the stream: written as zeros, before the hole
                    held = redactors[0 if client else 1].skip()
                    frames = conv.client_data(ts, held) if client else conv.server_data(ts, held)
                (conv.skip_client if client else conv.skip_server)(payload)
            else:
                local, abort = payload
                frames = []
                if redactors:
                    frames = conv.client_data(ts, redactors[0].finish()) + conv.server_data(ts, redactors[1].finish())
                frames += conv.close(ts, by_server=local, reset=abort)
        return [writer.packet(t, frame) for t, frame in frames]


# -- the admin's view -----------------------------------------------------------------------------------


def _default_directory() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "meshproxy-taps"


class TapManager:
    """The taps of a proxy's listeners, and the admin routes that drive them."""

    def __init__(
        self, listeners: Mapping[str, ListenerRuntime], stats: StatsStore, directory: str | Path | None = None
    ) -> None:
        self.listeners = listeners
        self.directory = Path(directory) if directory is not None else _default_directory()
        self._stats = stats
        self._tap_stats: dict[str, TapStats] = {}
        self.taps: dict[str, Tap] = {}
        """The latest tap of each listener (running or stopped)."""

    def stats_for(self, listener: str) -> TapStats:
        if listener not in self._tap_stats:
            self._tap_stats[listener] = TapStats.create(self._stats, listener)
        return self._tap_stats[listener]

    def routes(self) -> list[Route]:
        from meshproxy.admin import Route

        post = frozenset({"POST"})
        return [
            Route("/tap", self._status, "taps: state, file, bytes written, connections, dropped bytes (JSON)"),
            Route(
                "/tap/start", self._start,
                "record a listener to pcapng: ?listener=NAME&path=FILE&max_bytes=N&duration=S&redact=1", post,
            ),
            Route("/tap/stop", self._stop, "stop a listener's tap: ?listener=NAME", post),
        ]  # fmt: skip

    def resolve(self, name: str | None, listener: str, *, anywhere: bool = False) -> Path:
        """The file a tap writes: ``name`` inside the tap directory (``ValueError`` when it is not);
        ``anywhere``: an absolute ``name`` may be elsewhere (the configuration file is trusted, the admin's
        clients are not)."""
        if not name:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            name = f"{listener}-{stamp}-{os.getpid()}.pcapng"
        base = self.directory.resolve()
        target = (base / name).resolve()
        if anywhere:
            return target
        if target == base or base not in target.parents:
            raise ValueError(f"the tap writes only inside {base}: {name!r} is not")
        return target

    async def start(
        self, listener: str, path: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
        duration: float = DEFAULT_DURATION, redact: bool = False, max_buffered: int = DEFAULT_MAX_BUFFERED,
        anywhere: bool = False,
    ) -> Tap:
        """Start recording ``listener`` (``KeyError``: no such listener; ``ValueError``: a bad path or
        argument; ``FileExistsError``; ``RuntimeError``: it is being recorded already)."""
        runtime = self.listeners[listener]
        current = self.taps.get(listener)
        if current is not None and current.state == "recording":
            raise RuntimeError(f"listener {listener} is being recorded already, into {current.path}")
        if max_bytes < 1024 or duration <= 0:
            raise ValueError("max_bytes must be at least 1024 and duration positive")
        target = self.resolve(path, listener, anywhere=anywhere)

        def open_file() -> BinaryIO:
            target.parent.mkdir(parents=True, exist_ok=True)
            return open(target, "xb")  # closed by the writer thread

        file = await anyio.to_thread.run_sync(open_file)
        tap = Tap(
            runtime, target, file, self.stats_for(listener), max_bytes=max_bytes, duration=duration,
            redact=redact, max_buffered=max_buffered,
        )  # fmt: skip
        self.taps[listener] = tap
        tap.start(list(runtime.sessions))
        log.info("tap of listener %s into %s started", listener, target)
        return tap

    async def start_configured(self) -> None:
        """Start the taps listeners ask for in the configuration (``tap:``). One that cannot start (its file
        exists, its directory cannot be written) is logged: a capture is not worth refusing traffic for."""
        for name, runtime in self.listeners.items():
            wanted = getattr(runtime.config, "tap", None)
            if wanted is None:
                continue
            try:
                await self.start(
                    name, wanted.path, max_bytes=wanted.max_bytes, duration=wanted.duration, redact=wanted.redact,
                    anywhere=True,
                )  # fmt: skip
            except (OSError, ValueError, RuntimeError) as exc:
                log.error("listener %s: its configured tap cannot start: %s", name, exc)

    async def stop(self, listener: str, reason: str = "admin") -> Tap | None:
        tap = self.taps.get(listener)
        if tap is None:
            return None
        tap.stop(reason)
        await tap.wait()
        return tap

    async def stop_all(self, reason: str = "shutdown") -> None:
        for name in list(self.taps):
            await self.stop(name, reason)

    # -- admin handlers ---------------------------------------------------------------------------------

    def _status(self, request: AdminRequest) -> AdminResponse:
        from meshproxy.admin import AdminResponse

        return AdminResponse.json(
            {
                "directory": str(self.directory),
                "listeners": {
                    name: (self.taps[name].status() if name in self.taps else {"state": "off"})
                    for name in self.listeners
                },
            }
        )

    async def _start(self, request: AdminRequest) -> AdminResponse:
        from meshproxy.admin import AdminResponse

        listener = request.param("listener")
        if listener is None and len(self.listeners) == 1:
            listener = next(iter(self.listeners))
        if listener is None or listener not in self.listeners:
            return AdminResponse(400, f"name a listener: ?listener= one of {', '.join(self.listeners)}\n")
        try:
            max_bytes = int(request.param("max_bytes") or DEFAULT_MAX_BYTES)
            duration = float(request.param("duration") or DEFAULT_DURATION)
        except ValueError:
            return AdminResponse(400, "max_bytes must be a whole number and duration a number of seconds\n")
        redact = (request.param("redact") or "0").lower() in ("1", "true", "yes", "on")
        try:
            tap = await self.start(
                listener, request.param("path"), max_bytes=max_bytes, duration=duration, redact=redact
            )
        except ValueError as exc:
            return AdminResponse(400, f"{exc}\n")
        except FileExistsError:
            return AdminResponse(409, "that file exists already; the tap never overwrites one\n")
        except RuntimeError as exc:
            return AdminResponse(409, f"{exc}\n")
        except OSError as exc:
            return AdminResponse(500, f"cannot create the tap's file: {exc.strerror or exc}\n")
        return AdminResponse.json(tap.status())

    async def _stop(self, request: AdminRequest) -> AdminResponse:
        from meshproxy.admin import AdminResponse

        listener = request.param("listener")
        if listener is None and len(self.listeners) == 1:
            listener = next(iter(self.listeners))
        if listener is None or listener not in self.listeners:
            return AdminResponse(400, f"name a listener: ?listener= one of {', '.join(self.listeners)}\n")
        tap = await self.stop(listener)
        if tap is None:
            return AdminResponse(404, f"listener {listener} has no tap\n")
        return AdminResponse.json(tap.status())
