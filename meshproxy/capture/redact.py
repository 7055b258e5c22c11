"""Redaction for the tap: values out, structure, field names and sizes kept.

A redacted capture must still decode (``meshproxy decode``) to the same operations with the same sizes, and
must not hold the values the applications exchanged. Each redactor takes one direction of one connection,
bytes in, bytes out, in order; it holds back an incomplete message until it is whole. What it cannot parse it
does not guess at: from there on every byte of that direction is replaced by zeros (**fail closed**), so a
parse failure can cost structure, never leak a value.

- **MongoDB** (``MongoRedactor``): each message is framed by ``MongoDecoder``; its BSON documents are
  rewritten in place: strings (and regexes, code, symbols) become ``'x'`` of the same byte length, numbers,
  dates, timestamps, ObjectIds, decimals and booleans become zero, binary data zero bytes (subtype kept).
  Types and field names stay, so every size stays. Kept as they are, because they are protocol, not data,
  and the decoder and replay need them: a command's first value when it is not a document or array (the
  collection name, a cursor id), ``$db``, ``collection``, ``ok``, ``code``, ``codeName``, ``cursor.id``,
  ``cursor.ns``, ``batchSize`` and the cursor id lists of ``killCursors``; the namespace of legacy opcodes.
  ``errmsg`` is redacted (a duplicate key error quotes the key). OP_MSG checksums are recomputed.
  OP_COMPRESSED is decompressed, redacted and compressed again with the same compressor: the uncompressed
  size is kept, the compressed size changes (redacted values compress better).
- **DynamoDB** (``HttpRedactor``): HTTP/1.1 heads are kept except ``Authorization``, ``X-Amz-Security-Token``,
  ``X-Amz-Content-Sha256`` and ``X-Amz-Crc32``, whose values are blanked to the same length (a signature or
  a hash of the body would let a reader confirm a guessed value). JSON bodies keep every key and all their
  structure; the values of ``S``, ``N`` and ``B`` (and the members of ``SS``, ``NS``, ``BS``) become ``x``,
  ``0`` or ``A`` of the same length, and ``message`` strings (error texts can quote values) become ``x``.
  ``Content-Length`` is therefore unchanged. A chunked or compressed body cannot be rewritten in place: it
  fails closed.
- **gRPC** (``GrpcRedactor``): the HTTP/2 frames are kept; the bytes of every gRPC message inside DATA frames
  become zeros, their 5-byte length prefixes (compressed flag and length) are kept. **Headers are kept as
  they are**, metadata included (``authorization`` too): HPACK compresses each header block against a table
  the whole connection builds, so a header cannot be changed without re-encoding every block after it.
- **Anything else** (plain TCP), and every connection the tap caught mid-way (open before it started: no
  message boundary is known there, and a guess could let a value through): zeros.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from typing import Any

import crc32c

from meshproxy.codecs.mongo import MongoDecoder, OpCode
from meshproxy.codecs.mongo._compression import compress, decompress

__all__ = ["GrpcRedactor", "HttpRedactor", "MongoRedactor", "Redactor", "ZeroRedactor", "redactor_for"]

_INT32 = struct.Struct("<i")
_UINT32 = struct.Struct("<I")


class Redactor:
    """One direction of one connection: ``feed(bytes) -> bytes`` ready to write; ``finish()`` what was held."""

    def __init__(self) -> None:
        self.failed = False
        self._held = bytearray()

    def feed(self, data: bytes) -> bytes:
        if self.failed:
            return bytes(len(data))
        self._held += data
        try:
            return self._take()
        except Exception as exc:  # anything it cannot take: fail closed, never pass a value through
            return self.fail(str(exc))

    def fail(self, why: str = "") -> bytes:
        """Give up on this direction: what is held, and everything after, is written as zeros."""
        self.failed = True
        out = bytes(len(self._held))
        self._held.clear()
        return out

    def skip(self) -> bytes:
        """Bytes of this direction were dropped: the stream cannot be followed any more."""
        return self.fail("bytes dropped")

    def finish(self) -> bytes:
        return self.fail() if self._held else b""

    def _take(self) -> bytes:
        raise NotImplementedError


class ZeroRedactor(Redactor):
    """For a protocol the tap does not parse: every byte zero."""

    def _take(self) -> bytes:
        return self.fail()


# -- MongoDB ------------------------------------------------------------------------------------------------

KEEP: dict[str, Any] = {}
"""A rule: keep the value as it is."""
_COMMAND_RULES: dict[str, Any] = {
    "$db": KEEP, "collection": KEEP, "ok": KEEP, "code": KEEP, "codeName": KEEP, "batchSize": KEEP,
    "cursor": {"id": KEEP, "ns": KEEP},
    "cursors": KEEP, "cursorsKilled": KEEP, "cursorsNotFound": KEEP, "cursorsAlive": KEEP, "cursorsUnknown": KEEP,
}  # fmt: skip
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}
_EMPTY = frozenset({0x06, 0x0A, 0x7F, 0xFF})
_STRINGS = frozenset({0x02, 0x0D, 0x0E})


def _cstring_end(buf: bytearray, pos: int) -> int:
    end = buf.index(0, pos)
    return end + 1


def _fill(buf: bytearray, start: int, stop: int, byte: int) -> None:
    if stop < start:
        raise ValueError("negative length")
    buf[start:stop] = bytes([byte]) * (stop - start)


def redact_document(buf: bytearray, start: int, rules: dict[str, Any] | None = None, *, command: bool = False) -> int:
    """Redact the BSON document at ``start`` in place; return where it ends. ``rules`` name the keys whose
    values are kept (``KEEP``) or redacted by rules of their own (a nested dict); ``command``: the first
    element's value is kept when it is not a document or array (a command's collection or cursor id)."""
    length: int = _INT32.unpack_from(buf, start)[0]
    end = start + length
    if length < 5 or end > len(buf) or buf[end - 1] != 0:
        raise ValueError("bad document length")
    pos = start + 4
    first = True
    while pos < end - 1:
        kind = buf[pos]
        name_end = _cstring_end(buf, pos + 1)
        name = bytes(buf[pos + 1 : name_end - 1]).decode("utf-8", "replace")
        pos = name_end
        keep = rules.get(name) if rules is not None else None
        if first and command and kind not in (0x03, 0x04):
            keep = KEEP
        first = False
        pos = _redact_value(buf, kind, pos, end, keep)
    if pos != end - 1:
        raise ValueError("document overruns its length")
    return end


def _redact_value(buf: bytearray, kind: int, pos: int, end: int, rule: dict[str, Any] | None) -> int:
    """Redact one value (unless ``rule`` is ``KEEP``); return where it ends."""
    keep = rule is KEEP
    if kind in _FIXED:
        stop = pos + _FIXED[kind]
        if not keep:
            _fill(buf, pos, stop, 0)
    elif kind in _STRINGS:
        size = _INT32.unpack_from(buf, pos)[0]
        stop = pos + 4 + size
        if size < 1 or stop > end:
            raise ValueError("bad string length")
        if not keep:
            _fill(buf, pos + 4, stop - 1, ord("x"))
    elif kind in (0x03, 0x04):
        stop = pos + _INT32.unpack_from(buf, pos)[0] if keep else redact_document(buf, pos, rule)
    elif kind == 0x05:
        size = _INT32.unpack_from(buf, pos)[0]
        stop = pos + 5 + size
        if size < 0 or stop > end:
            raise ValueError("bad binary length")
        if not keep:
            subtype = buf[pos + 4]
            _fill(buf, pos + 5 + (4 if subtype == 2 else 0), stop, 0)  # subtype 2 starts with its own length
    elif kind in _EMPTY:
        stop = pos
    elif kind == 0x0B:
        middle = _cstring_end(buf, pos)
        stop = _cstring_end(buf, middle)
        if not keep:
            _fill(buf, pos, middle - 1, ord("x"))
            _fill(buf, middle, stop - 1, ord("x"))
    elif kind == 0x0C:
        size = _INT32.unpack_from(buf, pos)[0]
        stop = pos + 4 + size + 12
        if not keep:
            _fill(buf, pos + 4, pos + 3 + size, ord("x"))
            _fill(buf, stop - 12, stop, 0)
    elif kind == 0x0F:
        total = _INT32.unpack_from(buf, pos)[0]
        stop = pos + total
        if not keep:
            size = _INT32.unpack_from(buf, pos + 4)[0]
            _fill(buf, pos + 8, pos + 7 + size, ord("x"))
            redact_document(buf, pos + 8 + size)
    else:
        raise ValueError(f"unknown BSON type 0x{kind:02x}")
    if stop > end:
        raise ValueError("value overruns its document")
    return stop


def _redact_documents(buf: bytearray, pos: int, end: int) -> None:
    while pos < end:
        pos = redact_document(buf, pos)
    if pos != end:
        raise ValueError("documents overrun")


def redact_mongo_message(raw: bytes) -> bytes:
    """One whole, uncompressed Mongo message with its values redacted (same length)."""
    buf = bytearray(raw)
    op_code = _INT32.unpack_from(buf, 12)[0]
    end = len(buf)
    if op_code == OpCode.MSG:
        flags = _UINT32.unpack_from(buf, 16)[0]
        stop = end - 4 if flags & 1 else end
        pos = 20
        while pos < stop:
            kind = buf[pos]
            pos += 1
            if kind == 0:
                pos = redact_document(buf, pos, _COMMAND_RULES, command=True)
            else:
                size = _INT32.unpack_from(buf, pos)[0]
                section_end = pos + size
                _redact_documents(buf, _cstring_end(buf, pos + 4), section_end)
                pos = section_end
        if flags & 1:
            _UINT32.pack_into(buf, stop, crc32c.crc32c(bytes(buf[:stop])))
    elif op_code == OpCode.QUERY:
        pos = _cstring_end(buf, 20) + 8
        pos = redact_document(buf, pos, _COMMAND_RULES, command=True)
        if pos < end:
            redact_document(buf, pos)
    elif op_code == OpCode.REPLY:
        count = _INT32.unpack_from(buf, 32)[0]
        if count == 1:
            redact_document(buf, 36, _COMMAND_RULES, command=True)
        else:
            _redact_documents(buf, 36, end)
    elif op_code == OpCode.INSERT:
        _redact_documents(buf, _cstring_end(buf, 20), end)
    elif op_code in (OpCode.UPDATE, OpCode.DELETE):
        _redact_documents(buf, _cstring_end(buf, 20) + 4, end)
    elif op_code in (OpCode.GET_MORE, OpCode.KILL_CURSORS):
        pass  # namespaces, counts and cursor ids only
    else:
        raise ValueError(f"opcode {op_code}")
    return bytes(buf)


class MongoRedactor(Redactor):
    """Whole messages out as they complete; the incomplete one is held in the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self._decoder = MongoDecoder(max_message_size=64 * 1024 * 1024, verify_checksum=False, validate_documents=False)

    def feed(self, data: bytes) -> bytes:
        if self.failed:
            return bytes(len(data))
        before = self._decoder.buffered
        try:
            out = []
            for message in self._decoder.feed(data):
                raw = message.raw
                if _INT32.unpack_from(raw, 12)[0] == OpCode.COMPRESSED:
                    out.append(_redact_compressed(raw))
                else:
                    out.append(redact_mongo_message(raw))
            return b"".join(out)
        except Exception:  # anything it cannot take (bad framing, BSON, compression): fail closed
            self.failed = True
            return bytes(before + len(data))  # all of this read, and what was held: zeros

    def fail(self, why: str = "") -> bytes:
        held = 0 if self.failed else self._decoder.buffered
        self.failed = True
        return bytes(held)

    def finish(self) -> bytes:
        return self.fail()


