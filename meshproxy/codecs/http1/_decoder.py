"""Sans-IO HTTP/1.1 decoders: bytes of one direction of one connection in, whole messages out.

Parsing is llhttp's (Node's parser, through ``httptools``), for speed on a proxy's hot path: measured
here on a recorded boto3 PutItem request (800 bytes), this decoder takes about 5.6 µs per request (2 µs of
it in llhttp and its header callbacks), h11 34 µs for the same request (``receive_data`` to
``EndOfMessage`` on a fresh connection). llhttp is callback-driven and does not say where
in its input a message ended, so this module does the *framing* itself (where the head ends, how long the
body is) and hands llhttp exactly one message at a time: the head always (method, target, version,
headers, keep-alive, and llhttp's strict checks of every token), and a chunked body too (de-chunking, and a
second opinion on where the body ends: if llhttp does not finish the message exactly where the framing
here says it ends, the two disagree about the framing, which is what request smuggling exploits, and the
message is refused). That gives every message its exact wire bytes (``raw``) for byte-for-byte forwarding.

Contract (as ``MongoDecoder``'s): ``feed(bytes) -> list[message]``; a partial message stays buffered; a
malformed one raises ``DecodeError`` and poisons the decoder. Limits are checked before buffering beyond
them: a head may not grow past ``max_header_size`` without its blank line, a declared ``Content-Length``
over ``max_body_size`` fails as soon as the head is parsed, and chunk sizes are counted as they arrive.
"""

from __future__ import annotations

from collections import deque

import httptools

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.http1._framing import (
    UNTIL_CLOSE,
    ChunkScanner,
    body_length,
)
from meshproxy.codecs.http1._messages import Headers, HttpMessage, HttpRequest, HttpResponse, header_value

DEFAULT_MAX_HEADER_SIZE = 64 * 1024
"""The whole request head (request line + headers): AWS Application Load Balancers accept 64 KiB of
request headers ("Whole request header: 64K" in their quotas), so no client that works through AWS's own
HTTP front ends sends more. (h11 defaults to 16 KiB, Node to 16 KiB, nginx to 4 x 8 KiB.)"""

DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024
"""DynamoDB's largest requests: BatchWriteItem fails when "the total request size exceeds 16 MB" and
BatchGetItem returns "up to 16 MB of data" (botocore's dynamodb 2012-08-10 service model documentation).
The JSON wire form of a maximal batch can be somewhat larger than DynamoDB's own size accounting; a codec
that must pass such batches raises the limit."""

_PARSER_ERROR_SMUGGLING = ("content-length", "transfer-encoding")
_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)
"""``HttpParserUpgrade`` (CONNECT, or ``Connection: upgrade``) is not a subclass of ``HttpParserError``."""


class _Head:
    """httptools callbacks for one message: collects what llhttp reports."""

    __slots__ = (
        "body", "complete", "headers", "headers_done", "keep_alive", "method", "parser", "reason", "status",
        "target", "trailers", "version",
    )

    def __init__(self) -> None:
        self.target = b""
        self.reason = b""
        self.headers: Headers = []
        self.trailers: Headers = []
        self.headers_done = False
        self.body: list[bytes] = []
        self.complete = False
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self.method = b""
        self.version = ""
        self.status = 0
        self.keep_alive = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self.headers_done else self.headers).append((name, value))

    def on_headers_complete(self) -> None:
        # Read here, not later: a message without a body is complete as soon as its head is, and llhttp
        # then resets its state (keep-alive flags included) for the next message.
        self.headers_done = True
        parser = self.parser
        assert parser is not None
        self.version = parser.get_http_version()
        self.keep_alive = parser.should_keep_alive()
        if isinstance(parser, httptools.HttpRequestParser):
            self.method = parser.get_method()
        else:
            self.status = parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def _parser_error(error: Exception) -> DecodeError:
    text = str(error)
    if isinstance(error, httptools.HttpParserUpgrade) or "upgrade" in text.lower():
        return DecodeError("unsupported", "protocol upgrade (CONNECT or Upgrade) is not relayed as HTTP/1.1")
    if any(word in text.lower() for word in _PARSER_ERROR_SMUGGLING):
        return DecodeError("smuggling", text)
    return DecodeError("bad_request", text or type(error).__name__)


