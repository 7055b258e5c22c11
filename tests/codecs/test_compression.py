"""OP_COMPRESSED payloads: pymongo's compressors in, bounded decompression out.

A peer declares the uncompressed size; the decoder must neither trust it for an allocation nor let a
payload inflate past it (a compression bomb).
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
from pymongo.compression_support import SnappyContext, ZlibContext, ZstdContext

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo import Compressor, MongoDecoder, MongoMessage, OpCompressed, compress, decompress

Decode = Callable[[bytes], list[MongoMessage]]
Recorded = Callable[[str, str], bytes]

PYMONGO_CONTEXTS = {
    Compressor.ZLIB: ZlibContext(-1),
    Compressor.ZSTD: ZstdContext(),
    Compressor.SNAPPY: SnappyContext(),
}
LIMIT = 48_000_000 - 16


def _recorded_body(recorded: Recorded, decode_all: Decode) -> bytes:
    """The body (after the header) of a recorded 7 KB insert batch."""
    return decode_all(recorded("insert_many", "c2s"))[1].raw[16:]


@pytest.mark.parametrize("compressor", list(PYMONGO_CONTEXTS))
def test_what_pymongo_compresses_decompresses_to_the_same_bytes(
    compressor: Compressor, recorded: Recorded, decode_all: Decode
) -> None:
    body = _recorded_body(recorded, decode_all)
    compressed = PYMONGO_CONTEXTS[compressor].compress(body)
    assert decompress(compressor, compressed, len(body), LIMIT) == body


@pytest.mark.parametrize("compressor", list(Compressor))
def test_what_we_compress_pymongo_s_libraries_read(
    compressor: Compressor, recorded: Recorded, decode_all: Decode
) -> None:
    body = _recorded_body(recorded, decode_all)
    compressed = compress(compressor, body)
    assert decompress(compressor, compressed, len(body), LIMIT) == body
    if compressor == Compressor.ZLIB:
        assert zlib.decompress(compressed) == body
    elif compressor == Compressor.SNAPPY:
        import snappy

        assert snappy.uncompress(compressed) == body
    elif compressor == Compressor.ZSTD:
        from backports import zstd

        assert zstd.decompress(compressed) == body


@pytest.mark.parametrize("compressor", list(Compressor))
def test_declared_size_over_the_limit_fails_before_decompressing(compressor: Compressor) -> None:
    with pytest.raises(DecodeError) as error:
        decompress(compressor, b"\x00" * 10, 2**31 - 1, LIMIT)
    assert error.value.reason == "decompressed_too_large"


def test_negative_declared_size_is_refused() -> None:
    with pytest.raises(DecodeError) as error:
        decompress(Compressor.ZLIB, zlib.compress(b"abc"), -1, LIMIT)
    assert error.value.reason == "decompressed_too_large"


@pytest.mark.parametrize("compressor", list(PYMONGO_CONTEXTS))
@pytest.mark.parametrize("delta", [-1, 1])
def test_payload_that_does_not_decompress_to_its_declared_size_is_refused(
    compressor: Compressor, delta: int, recorded: Recorded, decode_all: Decode
) -> None:
    body = _recorded_body(recorded, decode_all)
    compressed = PYMONGO_CONTEXTS[compressor].compress(body)
    with pytest.raises(DecodeError) as error:
        decompress(compressor, compressed, len(body) + delta, LIMIT)
    assert error.value.reason == "bad_compressed"


@pytest.mark.parametrize("compressor", list(PYMONGO_CONTEXTS))
def test_corrupt_payload_is_a_decode_error_not_a_library_exception(
    compressor: Compressor, recorded: Recorded, decode_all: Decode
) -> None:
    body = _recorded_body(recorded, decode_all)
    compressed = bytearray(PYMONGO_CONTEXTS[compressor].compress(body))
    compressed[:8] = b"\xff" * 8  # a frame header no library accepts
    with pytest.raises(DecodeError) as error:
        decompress(compressor, bytes(compressed), len(body), LIMIT)
    assert error.value.reason == "bad_compressed"


def test_unknown_compressor_id_is_refused() -> None:
    with pytest.raises(DecodeError) as error:
        decompress(7, b"abc", 3, LIMIT)
    assert error.value.reason == "unknown_compressor"


@pytest.mark.parametrize(
    ("compressor", "bomb"),
    [
        (Compressor.ZLIB, lambda data: zlib.compress(data, 9)),
        (Compressor.ZSTD, lambda data: ZstdContext.compress(data)),
    ],
)
def test_compression_bomb_is_caught_with_bounded_memory(
    compressor: Compressor, bomb: Callable[[bytes], bytes]
) -> None:
    payload = bomb(b"\x00" * 200_000_000)  # 200 MB of zeros: a few hundred KB compressed
    assert len(payload) < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as error:
            decompress(compressor, payload, 1_000, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.value.reason == "bad_compressed"
    assert peak < 1_000_000


def test_snappy_block_whose_own_length_disagrees_with_the_header_is_refused_before_inflating() -> None:
    payload = SnappyContext.compress(b"\x00" * 10_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as error:
            decompress(Compressor.SNAPPY, payload, 1_000, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.value.reason == "bad_compressed"
    assert peak < 100_000


def test_snappy_block_without_a_valid_length_varint_is_refused() -> None:
    with pytest.raises(DecodeError) as error:
        decompress(Compressor.SNAPPY, b"\xff\xff\xff\xff\xff\xff", 10, LIMIT)
    assert error.value.reason == "bad_compressed"


def test_op_compressed_declaring_a_huge_size_fails_in_the_decoder_with_small_peak_allocation(
    pymongo_op_msg: Callable[..., bytes],
) -> None:
    data = bytearray(pymongo_op_msg({"ping": 1}, "admin", compressor="zlib"))
    struct.pack_into("<i", data, 20, 2_000_000_000)  # uncompressedSize
    decoder = MongoDecoder()
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as error:
            decoder.feed(bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.value.reason == "decompressed_too_large"
    assert peak < 100_000


def test_op_compressed_whose_payload_inflates_past_its_declaration_fails_in_the_decoder(
    pymongo_op_msg: Callable[..., bytes],
) -> None:
    data = bytearray(pymongo_op_msg({"find": "users", "filter": {"name": "x" * 5000}}, compressor="zstd"))
    struct.pack_into("<i", data, 20, 100)
    with pytest.raises(DecodeError) as error:
        MongoDecoder().feed(bytes(data))
    assert error.value.reason == "bad_compressed"


def test_op_compressed_wrapping_op_compressed_is_refused(pymongo_op_msg: Callable[..., bytes]) -> None:
    data = bytearray(pymongo_op_msg({"ping": 1}, "admin", compressor="snappy"))
    struct.pack_into("<i", data, 16, 2012)  # originalOpcode
    with pytest.raises(DecodeError) as error:
        MongoDecoder().feed(bytes(data))
    assert error.value.reason == "invalid_compressed"


def test_op_compressed_with_an_unknown_compressor_id_is_refused(pymongo_op_msg: Callable[..., bytes]) -> None:
    data = bytearray(pymongo_op_msg({"ping": 1}, "admin", compressor="zlib"))
    data[24] = 9
    with pytest.raises(DecodeError) as error:
        MongoDecoder().feed(bytes(data))
    assert error.value.reason == "unknown_compressor"


def test_op_compressed_whose_inner_message_is_bad_bson_is_refused(pymongo_op_msg: Callable[..., bytes]) -> None:
    plain = bytearray(pymongo_op_msg({"ping": 1}, "admin"))
    plain[21] = 0xFF  # the body document's length prefix
    inner = bytes(plain[16:])
    header = struct.pack("<iiii", 16 + 9 + len(inner), 1, 0, 2012) + struct.pack("<iiB", 2013, len(inner), 0)
    with pytest.raises(DecodeError) as error:
        MongoDecoder().feed(header + inner)
    assert error.value.reason != "bad_compressed"  # the payload itself was fine: the BSON inside is not


def test_noop_compressed_message_decodes_to_its_inner_message(pymongo_op_msg: Callable[..., bytes]) -> None:
    plain = pymongo_op_msg({"ping": 1}, "admin")
    inner = plain[16:]
    header = struct.pack("<iiii", 16 + 9 + len(inner), 1, 0, 2012) + struct.pack("<iiB", 2013, len(inner), 0)
    (message,) = MongoDecoder().feed(header + inner)
    assert isinstance(message, OpCompressed)
    assert message.inner.raw[16:] == inner
