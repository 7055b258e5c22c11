"""The compression stage on its own: pymongo(compressors=X) -> stage -> SecantusDB.

The compression tests through the proxy rely on this stage; these tests prove that it really makes the
driver compress (its counters move only when OP_COMPRESSED crossed it) and that data survives the trip.
``directConnection=true`` keeps the driver on the stage: SecantusDB advertises its own address as a
replica-set primary, and nothing in this chain rewrites that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from .compression_stage import CompressionStage
from .support import SERVER_SELECTION_MS

pytestmark = pytest.mark.integration


@pytest.fixture
def stage(secantus: tuple[str, int]) -> Iterator[CompressionStage]:
    with CompressionStage(secantus) as running:
        yield running


def direct_client(address: tuple[str, int], **options: Any) -> MongoClient[dict[str, Any]]:
    host, port = address
    return MongoClient(
        f"mongodb://{host}:{port}/?directConnection=true", serverSelectionTimeoutMS=SERVER_SELECTION_MS, **options
    )


@pytest.mark.parametrize("compressor", ["zlib", "zstd", "snappy"])
def test_stage_makes_the_driver_compress_and_round_trips_documents(
    stage: CompressionStage, compressor: str
) -> None:
    collection_name = f"stage_{compressor}"
    with direct_client(stage.address, compressors=compressor) as mongo:
        collection = mongo.stagedb[collection_name]
        collection.drop()
        collection.insert_many([{"_id": i, "text": "x" * 200, "i": i} for i in range(50)])
        found = list(collection.find({"i": {"$gte": 10}}, sort=[("_id", 1)]))
        assert [doc["_id"] for doc in found] == list(range(10, 50))
        assert found[0]["text"] == "x" * 200
        assert collection.count_documents({}) == 50

    assert stage.errors == []
    assert [compressor] in stage.offers
    assert stage.announced[compressor] >= 1
    # insert + find + count + drop at least, each request compressed and each reply compressed back.
    assert stage.decompressed[compressor] >= 4
    assert stage.compressed[compressor] == stage.decompressed[compressor]
    others = {"zlib", "zstd", "snappy"} - {compressor}
    assert all(stage.decompressed[other] == 0 and stage.compressed[other] == 0 for other in others)


def test_stage_announces_the_first_offered_compressor_it_supports(secantus: tuple[str, int]) -> None:
    with (
        CompressionStage(secantus, supported=("zstd",)) as stage,
        direct_client(stage.address, compressors="snappy,zstd,zlib") as mongo,
    ):
        mongo.stagedb.first.insert_one({"_id": 1})
        assert mongo.stagedb.first.find_one({"_id": 1}) == {"_id": 1}
    assert ["snappy", "zstd", "zlib"] in stage.offers
    assert stage.announced == {"zstd": stage.announced["zstd"]}
    assert stage.decompressed["zstd"] >= 2
    assert stage.decompressed["snappy"] == stage.decompressed["zlib"] == 0


def test_a_client_without_compressors_passes_the_stage_uncompressed(stage: CompressionStage) -> None:
    with direct_client(stage.address) as mongo:
        mongo.stagedb.plain.insert_one({"_id": "plain"})
        assert mongo.stagedb.plain.find_one() == {"_id": "plain"}
    assert stage.offers
    assert all(offer == [] for offer in stage.offers)
    assert sum(stage.announced.values()) == 0
    assert sum(stage.decompressed.values()) == sum(stage.compressed.values()) == 0