class _Http1Decoder:
    _is_request = True

    __slots__ = (
        "_before_error", "_buffer", "_chunks", "_error", "_head", "_head_end", "_keep_alive", "_length", "_parser",
        "_scan_from", "max_body_size", "max_header_size",
    )

    def __init__(self, max_header_size: int, max_body_size: int) -> None:
        if max_header_size < 16 or max_body_size < 0:
            raise ValueError("max_header_size must be at least 16 bytes and max_body_size not negative")
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self._buffer = bytearray()
        self._error: DecodeError | None = None
        self._before_error: list[HttpMessage] = []
        self._reset()

    def _reset(self) -> None:
        self._head: _Head | None = None
        self._parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self._head_end = -1  # length of the head (where the body starts, from the message start), once parsed
        self._scan_from = 0  # where the search for the blank line resumes, from the message start
        self._length = 0  # body bytes (Content-Length), or UNTIL_CLOSE
        self._chunks: ChunkScanner | None = None
        self._keep_alive = False

    @property
    def buffered(self) -> int:
        """Bytes held for a message that is not complete yet."""
        return len(self._buffer)

    def unconsumed(self) -> bytes:
        """Bytes received but not returned as messages (after an error: from the bad message on)."""
        return bytes(self._buffer)

    def decoded_before_error(self) -> list[HttpMessage]:
        """The whole messages that preceded the bad one in the ``feed`` call that raised (returned once)."""
        messages, self._before_error = self._before_error, []
        return messages

    def _fail(self, error: DecodeError, messages: list[HttpMessage]) -> DecodeError:
        self._error = error
        self._before_error = messages
        return error

    def _feed(self, data: bytes) -> list[HttpMessage]:
        if self._error is not None:
            raise self._error
        # Work on the caller's bytes when nothing is buffered (the common case: one read, whole
        # messages), so a message that arrives in one read is sliced once and never copied into the buffer.
        buffer = self._buffer
        view: bytes | bytearray
        if buffer:
            buffer += data
            view = buffer
        else:
            view = data
        messages: list[HttpMessage] = []
        pos = 0
        size = len(view)
        try:
            while pos < size:
                if self._head_end < 0:
                    # RFC 9112 2.2: a server ignores at least one empty line received before a request line.
                    while view.startswith(b"\r\n", pos):
                        pos += 2
                    if pos >= size or not self._read_head(view, pos):
                        break
                end = self._body_end(view, pos)
                if end < 0:
                    break
                messages.append(self._finish(view, pos, end))
                self._reset()
                pos = end
        except DecodeError as error:
            self._keep(view, pos)
            raise self._fail(error, messages) from None
        self._keep(view, pos)
        return messages

    def _keep(self, view: bytes | bytearray, pos: int) -> None:
        """Leave exactly the bytes from ``pos`` on (the message in progress) in the buffer."""
        if view is self._buffer:
            del self._buffer[:pos]
        elif pos < len(view):
            self._buffer += view[pos:]

    def _read_head(self, view: bytes | bytearray, pos: int) -> bool:
        """Parse the head of the message at ``pos`` once its blank line is there; False: need more."""
        found = view.find(b"\r\n\r\n", pos + max(0, self._scan_from - 3))
        if found < 0:
            if len(view) - pos > self.max_header_size:
                raise DecodeError("head_too_large", f"no end of the head in {self.max_header_size} bytes")
            self._scan_from = len(view) - pos
            return False
        head_end = found + 4 - pos
        if head_end > self.max_header_size:
            raise DecodeError("head_too_large", f"a {head_end}-byte head; the limit is {self.max_header_size}")
        callbacks = _Head()
        parser = callbacks.parser = self._new_parser(callbacks)
        try:
            parser.feed_data(view[pos : found + 4])
        except _PARSER_ERRORS as error:
            # llhttp refuses obsolete line folding (RFC 9112 5.2) itself; named here, off the hot path
            # (looking for it in every head would cost a third of the decode).
            if view.find(b"\n ", pos, found) >= 0 or view.find(b"\n\t", pos, found) >= 0:
                raise DecodeError("smuggling", "obsolete line folding (RFC 9112 5.2) in the head") from None
            raise _parser_error(error) from None
        finally:
            callbacks.parser = None  # no reference cycle: the pair is freed without the cyclic GC
        if not callbacks.headers_done:
            raise DecodeError("bad_request", "the head did not parse as a whole HTTP/1.1 head")
        self._head = callbacks
        self._parser = parser
        self._head_end = head_end
        self._frame(parser, callbacks)
        self._keep_alive = callbacks.keep_alive and self._length != UNTIL_CLOSE
        return True

    def _frame(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, head: _Head) -> None:
        length = body_length(head.headers, self._bodiless(parser), self._is_request)
        if length is None:
            self._chunks = ChunkScanner(self.max_body_size, self.max_header_size)
        elif length == UNTIL_CLOSE:
            self._length = UNTIL_CLOSE
        elif length > self.max_body_size:
            raise DecodeError("body_too_large", f"Content-Length {length}; the limit is {self.max_body_size}")
        else:
            self._length = length

    def _body_end(self, view: bytes | bytearray, pos: int) -> int:
        """Where the message at ``pos`` ends in ``view``, or -1 while its body is incomplete."""
        if self._chunks is not None:
            return self._chunks.scan(view, pos, pos + self._head_end)
        if self._length == UNTIL_CLOSE:
            if len(view) - pos - self._head_end > self.max_body_size:
                raise DecodeError("body_too_large", f"the body exceeds {self.max_body_size} bytes")
            return -1
        end = pos + self._head_end + self._length
        return end if len(view) >= end else -1

    def _finish(self, view: bytes | bytearray, pos: int, end: int) -> HttpMessage:
        head, parser = self._head, self._parser
        assert head is not None
        assert parser is not None
        raw = view if (pos == 0 and end == len(view) and type(view) is bytes) else bytes(view[pos:end])
        chunked = self._chunks is not None
        if chunked:
            try:
                parser.feed_data(raw[self._head_end :])
            except _PARSER_ERRORS as error:
                raise _parser_error(error) from None
            if not head.complete:
                raise DecodeError("smuggling", "llhttp does not end the chunked body where its framing ends")
            body = b"".join(head.body)
        else:
            body = raw[self._head_end :]
        return self._message(parser, head, raw, body, chunked)

    def _end_of_stream(self) -> list[HttpMessage]:
        if self._error is not None:
            raise self._error
        if self._head_end >= 0 and self._length == UNTIL_CLOSE and self._chunks is None:
            message = self._finish(self._buffer, 0, len(self._buffer))
            self._buffer.clear()
            self._reset()
            return [message]
        if self._buffer:
            detail = f"the stream ended inside a message ({len(self._buffer)} bytes)"
            raise self._fail(DecodeError("truncated", detail), [])
        return []

    # Specialised by the request and response decoders.
    def _new_parser(self, head: _Head) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def _bodiless(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser) -> bool:
        raise NotImplementedError

    def _message(
        self,
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
        head: _Head,
        raw: bytes,
        body: bytes,
        chunked: bool,
    ) -> HttpMessage:
        raise NotImplementedError