def _redact_compressed(raw: bytes) -> bytes:
    header = raw[:16]
    original, size, compressor = struct.unpack_from("<iiB", raw, 16)
    inner = decompress(compressor, raw[25:], size, 64 * 1024 * 1024)
    redacted = redact_mongo_message(header[:12] + _INT32.pack(original) + inner)[16:]
    body = struct.pack("<iiB", original, size, compressor) + compress(compressor, redacted)
    return _INT32.pack(16 + len(body)) + header[4:] + body


# -- DynamoDB (HTTP/1.1 + JSON) ---------------------------------------------------------------------------

_BLANKED_HEADERS = {
    b"authorization": b"x", b"x-amz-security-token": b"x", b"x-amz-content-sha256": b"0", b"x-amz-crc32": b"0",
}  # fmt: skip
_VALUE_FILL = {"S": ord("x"), "N": ord("0"), "B": ord("A"), "message": ord("x"), "Message": ord("x")}
_SET_FILL = {"SS": ord("x"), "NS": ord("0"), "BS": ord("A")}
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')
MAX_HEAD = 64 * 1024
_START_LINE = re.compile(rb"HTTP/1\.[01] \d{3}( |$)|[A-Z]+ \S+ HTTP/1\.[01]$")


def redact_json(body: bytes) -> bytes:
    """A DynamoDB JSON body with attribute values (and error messages) blanked, same length."""
    json.loads(body)  # not JSON: the caller fails closed
    buf = bytearray(body)
    stack: list[list[Any]] = []  # frames: ["obj", current key, expecting a key] or ["arr", fill byte or None]
    for match in _JSON_TOKEN.finditer(body):
        token = match.group()
        first = token[:1]
        top = stack[-1] if stack else None
        if first in (b"{", b"["):
            fill = None
            if top is not None and top[0] == "obj" and first == b"[":
                fill = _SET_FILL.get(top[1])
            stack.append(["obj", None, True] if first == b"{" else ["arr", fill])
        elif first in (b"}", b"]"):
            stack.pop()
        elif first == b":":
            if top is not None:
                top[2] = False
        elif first == b",":
            if top is not None and top[0] == "obj":
                top[2] = True
        elif first == b'"' and top is not None:
            if top[0] == "obj" and top[2]:
                top[1] = json.loads(token)
                continue
            fill = _VALUE_FILL.get(top[1]) if top[0] == "obj" else top[1]
            if fill is not None:
                _fill(buf, match.start() + 1, match.end() - 1, fill)
    return bytes(buf)


