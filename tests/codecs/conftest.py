"""Shared material of the codec tests: the byte streams recorded from real pymongo and SecantusDB
(``tests/fixtures/record_mongo_streams.py``), and messages built by pymongo's own encoder.

Helpers are session-scoped fixtures returning functions, so hypothesis tests can use them too.

(No ``__init__.py`` here: a package named ``codecs`` would shadow the standard library's ``codecs`` when
pytest imports it from ``tests/``.)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import crc32c
import pytest
from bson import CodecOptions
from pymongo import message as pymongo_message
from pymongo.compression_support import SnappyContext, ZlibContext, ZstdContext

from meshproxy.codecs.mongo import MongoDecoder, MongoMessage

STREAMS = Path(__file__).parent.parent / "fixtures" / "mongo_streams"
SCENARIOS = sorted(p.name.split(".")[0] for p in STREAMS.glob("*.c2s.bin"))
OPTS: CodecOptions[Any] = CodecOptions()


def _recorded(scenario: str, direction: str) -> bytes:
    return (STREAMS / f"{scenario}.{direction}.bin").read_bytes()


def _decode_all(data: bytes) -> list[MongoMessage]:
    decoder = MongoDecoder()
    messages = decoder.feed(data)
    assert decoder.buffered == 0, "a recorded stream ends on a message boundary"
    return messages


def _pymongo_op_msg(
    command: Mapping[str, Any], db: str = "app", *, flags: int = 0, compressor: str | None = None
) -> bytes:
    """The bytes pymongo itself sends for ``command``: OP_MSG, or OP_COMPRESSED with ``compressor``."""
    contexts: dict[str | None, Any] = {
        None: None,
        "zlib": ZlibContext(-1),
        "zstd": ZstdContext(),
        "snappy": SnappyContext(),
    }
    _, data, _, _ = pymongo_message._op_msg(flags, dict(command), db, None, OPTS, ctx=contexts[compressor])
    return bytes(data)


def _checksummed(raw: bytes) -> bytes:
    """A real OP_MSG with the checksumPresent bit set, its length fixed and its CRC-32C appended."""
    flags = struct.unpack_from("<I", raw, 16)[0] | 1
    unsigned = struct.pack("<i", len(raw) + 4) + raw[4:16] + struct.pack("<I", flags) + raw[20:]
    return unsigned + struct.pack("<I", crc32c.crc32c(unsigned))


@pytest.fixture(scope="session")
def recorded() -> Callable[[str, str], bytes]:
    """``recorded("find_getmore", "c2s")``: one recorded direction of one scenario."""
    return _recorded


@pytest.fixture(scope="session")
def decode_all() -> Callable[[bytes], list[MongoMessage]]:
    """Decode a whole stream in one ``feed`` and check nothing is left over."""
    return _decode_all


@pytest.fixture(scope="session")
def pymongo_op_msg() -> Callable[..., bytes]:
    return _pymongo_op_msg


@pytest.fixture(scope="session")
def checksummed() -> Callable[[bytes], bytes]:
    return _checksummed
