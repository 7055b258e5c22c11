"""Wire compression through the sidecar: pymongo(compressors=[X]) -> sidecar -> CompressingStage -> SecantusDB.

SecantusDB does not negotiate compression, so ``CompressingStage`` plays the server's part: the driver
really sends OP_COMPRESSED and receives compressed replies. The sidecar must see inside both directions
(its stats count the commands in compressed messages) and forward the compressed bytes untouched, which
the stage proves by decompressing exactly as many requests as the sidecar counted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo import CursorType

from meshproxy.proxy import ProxyThread

from .compressing_stage import CompressingStage
from .support import PREFIX, client_for, sidecar_config

pytestmark = pytest.mark.integration

P = f"mongo.{PREFIX}"
COMPRESSORS = ("zlib", "zstd", "snappy")


@pytest.fixture
def staged(secantus: tuple[str, int]) -> Iterator[tuple[ProxyThread, CompressingStage]]:
    with CompressingStage(secantus) as stage, ProxyThread(sidecar_config(stage.address)) as proxy:
        yield proxy, stage


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_crud_with_compression_crosses_the_sidecar_compressed_and_is_counted_by_compressor(
    staged: tuple[ProxyThread, CompressingStage], compressor: str
) -> None:
    proxy, stage = staged
    name = f"squeezed_{compressor}"
    text = "the quick brown fox jumps over the lazy dog " * 20
    with client_for(proxy.listener_address(PREFIX), compressors=[compressor]) as mongo:
        coll = mongo.compression_it[name]
        coll.drop()
        coll.insert_many([{"_id": i, "text": text} for i in range(40)])
        assert coll.find_one({"_id": 3}) == {"_id": 3, "text": text}
        assert coll.update_many({"_id": {"$lt": 10}}, {"$set": {"text": "short"}}).modified_count == 10
        assert coll.delete_one({"_id": 39}).deleted_count == 1
        assert sorted(d["_id"] for d in coll.find({"text": "short"})) == list(range(10))
        assert [d["_id"] for d in coll.find({}, sort=[("_id", 1)], batch_size=5)] == list(range(39))
        # An exhaust cursor: one compressed getMore answered by a stream of compressed replies.
        exhaust = coll.find({}, sort=[("_id", 1)], batch_size=5, cursor_type=CursorType.EXHAUST)
        assert [d["_id"] for d in exhaust] == list(range(39))
        assert mongo.address == proxy.listener_address(PREFIX)

    values = proxy.stats.values()
    counted = values[f"{P}.op_compressed.{compressor}"]
    assert counted > 0
    assert values[f"{P}.op_compressed"] == counted
    for other in set(COMPRESSORS) - {compressor}:
        assert values.get(f"{P}.op_compressed.{other}", 0) == 0
    # The stage negotiated X, decompressed every request the sidecar counted, and compressed each reply.
    assert stage.negotiated[compressor] >= 1
    assert stage.decompressed == {compressor: counted}
    # Each compressed request got one compressed reply, except the exhaust getMore, which got a stream
    # of 8: six batches of 5 and one of 4 flagged moreToCome, then an empty last batch (cursor id 0).
    assert stage.compressed == {compressor: counted + 7}
    assert stage.errors == []
    # The sidecar read the commands inside the compressed messages.
    namespace = f"{P}.db.compression_it.collection.{name}.cmd"
    assert values[f"{namespace}.insert.total"] == 1
    assert values[f"{namespace}.update.total"] == 1
    assert values[f"{namespace}.delete.total"] == 1
    assert values[f"{namespace}.find.total"] == 4
    assert values[f"{P}.unexpected_reply"] == 0
    # 39 documents in batches of 5: find brings 5, then six full getMores and a last one of 4 that ends it.
    assert values[f"{namespace}.getMore.total"] == 7 + 1  # and the exhaust cursor's single getMore
    assert values[f"{P}.decoding_error"] == 0


def test_the_first_offered_compressor_the_server_supports_is_the_one_used(
    staged: tuple[ProxyThread, CompressingStage],
) -> None:
    proxy, stage = staged
    with client_for(proxy.listener_address(PREFIX), compressors=["zstd", "zlib"]) as mongo:
        mongo.compression_it.order.insert_one({"_id": 1})
        assert mongo.compression_it.order.find_one() == {"_id": 1}

    values = proxy.stats.values()
    assert values[f"{P}.op_compressed.zstd"] > 0
    assert values.get(f"{P}.op_compressed.zlib", 0) == 0
    assert set(stage.decompressed) == {"zstd"}


def test_a_client_without_compressors_sends_nothing_compressed(
    staged: tuple[ProxyThread, CompressingStage],
) -> None:
    proxy, stage = staged
    with client_for(proxy.listener_address(PREFIX)) as mongo:
        mongo.compression_it.plain.insert_one({"_id": 1})
        assert mongo.compression_it.plain.find_one() == {"_id": 1}

    assert proxy.stats.values()[f"{P}.op_compressed"] == 0
    assert stage.negotiated == {}
    assert sum(stage.decompressed.values()) == 0