class HttpRedactor(Redactor):
    """HTTP/1.1 messages with Content-Length bodies (DynamoDB's); see the module docstring."""

    def _take(self) -> bytes:
        out = bytearray()
        held = self._held
        while True:
            head_end = held.find(b"\r\n\r\n")
            if head_end < 0:
                if len(held) > MAX_HEAD:
                    raise ValueError("HTTP head too large")
                break
            head = bytes(held[: head_end + 4])
            lines = head.split(b"\r\n")
            length = 0
            start = lines[0]
            if not _START_LINE.match(start):
                raise ValueError("not an HTTP/1.1 request or status line")
            status_line = start.startswith(b"HTTP/")
            new_lines = [start]
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                lower = name.strip().lower()
                if lower == b"content-length":
                    length = int(value.strip())
                elif lower == b"transfer-encoding" or (lower == b"content-encoding" and value.strip() != b"identity"):
                    raise ValueError("chunked or compressed HTTP body")
                fill = _BLANKED_HEADERS.get(lower)
                if fill is not None and sep:
                    stripped = value.strip()
                    lead = len(value) - len(value.lstrip())
                    value = value[:lead] + fill * len(stripped) + value[lead + len(stripped) :]
                    line = name + sep + value
                new_lines.append(line)
            if status_line and start[9:10] == b"1":
                length = 0  # 100 Continue: no body
            total = head_end + 4 + length
            if len(held) < total:
                break
            body = bytes(held[head_end + 4 : total])
            out += b"\r\n".join(new_lines)
            out += redact_json(body) if body else b""
            del held[:total]
        return bytes(out)


