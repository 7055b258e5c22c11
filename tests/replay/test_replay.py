"""``meshproxy replay``: real captures replayed against fresh real servers (SecantusDB, moto, a grpcio
server) answer as recorded; targets changed on purpose report exactly what was changed.

The Mongo capture (tests/fixtures/replay/mongo-cursors.pcap, recorded by record.py beside it with tcpdump)
is pymongo talking zlib-compressed OP_COMPRESSED: it creates an index, inserts 300 orders, reads them back
through a cursor of 30 batches, reads one customer's orders through the index (``hint``) in batches of 7,
aggregates with a cursor of batches of 3, counts and runs ``distinct``.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from support.moto import moto_server

from meshproxy.cli import main
from meshproxy.replay.command import EXIT_DIFFERENCES, run_replay
from meshproxy.replay.decode import decode_file
from meshproxy.replay.replayer import ReplayOptions, ReplayResult, replay

FIXTURES = Path(__file__).parents[1] / "fixtures"
MONGO = FIXTURES / "replay" / "mongo-cursors.pcap"
MONGO_MANIFEST: dict[str, Any] = json.loads((FIXTURES / "replay" / "manifest.json").read_text())["mongo-cursors"]
RATE = 2000.0
"""Replays here run at a fixed rate: the recorded pauses would only make the tests slower."""


@pytest.fixture
def secantus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    from secantus import SecantusDBServer

    with SecantusDBServer(port=0, storage_path=str(tmp_path / "db")) as server:
        yield (str(server.address[0]), int(server.address[1]))


def load_orders(address: tuple[str, int], *, index: bool) -> None:
    """The data the recorded workload made, loaded directly (a replay without writes reads it)."""
    with MongoClient(*address, directConnection=True) as client:
        client.shop.orders.insert_many([{"_id": i, "customer": i % 10, "amount": i * 3 % 97} for i in range(300)])
        if index:
            client.shop.orders.create_index("customer")


def replayed(path: Path, target: tuple[str, int], **options: Any) -> list[ReplayResult]:
    operations = decode_file(path).operations
    return asyncio.run(replay(operations, ReplayOptions(target=target, rate=RATE, **options)))


def differing(results: list[ReplayResult]) -> list[tuple[str, list[str]]]:
    return [(r.recorded.operation, r.differences) for r in results if r.differences]


def test_a_mongo_capture_with_its_writes_replays_on_a_fresh_server_with_no_difference(
    secantus: tuple[str, int],
) -> None:
    results = replayed(MONGO, secantus, writes=True, compare_bodies=True)
    assert differing(results) == []
    sent = [r for r in results if r.skipped is None]
    assert sum(1 for r in sent if r.recorded.operation == "getMore") == MONGO_MANIFEST["commands"].count("getMore")
    assert {r.skipped for r in results if r.skipped} == {"handshake", "session bookkeeping"}
    with MongoClient(*secantus, directConnection=True) as client:
        assert client.shop.orders.count_documents({}) == 300  # the replayed insert, once


def test_a_target_without_the_index_differs_exactly_on_the_query_that_hints_it(secantus: tuple[str, int]) -> None:
    load_orders(secantus, index=False)
    results = replayed(MONGO, secantus)  # no writes: createIndexes and the insert are skipped
    found = differing(results)
    hinted = MONGO_MANIFEST["found_by_hint"]
    assert [name for name, _ in found] == ["find"] + ["getMore"] * (hinted // 7 + (hinted % 7 > 0) - 1)
    assert "replayed BadValue" in found[0][1][0]
    assert all("cursor" in differences[0] for _, differences in found[1:])  # its cursor was never opened


def test_a_target_without_the_collection_differs_on_every_read_of_it(secantus: tuple[str, int]) -> None:
    results = replayed(MONGO, secantus, compare_bodies=True)  # distinct's values differ only in its body
    reads = [r for r in results if r.skipped is None or r.differences]
    assert reads
    assert all(r.differences for r in reads if r.recorded.operation != "killCursors")
    assert all(r.recorded.namespace == "shop.orders" for r in reads)


def test_a_target_returning_errors_differs_exactly_on_the_failing_command(secantus: tuple[str, int]) -> None:
    load_orders(secantus, index=True)
    with MongoClient(*secantus, directConnection=True) as client:
        client.admin.command(
            "configureFailPoint", "failCommand", mode="alwaysOn", data={"failCommands": ["distinct"], "errorCode": 2}
        )
    assert differing(replayed(MONGO, secantus)) == [("distinct", ["status: recorded ok, replayed BadValue"])]


def test_a_dynamodb_capture_replays_on_a_fresh_moto_re_signed_with_no_difference() -> None:
    with moto_server(empty=True) as moto:
        results = replayed(FIXTURES / "capture" / "dynamo.lo.pcap", moto, writes=True)
        assert differing(results) == []
        assert all(r.skipped is None for r in results)
        assert {r.status for r in results} == {"200"}
    with moto_server(empty=True) as moto:  # no writes, empty target: every read finds no table
        reads = [r for r in replayed(FIXTURES / "capture" / "dynamo.lo.pcap", moto) if r.skipped is None]
        assert {r.recorded.operation for r in reads} == {"GetItem", "Query", "Scan"}
        assert all("ResourceNotFoundException" in (r.status or "") and r.differences for r in reads)


def test_a_grpc_capture_replays_every_call_with_its_status() -> None:
    from testbeds.grpc.service import EchoServer

    with EchoServer() as server:
        results = replayed(FIXTURES / "capture" / "grpc.lo.pcap", ("127.0.0.1", server.port))
    assert differing(results) == []
    statuses = {r.recorded.operation.rpartition("/")[2]: r.status for r in results}
    assert statuses["Fail"] != "OK"
    assert statuses["Sum"] == statuses["Unary"] == "OK"


def test_the_cli_exits_3_on_differences_and_writes_the_html_report(
    secantus: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    host, port = secantus
    code = main(["replay", str(MONGO), "--target", f"{host}:{port}", "--rate", "2000", "--report", str(page)])
    assert code == EXIT_DIFFERENCES  # nothing was loaded: reads differ
    out = capsys.readouterr().out
    assert "difference(s):" in out
    assert "lag behind the schedule" in out
    html = page.read_text()
    assert "Latency distributions" in html
    assert "getMore" in html


def test_a_file_that_is_not_a_capture_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"no")
    err = io.StringIO()
    assert run_replay(str(junk), ReplayOptions(target=("127.0.0.1", 9)), out=io.StringIO(), err=err) == 1
    assert "not a pcap or pcapng file" in err.getvalue()
