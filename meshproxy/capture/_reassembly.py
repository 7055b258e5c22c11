"""TCP stream reassembly, sans-IO: captured packets in, per-connection and per-direction byte streams out.

``TcpReassembler().feed(packet)`` returns the :data:`StreamEvent` s that packet made possible:
:class:`Opened` when a connection is first seen, :class:`Data` for bytes now in order, :class:`Gap` where bytes
are known to be missing (so a protocol decoder can re-synchronise on its next message boundary instead of
reading garbage as a header), :class:`Closed` per direction at FIN, RST or the end of the capture
(:meth:`TcpReassembler.finish`). Every event carries integer-nanosecond time and a stream offset; for each
direction the ``Data`` and ``Gap`` events tile the stream from offset 0 with no overlap and no hole, so
``sum of lengths`` is where the stream ends.

How the two sides are told apart (:attr:`Connection.roles`):

* ``"syn"``: the sender of a SYN without ACK is the client;
* ``"syn-ack"``: the SYN was not captured, the sender of the SYN+ACK is the server;
* ``"server port"``: no handshake seen, one port is among the ``server_ports`` the caller named;
* ``"port numbers"``: no handshake, no named port, but one port is below ``EPHEMERAL_PORTS_START`` (32768,
  where Linux starts handing out client ports; BSDs, macOS and Windows start at 49152) and the other is
  not: the low port is the server's (27017, 443, 8000, 50051 against a client's 5xxxx). A guess that is
  right for servers on their usual ports;
* ``"first sender"``: otherwise the first packet's sender is taken for the client. This is a guess (for a
  connection caught mid-way it is right only about half the time), so callers that know their servers'
  ports should name them.

What counts as missing: a segment beyond the next expected byte is held (bounded per direction by
``max_buffered``). The hole before it becomes a :class:`Gap` when the other side acknowledges data beyond the
hole (it was sent and received, the capture missed it, and it will never be retransmitted) and then
``reorder_window`` more TCP segments of the capture (of any connection) pass without filling it: captures
are not always in causal order (a file merging several interfaces, or ``-i any`` on a multi-core host, can
hold an ACK before the data it acknowledges). Also when the held bytes exceed the bound, at RST, and at the
end of the capture. Retransmitted and overlapping bytes are delivered once (the first copy wins). Sequence
numbers are compared modulo 2**32, so streams crossing the wraparound, and streams longer than 4 GiB,
reassemble correctly. Nothing is delivered past a FIN.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from meshproxy.capture._files import Packet
from meshproxy.capture._packets import Skipped, TcpSegment, decode_tcp

_MOD = 1 << 32
_HALF = 1 << 31
DEFAULT_MAX_BUFFERED = 4 << 20
"""Out-of-order bytes held per direction before the earliest hole is declared a gap (4 MiB)."""
EPHEMERAL_PORTS_START = 32768
"""Ports from here up are taken for clients' when nothing better tells the sides apart."""
DEFAULT_REORDER_WINDOW = 8
"""Segments of a connection that may still fill a hole after the peer acknowledged past it."""


class Direction(enum.StrEnum):
    CLIENT_TO_SERVER = "c2s"
    SERVER_TO_CLIENT = "s2c"

    @property
    def reverse(self) -> Direction:
        return Direction.SERVER_TO_CLIENT if self is Direction.CLIENT_TO_SERVER else Direction.CLIENT_TO_SERVER


@dataclass(slots=True, frozen=True)
class Connection:
    """One TCP connection: ``id`` numbers connections in the order they were first seen, so a 4-tuple reused
    later (a new SYN after the old connection closed) is a different connection."""

    id: int
    client: tuple[str, int]
    server: tuple[str, int]
    roles: str
    """How client and server were told apart: ``"syn"``, ``"syn-ack"``, ``"server port"``,
    ``"port numbers"`` or ``"first sender"`` (see the module documentation)."""

    @property
    def mid_stream(self) -> bool:
        """True when the capture did not see the handshake, so stream offset 0 is not the first byte sent."""
        return self.roles not in ("syn", "syn-ack")


@dataclass(slots=True, frozen=True)
class Opened:
    conn: Connection
    ts_ns: int


