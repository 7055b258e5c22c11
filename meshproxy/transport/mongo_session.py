"""The Mongo proxy session: codec + filter chain + relay, for one client connection.

Requests are decoded as they arrive, turned into ``MongoOperation`` objects, passed through the filters and
forwarded as whole messages: the original bytes when no filter changed anything, ``encode(new)`` when one
did. Replies are matched to their operation by ``responseTo``; a reply flagged ``moreToCome`` (exhaust
cursors, streamed ``hello``) keeps its operation open under the reply's own ``requestID``, which is what
the next streamed reply answers.

Only whole messages are forwarded, never a prefix: a filter may still rewrite a message (the ``hello``
topology rewrite) or refuse it, and a malformed message is never half-delivered.

Order is kept per connection: when a filter delays a request, the connection's later requests wait
behind it, as they would at a slow server.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo import MongoDecoder, MongoMessage, encode, error_reply
from meshproxy.filters.mongo.api import Delay, LocalReply, MongoFilter, MongoOperation
from meshproxy.transport.relay import Relay

if TYPE_CHECKING:
    import asyncio

    from meshproxy.transport.listener import ListenerRuntime

log = logging.getLogger("meshproxy.mongo")

_now_ns = time.monotonic_ns
_OVERFLOW_REQUEST_IDS = itertools.count(0x4D4F0000)


def _join(chunks: list[bytes]) -> bytes:
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class MongoSession(Relay):
    """A Mongo client connection through the proxy."""

    kind = "mongo"

    def __init__(self, listener: ListenerRuntime, connection_id: int) -> None:
        super().__init__(listener, connection_id)
        config, stats = listener.mongo_config, listener.mongo_stats
        assert config is not None, "a Mongo session on a listener of another protocol"
        assert stats is not None
        self.config = config
        limit = config.max_message_size
        self.request_decoder = MongoDecoder(max_message_size=limit)
        # Replies come from the upstream this proxy chose: their framing is checked, and filters validate
        # the parts of a reply they read (a reply summary decodes it), so the top-level walk is skipped.
        self.reply_decoder = MongoDecoder(max_message_size=limit, validate_documents=False)
        self.filters: list[MongoFilter] = listener.mongo_filters
        self.mongo_stats = stats
        self.pending: dict[int, MongoOperation] = {}
        self.passthrough = False
        """Set after a decode error under the ``passthrough`` policy: bytes flow untouched from then on."""
        self._held: list[MongoMessage] | None = None
        """Requests waiting behind a delayed one (None when nothing is delayed)."""
        self._held_passthrough: list[bytes] = []
        """Undecoded bytes (``passthrough``) that arrived while requests were held: they go after them."""
        self._stream_key: dict[int, int] = {}
        """Streamed replies (``moreToCome``): the requestID that opened the stream -> the key it is pending
        under now (the last reply's requestID). See ``_track_stream``."""
        self._stream_origin: dict[int, int] = {}
        """The reverse: the key a stream is pending under -> the requestID that opened it."""
        self._eof_after_held = False
        """The client half-closed while requests were held: pass the EOF upstream once they are sent."""
        self._delay_handle: asyncio.TimerHandle | None = None
        self._draining = False

    # -- requests -------------------------------------------------------------------------------------

    def on_open(self) -> None:
        for f in self.filters:
            f.on_connection_open(self.info)

    def on_downstream_data(self, data: bytes) -> None:
        if self.passthrough:
            self._send_passthrough_upstream(data)
            return
        try:
            messages = self.request_decoder.feed(data)
        except DecodeError as error:
            self._decode_failed(error, self.request_decoder, "request")
            return
        if messages:
            self._forward_requests(messages)

    def _forward_requests(self, messages: list[MongoMessage]) -> None:
        if self._held is not None:
            self._held.extend(messages)
            return
        self._process_requests(messages)

    def _process_requests(self, messages: list[MongoMessage]) -> None:
        now = _now_ns()
        out: list[bytes] = []
        for index, message in enumerate(messages):
            op = MongoOperation(self.info, message, now)
            delay = self._run_request_filters(op, 0, out)
            if delay is not None:
                if out:
                    self.send_upstream(_join(out))
                self._hold(op, delay, messages[index + 1 :])
                return
        if out:
            self.send_upstream(_join(out))

    def _run_request_filters(self, op: MongoOperation, first: int, out: list[bytes]) -> tuple[int, float] | None:
        """Run filters ``first..`` on ``op``; forward, answer locally, or return (filter index, delay)."""
        filters = self.filters
        for index in range(first, len(filters)):
            try:
                action = filters[index].on_request(op)
            except Exception as error:  # a filter's bug must not lose the client's operation
                self._filter_failed(filters[index], error)
                continue
            if action is None:
                continue
            if isinstance(action, Delay):
                return index, action.seconds
            if isinstance(action, LocalReply):
                self._answer_locally(op, action, index)
                return None
        request = op.request
        if op.expects_reply and not op.is_monitoring and not self.cluster.request_allowed():
            # Circuit breaker: a retryable network-class error the driver knows (HostUnreachable), so it backs
            # off or retries elsewhere; handshakes and monitoring pass, so its view of the server stays true.
            reply = error_reply(
                op.plain_request, code=6, code_name="HostUnreachable",
                errmsg="upstream overflow: circuit breaker max_requests (meshproxy)",
                request_id=next(_OVERFLOW_REQUEST_IDS) & 0x7FFFFFFF,
            )  # fmt: skip
            self._answer_locally(op, LocalReply(reply), len(self.filters) - 1)
            return None
        if op.expects_reply:
            self.pending[request.header.request_id] = op
            self.requests_started()
        out.append(encode(request) if op.request_replaced else request.raw)
        return None

    def _answer_locally(self, op: MongoOperation, action: LocalReply, index: int) -> None:
        op.response = action.reply
        op.local_reply = True
        op.replies = 1
        op.finished_ns = _now_ns()
        self._run_response_filters(op, self.filters[: index + 1])
        response = op.response
        assert response is not None
        self.send_downstream(encode(response) if op.response_replaced else response.raw)
        self._maybe_drain_close()

    def _hold(self, op: MongoOperation, position: tuple[int, float], rest: list[MongoMessage]) -> None:
        filter_index, seconds = position
        self._held = list(rest)
        self._delay_handle = self.loop.call_later(seconds, self._release, op, filter_index + 1)

    def _release(self, op: MongoOperation, next_filter: int) -> None:
        """A delay elapsed: finish ``op``'s chain, then the requests that queued behind it."""
        self._delay_handle = None
        if self.closed:
            return
        held, self._held = self._held or [], None
        out: list[bytes] = []
        position = self._run_request_filters(op, next_filter, out)
        if out:
            self.send_upstream(_join(out))
        if position is not None:
            self._hold(op, position, held)
        elif held:
            self._process_requests(held)
        if self._held is None and self._held_passthrough:
            data = b"".join(self._held_passthrough)
            self._held_passthrough.clear()
            self.send_upstream(data)
        if self._held is None and self._eof_after_held:
            self._eof_after_held = False
            super().eof_received()
        self._maybe_drain_close()

    # -- replies --------------------------------------------------------------------------------------

    def on_upstream_data(self, data: bytes) -> None:
        if self.passthrough:
            self.send_downstream(data)
            return
        try:
            messages = self.reply_decoder.feed(data)
        except DecodeError as error:
            self._decode_failed(error, self.reply_decoder, "reply")
            return
        if messages:
            self._process_replies(messages)

    def _process_replies(self, messages: list[MongoMessage]) -> None:
        now = _now_ns()
        pending = self.pending
        out: list[bytes] = []
        for message in messages:
            header = message.header
            key = header.response_to
            op = pending.pop(key, None)
            if op is None and self._stream_key:
                key = self._stream_key.get(key, key)
                op = pending.pop(key, None)
            if op is None:
                self.mongo_stats.unexpected_reply.inc()
                out.append(message.raw)
                continue
            op.response = message
            op.response_replaced = False
            op.replies += 1
            op.finished_ns = now
            self._run_response_filters(op, self.filters)
            more_to_come = op.more_to_come
            if more_to_come or self._stream_origin:
                self._track_stream(key, header.request_id, more_to_come)
            if more_to_come:
                pending[header.request_id] = op
            else:
                self.requests_finished(1)
            response = op.response
            out.append(encode(response) if op.response_replaced else response.raw)
        self.send_downstream(_join(out))
        if self._draining:
            self._maybe_drain_close()

    def _track_stream(self, matched_key: int, request_id: int, more_to_come: bool) -> None:
        """Remember where a stream of replies started, so that its next reply is matched either way.

        The wire protocol says each reply after a ``moreToCome`` reply answers the previous reply's
        requestID. Some servers (SecantusDB 0.7, for exhaust cursors and streamed ``hello``) keep answering
        the requestID that opened the stream instead. Unmatched, such replies would pass unseen: no stats,
        and a streamed ``hello`` would reach the driver unrewritten, sending it to the server's own address.
        """
        origin = self._stream_origin.pop(matched_key, matched_key)
        if more_to_come:
            self._stream_origin[request_id] = origin
            self._stream_key[origin] = request_id
        else:
            self._stream_key.pop(origin, None)

    def _run_response_filters(self, op: MongoOperation, filters: list[MongoFilter]) -> None:
        for f in reversed(filters):
            try:
                f.on_response(op)
            except Exception as error:  # e.g. a reply whose BSON is broken deep inside: still forward it
                self._filter_failed(f, error)

    # -- errors, drain, close -------------------------------------------------------------------------

    def _filter_failed(self, mongo_filter: MongoFilter, error: Exception) -> None:
        self.mongo_stats.filter_error.inc()
        log.error(
            "listener %s: connection %d: filter %s failed (%s: %s); the message is forwarded unchanged",
            self.listener.name, self.connection_id, type(mongo_filter).__name__, type(error).__name__, error,
            exc_info=not isinstance(error, DecodeError),
        )

    def _decode_failed(self, error: DecodeError, decoder: MongoDecoder, direction: str) -> None:
        self.mongo_stats.decoding_error.inc()
        policy = self.config.on_decode_error
        log.warning(
            "listener %s: connection %d from %s: undecodable %s (%s); %s",
            self.listener.name, self.connection_id, self.info.client, direction, error,
            "passing the rest of the connection through" if policy == "passthrough" else "closing it",
        )
        if policy == "passthrough":
            # Good messages that arrived in the same read as the bad one go their normal way first; then
            # this connection stops decoding both ways and the undecoded bytes pass on as they are.
            decoded = decoder.decoded_before_error()
            if decoded:
                if direction == "request":
                    self._forward_requests(decoded)
                else:
                    self._process_replies(decoded)
            self.passthrough = True
            leftover = decoder.unconsumed()
            if leftover:
                if direction == "request":
                    self._send_passthrough_upstream(leftover)
                else:
                    self.send_downstream(leftover)
            return
        self.close(local=True)

    def _send_passthrough_upstream(self, data: bytes) -> None:
        """Undecoded client bytes keep their place behind requests a fault delay still holds."""
        if self._held is not None:
            self._held_passthrough.append(data)
        else:
            self.send_upstream(data)

    def eof_received(self) -> bool:
        """The client finished sending. Bytes still buffered are a message that will never be complete:
        a truncated message is bad input like any other (one ``decoding_error``, the policy applies).
        Requests a fault delay still holds go upstream before the EOF does."""
        if not self.passthrough and self.request_decoder.buffered:
            held = self.request_decoder.buffered
            error = DecodeError("truncated", f"the client closed its side {held} bytes into a message")
            self._decode_failed(error, self.request_decoder, "request")
            if self.closed:
                return False
        if self._held is not None:
            # An EOF passed on now would overtake the held requests: the server would never see them.
            self._eof_after_held = True
            return True
        return super().eof_received()

    @property
    def busy(self) -> bool:
        if self._held is not None:
            return True
        if self.passthrough:
            # Replies now pass undecoded: an operation pending at the switch can never be seen to end, so
            # the connection is as opaque as a TCP relay, which a drain does not wait for either.
            return False
        # Awaitable hello / streamed monitoring checks can wait for many seconds by design: they are not
        # work a drain has to wait for.
        return any(not op.is_monitoring for op in self.pending.values())

    def drain(self) -> None:
        self._draining = True
        self._maybe_drain_close()

    def _maybe_drain_close(self) -> None:
        if self._draining and not self.closed and not self.busy:
            self.mongo_stats.cx_drain_close.inc()
            self.close(local=True)

    def on_close(self, *, local: bool) -> None:
        if self._delay_handle is not None:
            self._delay_handle.cancel()
        active = sum(1 for op in self.pending.values() if not op.is_monitoring) + len(self._held or ())
        for f in self.filters:
            f.on_connection_close(self.info, active_operations=active, local=local)
        if self.pending:
            self.requests_finished(len(self.pending))
        self.pending.clear()
        self._stream_key.clear()
        self._stream_origin.clear()
        self._held = None
        self._held_passthrough.clear()
