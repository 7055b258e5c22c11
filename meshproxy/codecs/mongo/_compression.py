"""OP_COMPRESSED payloads: bounded decompression and compression with the driver ecosystem's libraries.

The declared ``uncompressedSize`` comes from the peer, so it is checked against the decoder's limit before
anything is allocated, and every decompressor is asked for at most that many bytes (plus one, to notice a
payload that inflates beyond its declaration). zlib is the standard library's; snappy is cramjam's (what
python-snappy uses underneath); zstd is ``compression.zstd`` on Python 3.14+ and ``backports.zstd`` before,
as pymongo does.
"""

from __future__ import annotations

import sys
import zlib
from types import ModuleType

import cramjam

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo._messages import Compressor


def _zstd() -> ModuleType:
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


def _snappy_length(data: bytes) -> int:
    """The varint uncompressed length that starts a raw snappy block."""
    result = shift = 0
    for index in range(min(5, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result
        shift += 7
    raise DecodeError("bad_compressed", "snappy block has no valid length")


def decompress(compressor: int, data: bytes, uncompressed_size: int, limit: int) -> bytes:
    """Decompress ``data`` that declares ``uncompressed_size`` bytes, never producing more than ``limit``."""
    if uncompressed_size < 0 or uncompressed_size > limit:
        raise DecodeError(
            "decompressed_too_large",
            f"OP_COMPRESSED declares {uncompressed_size} uncompressed bytes; the limit is {limit}",
        )
    try:
        if compressor == Compressor.NOOP:
            out = data
        elif compressor == Compressor.ZLIB:
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, uncompressed_size + 1)
        elif compressor == Compressor.SNAPPY:
            declared = _snappy_length(data)
            if declared != uncompressed_size:
                raise DecodeError(
                    "bad_compressed", f"snappy block holds {declared} bytes, header says {uncompressed_size}"
                )
            out = bytes(cramjam.snappy.decompress_raw(data))
        elif compressor == Compressor.ZSTD:
            zstd = _zstd()
            decompressor = zstd.ZstdDecompressor()
            out = decompressor.decompress(data, max_length=uncompressed_size + 1)
        else:
            raise DecodeError("unknown_compressor", f"compressor id {compressor}")
    except DecodeError:
        raise
    except Exception as exc:  # zlib.error, cramjam's and zstd's errors
        raise DecodeError("bad_compressed", f"{Compressor(compressor).name.lower()}: {exc}") from None
    if len(out) != uncompressed_size:
        raise DecodeError(
            "bad_compressed",
            f"payload decompresses to {len(out)}{'+' if len(out) > uncompressed_size else ''} bytes, "
            f"header says {uncompressed_size}",
        )
    return out


def compress(compressor: int, data: bytes, *, zlib_level: int = -1) -> bytes:
    """Compress ``data`` the way drivers do for OP_COMPRESSED."""
    if compressor == Compressor.NOOP:
        return data
    if compressor == Compressor.ZLIB:
        return zlib.compress(data, zlib_level)
    if compressor == Compressor.SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if compressor == Compressor.ZSTD:
        result: bytes = _zstd().compress(data)
        return result
    raise ValueError(f"unknown compressor id {compressor}")