@dataclass(slots=True, frozen=True)
class Data:
    """Bytes of one direction, in order: ``data`` starts at stream ``offset``."""

    conn: Connection
    direction: Direction
    ts_ns: int
    offset: int
    data: bytes


@dataclass(slots=True, frozen=True)
class Gap:
    """``length`` bytes of one direction, starting at stream ``offset``, that the capture does not have.

    ``reason``: ``"lost"`` (acknowledged by the peer but never captured), ``"buffer limit"`` (given up on to
    bound memory), ``"not captured"`` (cut by the snapshot length), ``"reset"`` or ``"end of capture"``
    (the connection ended with the hole still open).
    """

    conn: Connection
    direction: Direction
    ts_ns: int
    offset: int
    length: int
    reason: str


@dataclass(slots=True, frozen=True)
class Closed:
    """One direction ended: ``how`` is ``"fin"``, ``"rst"``, ``"replaced"`` (a new SYN reused the 4-tuple) or
    ``"end of capture"`` (still open when the capture ended)."""

    conn: Connection
    direction: Direction
    ts_ns: int
    how: str


StreamEvent = Opened | Data | Gap | Closed


@dataclass(slots=True)
class _Half:
    """One direction's state. ``base`` is the absolute sequence number of stream ``offset``."""

    conn: Connection
    direction: Direction
    base: int | None = None
    isn: int | None = None
    offset: int = 0
    pending: dict[int, tuple[int, bytes, int]] = field(default_factory=dict)
    """stream offset -> (ts_ns, captured bytes, length the segment had)"""
    pending_bytes: int = 0
    starts: list[int] = field(default_factory=list)
    """A heap of the ``pending`` offsets (possibly with stale entries), so the first is found in O(log n)."""
    fin_at: int | None = None
    closed: bool = False
    acked_to: int | None = None
    """The peer acknowledged up to here, beyond a hole; the hole becomes a gap unless filled soon."""
    acked_since: int = 0
    """The reassembler's segment count when ``acked_to`` was first set."""

    def offset_of(self, seq: int) -> int:
        assert self.base is not None
        return self.offset + ((seq - self.base + _HALF) % _MOD) - _HALF

    def first_pending(self) -> int:
        """The lowest held offset (``pending`` must not be empty)."""
        starts = self.starts
        while starts[0] not in self.pending:
            heapq.heappop(starts)
        return starts[0]

    def hold(self, start: int, item: tuple[int, bytes, int]) -> None:
        if start not in self.pending:
            heapq.heappush(self.starts, start)
        self.pending[start] = item

    def advance(self, n: int) -> None:
        self.offset += n
        assert self.base is not None
        self.base = (self.base + n) % _MOD


@dataclass(slots=True)
class _Conn:
    conn: Connection
    key: tuple[tuple[str, int], tuple[str, int]]
    halves: dict[Direction, _Half]
    finished: bool = False
    last_ts: int = 0


