"""Wire compression through the sidecar: pymongo(compressors=X) -> meshproxy -> stage -> SecantusDB.

SecantusDB does not negotiate compression; ``CompressionStage`` plays that part of a server, so the
driver really sends OP_COMPRESSED and gets compressed replies back. The sidecar must decode both
directions (its stats see inside the compressed messages) and forward them untouched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshproxy.proxy import ProxyThread

from .compression_stage import CompressionStage
from .support import PREFIX, client_for, sidecar_config

pytestmark = pytest.mark.integration


@pytest.fixture
def staged_sidecar(secantus: tuple[str, int]) -> Iterator[tuple[ProxyThread, CompressionStage]]:
    with CompressionStage(secantus) as stage, ProxyThread(sidecar_config(stage.address)) as proxy:
        yield proxy, stage


@pytest.mark.parametrize("compressor", ["zlib", "zstd", "snappy"])
def test_compressed_crud_through_the_sidecar_is_counted_by_compressor(
    staged_sidecar: tuple[ProxyThread, CompressionStage], compressor: str
) -> None:
    proxy, stage = staged_sidecar
    collection_name = f"zipped_{compressor}"
    with client_for(proxy.listener_address(PREFIX), compressors=compressor) as mongo:
        docs = mongo.compression[collection_name]
        docs.drop()
        docs.insert_many([{"_id": i, "body": "lorem ipsum " * 40} for i in range(30)])
        assert docs.find_one({"_id": 7}) == {"_id": 7, "body": "lorem ipsum " * 40}
        assert docs.update_one({"_id": 7}, {"$set": {"body": "short"}}).modified_count == 1
        assert docs.delete_one({"_id": 8}).deleted_count == 1
        assert [d["_id"] for d in docs.find({"body": "short"})] == [7]
        assert docs.count_documents({}) == 29
        assert mongo.address == proxy.listener_address(PREFIX)

    values = proxy.stats.values()
    compressed_by_proxy = values[f"mongo.{PREFIX}.op_compressed.{compressor}"]
    assert compressed_by_proxy > 0
    assert values[f"mongo.{PREFIX}.op_compressed"] == compressed_by_proxy
    for other in {"zlib", "zstd", "snappy"} - {compressor}:
        assert values.get(f"mongo.{PREFIX}.op_compressed.{other}", 0) == 0
    # Every compressed request the proxy counted reached the stage compressed, and nothing else did.
    assert stage.decompressed[compressor] == compressed_by_proxy
    assert stage.compressed[compressor] == compressed_by_proxy
    assert stage.errors == []
    # The proxy still saw the commands inside the compressed messages.
    assert values[f"mongo.{PREFIX}.db.compression.collection.{collection_name}.cmd.insert.total"] == 1
    assert values[f"mongo.{PREFIX}.db.compression.collection.{collection_name}.cmd.update.total"] == 1
    assert values[f"mongo.{PREFIX}.decoding_error"] == 0


def test_without_compressors_nothing_is_compressed_on_the_way(
    staged_sidecar: tuple[ProxyThread, CompressionStage],
) -> None:
    proxy, stage = staged_sidecar
    with client_for(proxy.listener_address(PREFIX)) as mongo:
        mongo.compression.plain.insert_one({"_id": 1})
        assert mongo.compression.plain.find_one() == {"_id": 1}
    assert proxy.stats.values()[f"mongo.{PREFIX}.op_compressed"] == 0
    assert sum(stage.decompressed.values()) == 0