class Http1RequestDecoder(_Http1Decoder):
    """Requests from a client. Pipelined requests in one ``feed`` come out in order."""

    __slots__ = ()

    def __init__(
        self, max_header_size: int = DEFAULT_MAX_HEADER_SIZE, max_body_size: int = DEFAULT_MAX_BODY_SIZE
    ) -> None:
        super().__init__(max_header_size, max_body_size)

    def feed(self, data: bytes) -> list[HttpRequest]:
        """Take the next bytes of the stream; return every request they complete, in order."""
        return self._feed(data)  # type: ignore[return-value]

    def end_of_stream(self) -> list[HttpRequest]:
        """The client closed its side: raises ``DecodeError("truncated")`` if a request was cut short."""
        return self._end_of_stream()  # type: ignore[return-value]

    @property
    def awaiting_continue(self) -> bool:
        """The request being received has sent its head with ``Expect: 100-continue`` and not all its body.

        Such a client may wait (botocore does, for a while) for an interim ``100 Continue`` before sending the
        body; whoever owns the connection answers it, since this decoder only returns whole requests.
        """
        head = self._head
        if head is None:
            return False
        value = header_value(head.headers, b"expect")
        return value is not None and value.strip().lower() == b"100-continue"

    def _new_parser(self, head: _Head) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(head)

    def _bodiless(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser) -> bool:
        return False

    def _message(
        self,
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
        head: _Head,
        raw: bytes,
        body: bytes,
        chunked: bool,
    ) -> HttpRequest:
        assert isinstance(parser, httptools.HttpRequestParser)
        return HttpRequest(
            head.method, head.target, head.version, head.headers, body, raw,
            self._keep_alive, chunked, head.trailers,
        )