# -- gRPC (HTTP/2) --------------------------------------------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 16 * 1024 * 1024


class GrpcRedactor(Redactor):
    """HTTP/2 frames kept, gRPC message bytes zeroed; see the module docstring."""

    def __init__(self, *, client: bool) -> None:
        super().__init__()
        self._preface = len(_PREFACE) if client else 0
        self._streams: dict[int, list[int]] = {}
        """Stream id -> [prefix bytes still to keep, message bytes still to zero]."""

    def _take(self) -> bytes:
        out = bytearray()
        held = self._held
        if self._preface:
            if len(held) < self._preface:
                return b""
            if bytes(held[: self._preface]) != _PREFACE:
                raise ValueError("no HTTP/2 preface")
            out += held[: self._preface]
            del held[: self._preface]
            self._preface = 0
        while len(held) >= 9:
            length = int.from_bytes(held[:3], "big")
            if length > MAX_FRAME:
                raise ValueError("HTTP/2 frame too large")
            if len(held) < 9 + length:
                break
            frame = bytearray(held[: 9 + length])
            del held[: 9 + length]
            if frame[3] == 0:  # DATA
                start, stop = 9, 9 + length
                if frame[4] & 0x8:  # PADDED
                    stop -= frame[9]
                    start += 1
                self._zero_messages(int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF, frame, start, stop)
            if (frame[3] in (0, 1) and frame[4] & 0x1) or frame[3] == 3:
                # END_STREAM on DATA or HEADERS, or RST_STREAM: nothing more of this stream in this direction
                stream = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
                self._streams.pop(stream, None)
                self._streams.pop(-stream - 1, None)
            out += frame
        return bytes(out)

    def _zero_messages(self, stream: int, frame: bytearray, pos: int, stop: int) -> None:
        state = self._streams.setdefault(stream, [5, 0])
        prefix = self._streams.setdefault(-stream - 1, [])  # the prefix bytes seen so far
        while pos < stop:
            if state[0]:
                prefix.append(frame[pos])
                state[0] -= 1
                pos += 1
                if not state[0]:
                    state[1] = int.from_bytes(bytes(prefix[1:5]), "big")
                    prefix.clear()
                    if not state[1]:
                        state[0] = 5
                continue
            take = min(state[1], stop - pos)
            _fill(frame, pos, pos + take, 0)
            pos += take
            state[1] -= take
            if not state[1]:
                state[0] = 5


def redactor_for(kind: str, *, client: bool) -> Redactor:
    """The redactor for a session of ``kind`` (``Relay.kind``), for the client's or the server's direction."""
    factories: dict[str, Callable[[], Redactor]] = {
        "mongo": MongoRedactor,
        "dynamo": HttpRedactor,
        "grpc": lambda: GrpcRedactor(client=client),
    }
    return factories.get(kind, ZeroRedactor)()