class TcpReassembler:
    """Feed packets (or decoded :class:`TcpSegment` s) in capture order; get :data:`StreamEvent` s back.

    ``server_ports`` helps tell client from server when the handshake was not captured. ``max_buffered``
    bounds the out-of-order bytes held per direction. ``reorder_window`` is how many more TCP segments may
    pass after a hole was acknowledged before it is declared lost (0: at once).
    ``remember_closed`` bounds how many closed 4-tuples are remembered (so the last ACK of a close is not
    taken for a new connection). ``stats`` counts what was skipped and why (frames that
    are not TCP, fragments, duplicates, packets after a connection closed, ...).
    """

    def __init__(
        self,
        *,
        server_ports: Iterable[int] = (),
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        reorder_window: int = DEFAULT_REORDER_WINDOW,
        remember_closed: int = 4096,
    ) -> None:
        self.server_ports = frozenset(server_ports)
        self.max_buffered = max_buffered
        self.reorder_window = reorder_window
        self._segments = 0
        self._suspects: dict[int, tuple[_Half, _Conn]] = {}
        """Directions with an acknowledged hole, by ``id`` of their state: checked at every segment."""
        self.remember_closed = remember_closed
        self.stats: dict[str, int] = {}
        self._live: dict[tuple[tuple[str, int], tuple[str, int]], _Conn] = {}
        self._closed: OrderedDict[tuple[tuple[str, int], tuple[str, int]], _Conn] = OrderedDict()
        self._next_id = 0

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def feed(self, item: Packet | TcpSegment) -> list[StreamEvent]:
        """The events this packet makes possible (often none: a pure ACK, a duplicate, a held segment)."""
        if isinstance(item, Packet):
            decoded = decode_tcp(item)
            if isinstance(decoded, Skipped):
                self._count(decoded.reason)
                return []
            segment = decoded
        else:
            segment = item
        self._count("tcp segments")
        self._segments += 1
        events: list[StreamEvent] = []
        a, b = (segment.src, segment.sport), (segment.dst, segment.dport)
        key = (a, b) if a <= b else (b, a)
        state = self._live.get(key)
        if state is not None and segment.syn and not segment.has_ack:
            client_half = state.halves[Direction.CLIENT_TO_SERVER]
            if state.conn.client != a or client_half.isn is None or client_half.isn != segment.seq:
                # A new connection on a 4-tuple still open here (its end was not captured).
                self._end(state, segment.ts_ns, "replaced", events)
                state = None
        if state is None:
            old = self._closed.get(key)
            if old is not None and (not segment.syn or self._same_handshake(old, segment, a)):
                self._count("after close")
                return events
            if segment.rst:
                self._count("reset of unknown connection")
                return events
            state = self._open(segment, a, b, key, events)
        state.last_ts = segment.ts_ns
        direction = Direction.CLIENT_TO_SERVER if state.conn.client == a else Direction.SERVER_TO_CLIENT
        half = state.halves[direction]
        other = state.halves[direction.reverse]
        if segment.rst:
            self._end(state, segment.ts_ns, "rst", events)
            return events
        start_seq = segment.seq
        if segment.syn:
            if half.isn is None and half.base is None:
                half.isn = segment.seq
                half.base = (segment.seq + 1) % _MOD
            start_seq = (segment.seq + 1) % _MOD
        elif half.base is None:
            half.base = segment.seq
        if segment.has_ack and other.base is None and half.isn is not None:
            # This side's handshake was seen and it acknowledges the other side's first byte: the other
            # side's SYN (or SYN+ACK) was missed, but its stream still starts exactly there.
            other.base = segment.ack
        if segment.has_ack and other.base is not None and not other.closed:
            self._acknowledged(other, segment.ack, state)
        if not half.closed:
            start = half.offset_of(start_seq)
            if segment.fin and half.fin_at is None:
                half.fin_at = start + segment.length
                self._drop_beyond_fin(half)
            if segment.length:
                self._insert(half, start, segment, events)
            self._check_fin(half, segment.ts_ns, events)
        else:
            self._count("after close")
        if all(h.closed for h in state.halves.values()):
            self._retire(key, state)
        if self._suspects:
            self._check_suspects(segment.ts_ns, events)
        return events

    def _check_suspects(self, ts: int, events: list[StreamEvent]) -> None:
        for suspect, owner in list(self._suspects.values()):
            if self._segments - suspect.acked_since >= self.reorder_window:
                self._declare_lost(suspect, owner, ts, events)
                if owner.halves and all(h.closed for h in owner.halves.values()):
                    self._retire(owner.key, owner)

    def finish(self) -> list[StreamEvent]:
        """End of capture: every hole still open becomes a gap, held data is delivered, and every direction
        still open is closed (``how="end of capture"``)."""
        events: list[StreamEvent] = []
        for key, state in list(self._live.items()):
            self._end(state, state.last_ts, "end of capture", events)
            self._retire(key, state)
        return events

    # --- internals ---

    def _open(
        self,
        segment: TcpSegment,
        a: tuple[str, int],
        b: tuple[str, int],
        key: tuple[tuple[str, int], tuple[str, int]],
        events: list[StreamEvent],
    ) -> _Conn:
        if segment.syn and not segment.has_ack:
            client, server, roles = a, b, "syn"
        elif segment.syn:
            client, server, roles = b, a, "syn-ack"
        elif b[1] in self.server_ports and a[1] not in self.server_ports:
            client, server, roles = a, b, "server port"
        elif a[1] in self.server_ports and b[1] not in self.server_ports:
            client, server, roles = b, a, "server port"
        elif (a[1] < EPHEMERAL_PORTS_START) != (b[1] < EPHEMERAL_PORTS_START):
            client, server, roles = (b, a, "port numbers") if a[1] < EPHEMERAL_PORTS_START else (a, b, "port numbers")
        else:
            client, server, roles = a, b, "first sender"
        conn = Connection(self._next_id, client, server, roles)
        self._next_id += 1
        state = _Conn(conn, key, {d: _Half(conn, d) for d in Direction})
        self._live[key] = state
        self._closed.pop(key, None)
        events.append(Opened(conn, segment.ts_ns))
        return state

    @staticmethod
    def _same_handshake(old: _Conn, segment: TcpSegment, sender: tuple[str, int]) -> bool:
        """A SYN repeating a closed connection's initial sequence number is a copy of that SYN (a file with
        several interfaces may hold each packet twice, not in time order), not a new connection: a new one
        would have chosen a new initial sequence number."""
        direction = Direction.CLIENT_TO_SERVER if old.conn.client == sender else Direction.SERVER_TO_CLIENT
        return old.halves[direction].isn == segment.seq

    def _retire(self, key: tuple[tuple[str, int], tuple[str, int]], state: _Conn) -> None:
        """Forget a finished connection but remember its 4-tuple for a while, so the last ACK of its close
        is not taken for a new connection caught mid-way."""
        state.finished = True
        for half in state.halves.values():  # bytes beyond a FIN, never to be delivered
            half.pending.clear()
            half.starts.clear()
            half.pending_bytes = 0
            self._suspects.pop(id(half), None)
        if self._live.get(key) is state:
            del self._live[key]
        self._closed[key] = state
        self._closed.move_to_end(key)
        while len(self._closed) > self.remember_closed:
            self._closed.popitem(last=False)

    def _deliver(self, half: _Half, ts: int, captured: bytes, length: int, events: list[StreamEvent]) -> None:
        if half.fin_at is not None and half.offset + length > half.fin_at:
            # Held before the FIN was seen, claiming bytes past it: nothing follows a FIN.
            self._count("beyond fin")
            length = max(0, half.fin_at - half.offset)
            captured = captured[:length]
        if captured:
            events.append(Data(half.conn, half.direction, ts, half.offset, captured))
            half.advance(len(captured))
        if length > len(captured):
            events.append(Gap(half.conn, half.direction, ts, half.offset, length - len(captured), "not captured"))
            half.advance(length - len(captured))

    def _insert(self, half: _Half, start: int, segment: TcpSegment, events: list[StreamEvent]) -> None:
        captured, length = segment.payload, segment.length
        if half.fin_at is not None and start + length > half.fin_at:
            # Nothing follows a FIN: bytes claimed beyond it are bogus (or the FIN was), and are dropped.
            self._count("beyond fin")
            if start >= half.fin_at:
                return
            length = half.fin_at - start
            captured = captured[:length]
        end = start + length
        if end <= half.offset:
            self._count("retransmitted segments")
            return
        if start < half.offset:
            self._count("overlapping segments")
            cut = half.offset - start
            captured, length, start = captured[cut:], length - cut, half.offset
        if start == half.offset:
            self._deliver(half, segment.ts_ns, captured, length, events)
            self._drain(half, events)
            return
        held = half.pending.get(start)
        if held is not None:
            if held[2] >= length:
                self._count("retransmitted segments")
                return
            half.pending_bytes -= len(held[1])
        half.hold(start, (segment.ts_ns, captured, length))
        half.pending_bytes += len(captured)
        self._count("out-of-order segments")
        while half.pending_bytes > self.max_buffered and half.pending:
            self._skip_to(half, half.first_pending(), segment.ts_ns, "buffer limit", events)

    def _drop_beyond_fin(self, half: _Half) -> None:
        """Held segments that start at or after the FIN can never be delivered: let them go now, so every
        held segment is below the FIN and skipping to the first one always makes progress."""
        assert half.fin_at is not None
        for start in [s for s in half.pending if s >= half.fin_at]:
            self._count("beyond fin")
            half.pending_bytes -= len(half.pending.pop(start)[1])

    def _drain(self, half: _Half, events: list[StreamEvent]) -> None:
        """Deliver held segments that are now in order (trimming what was already delivered)."""
        while half.pending:
            start = half.first_pending()
            if start > half.offset:
                return
            heapq.heappop(half.starts)
            ts, captured, length = half.pending.pop(start)
            half.pending_bytes -= len(captured)
            if start + length <= half.offset:
                continue
            cut = half.offset - start
            self._deliver(half, ts, captured[cut:], length - cut, events)

    def _skip_to(self, half: _Half, target: int, ts: int, reason: str, events: list[StreamEvent]) -> None:
        if half.fin_at is not None:
            target = min(target, half.fin_at)
        if target > half.offset:
            events.append(Gap(half.conn, half.direction, ts, half.offset, target - half.offset, reason))
            half.advance(target - half.offset)
        self._drain(half, events)

    def _acknowledged(self, half: _Half, ack: int, owner: _Conn) -> None:
        """The peer has received ``half`` up to ``ack``: a hole below that was sent but not captured (or is
        still to come, out of causal order, within the reorder window)."""
        if not half.pending and half.fin_at is None:
            return
        acked = half.offset_of(ack)
        if acked <= half.offset:
            return
        if half.acked_to is not None and half.acked_to <= half.offset:
            half.acked_to = None  # the earlier hole was filled: this is a new one, with its own window
        if half.acked_to is None:
            half.acked_since = self._segments
            half.acked_to = acked
            self._suspects[id(half)] = (half, owner)
        else:
            half.acked_to = max(half.acked_to, acked)

    def _declare_lost(self, half: _Half, owner: _Conn, ts: int, events: list[StreamEvent]) -> None:
        acked, half.acked_to = half.acked_to, None
        self._suspects.pop(id(half), None)
        if half.closed or acked is None or acked <= half.offset:
            return
        limits = [acked]
        if half.pending:
            limits.append(half.first_pending())
        if half.fin_at is not None:
            limits.append(half.fin_at)
        self._skip_to(half, min(limits), ts, "lost", events)
        self._check_fin(half, ts, events)
        if half.pending and acked > half.offset:
            # A further hole below the acknowledged point: lost too, at the next check.
            half.acked_to = acked
            self._suspects[id(half)] = (half, owner)

    def _check_fin(self, half: _Half, ts: int, events: list[StreamEvent]) -> None:
        if half.fin_at is not None and not half.closed and half.offset >= half.fin_at:
            half.closed = True
            events.append(Closed(half.conn, half.direction, ts, "fin"))

    def _end(self, state: _Conn, ts: int, how: str, events: list[StreamEvent]) -> None:
        """Close both directions now: holes before held data become gaps, held data is delivered."""
        reason = "reset" if how == "rst" else how
        for direction in Direction:
            half = state.halves[direction]
            if half.closed:
                continue
            if half.acked_to is not None:
                self._declare_lost(half, state, ts, events)
                if half.closed:
                    continue
            while half.pending:
                before = (half.offset, len(half.pending))
                self._skip_to(half, half.first_pending(), ts, reason, events)
                if (half.offset, len(half.pending)) == before:  # cannot happen (see _drop_beyond_fin); never spin
                    break
            if half.fin_at is not None and half.fin_at > half.offset:
                self._skip_to(half, half.fin_at, ts, reason, events)
            half.closed = True
            events.append(Closed(state.conn, direction, ts, "fin" if half.fin_at is not None else how))


def reassemble(
    packets: Iterable[Packet | TcpSegment],
    *,
    server_ports: Iterable[int] = (),
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    reorder_window: int = DEFAULT_REORDER_WINDOW,
) -> Iterator[StreamEvent]:
    """All events of a capture, the end-of-capture ones included: ``reassemble(read_packets(path))``."""
    reassembler = TcpReassembler(server_ports=server_ports, max_buffered=max_buffered, reorder_window=reorder_window)
    for packet in packets:
        yield from reassembler.feed(packet)
    yield from reassembler.finish()