class Http1ResponseDecoder(_Http1Decoder):
    """Responses from a server.

    Whether a response has a body depends on the request it answers (RFC 9112 6.3: none after HEAD), which
    the bytes of the response do not say. Call ``expect_response(head=True)`` for each HEAD request sent,
    in order, and ``expect_response()`` (or nothing) for the others: a final (non-1xx) response consumes
    one expectation; an interim 1xx response (``100 Continue``) is returned as a message of its own and
    consumes none. With no expectation recorded a response is assumed to answer a non-HEAD request.
    A response framed by neither header is read until the connection closes: ``end_of_stream()``.
    """

    __slots__ = ("_expect_head",)
    _is_request = False

    def __init__(
        self, max_header_size: int = DEFAULT_MAX_HEADER_SIZE, max_body_size: int = DEFAULT_MAX_BODY_SIZE
    ) -> None:
        super().__init__(max_header_size, max_body_size)
        self._expect_head: deque[bool] = deque()

    def expect_response(self, head: bool = False) -> None:
        """Record that a request was sent; ``head=True`` when it was a HEAD (its response has no body)."""
        self._expect_head.append(head)

    def feed(self, data: bytes) -> list[HttpResponse]:
        """Take the next bytes of the stream; return every response they complete, in order."""
        return self._feed(data)  # type: ignore[return-value]

    def end_of_stream(self) -> list[HttpResponse]:
        """The server closed: completes a response read until close; ``"truncated"`` if one was cut short."""
        return self._end_of_stream()  # type: ignore[return-value]

    def _new_parser(self, head: _Head) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(head)

    def _bodiless(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser) -> bool:
        status = self._head.status if self._head is not None else 0
        if status == 101:
            raise DecodeError("unsupported", "101 Switching Protocols: the stream is no longer HTTP/1.1")
        if 100 <= status < 200:
            return True
        head_request = self._expect_head.popleft() if self._expect_head else False
        return head_request or status in (204, 304)

    def _message(
        self,
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
        head: _Head,
        raw: bytes,
        body: bytes,
        chunked: bool,
    ) -> HttpResponse:
        assert isinstance(parser, httptools.HttpResponseParser)
        return HttpResponse(
            head.status, head.reason, head.version, head.headers, body, raw,
            self._keep_alive, chunked, head.trailers,
        )
