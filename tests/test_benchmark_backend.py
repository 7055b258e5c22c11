"""The benchmark's own parts: the canned backend answers like a server, the load generator measures honestly.

These keep ``python -m benchmarks`` trustworthy without running it: a real driver (pymongo) accepts the
backend's replies, replies are framed and matched to requests by responseTo, and every operation the load
generator sends carries a fresh requestID.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from pymongo import MongoClient

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # ``benchmarks`` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import wire  # noqa: E402
from benchmarks.backend import CannedResponder, start_backend  # noqa: E402
from benchmarks.load import run_load  # noqa: E402


@pytest.fixture
def backend_port() -> Iterator[int]:
    """The canned backend in its own process, as the harness runs it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.backend", "--port", "0"], cwd=REPO_ROOT, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith("LISTENING "), line
        yield int(line.split()[1])
    finally:
        process.terminate()
        process.wait(5)


def _read_reply(stream: BinaryIO) -> bytes:
    """One whole message from a buffered socket file, by its length prefix."""
    prefix = stream.read(4)
    assert len(prefix) == 4, "backend closed the connection"
    rest = stream.read(int.from_bytes(prefix, "little") - 4)
    return prefix + rest


def _with_request_id(request: bytes, request_id: int) -> bytes:
    head, tail = wire.split_request_template(request)
    return head + request_id.to_bytes(4, "little") + tail


def test_load_generator_process_completes_operations_with_matching_response_to(backend_port: int) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--port",
            str(backend_port),
            "--connections",
            "4",
            "--duration",
            "0.3",
            "--warmup",
            "0.05",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result["measured_ops"] > 0
    assert result["ops_per_s"] > 0
    assert result["response_to_mismatches"] == 0
    assert result["sent"] == result["received"]
    assert result["errors"] == []
    assert 0 < result["p50_us"] <= result["p99_us"]


def test_pymongo_reads_the_canned_find_reply_as_a_real_result(backend_port: int) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(
        "127.0.0.1", backend_port, directConnection=True, serverSelectionTimeoutMS=3000
    )
    try:
        assert client[wire.BENCH_DB][wire.BENCH_COLLECTION].find_one({"_id": 1}) == {"_id": 1}
    finally:
        client.close()


def test_pipelined_requests_get_one_reply_each_with_their_own_response_to(backend_port: int) -> None:
    request = wire.encode_find_request()
    with socket.create_connection(("127.0.0.1", backend_port), timeout=3) as sock, sock.makefile("rb") as stream:
        sock.sendall(_with_request_id(request, 101) + _with_request_id(request, 202))
        first, second = _read_reply(stream), _read_reply(stream)
    for reply, request_id in ((first, 101), (second, 202)):
        _length, _reply_id, response_to, opcode = wire.HEADER.unpack_from(reply)
        assert (response_to, opcode) == (request_id, wire.OP_MSG)
        assert wire.decode_op_msg_body(reply) == wire.FIND_REPLY_DOC


def test_a_request_split_byte_by_byte_is_still_answered_once(backend_port: int) -> None:
    request = _with_request_id(wire.encode_find_request(), 7)
    with socket.create_connection(("127.0.0.1", backend_port), timeout=3) as sock, sock.makefile("rb") as stream:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(request)):
            sock.sendall(request[i : i + 1])
        reply = _read_reply(stream)
    assert wire.HEADER.unpack_from(reply)[2] == 7


async def test_every_operation_the_load_generator_sends_carries_a_fresh_request_id() -> None:
    seen: list[bytes] = []

    class Recording(CannedResponder):
        def data_received(self, data: bytes) -> None:
            seen.append(data[4:8])  # closed loop: each chunk is exactly one request
            super().data_received(data)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recording, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await run_load("127.0.0.1", port, connections=3, duration=0.2, warmup=0.05)
    finally:
        server.close()
    assert result.sent == result.received == len(seen) > 0
    assert len(set(seen)) == len(seen)
    assert result.response_to_mismatches == 0


async def test_in_process_backend_serves_the_find_request_produced_by_pymongo() -> None:
    server = await start_backend()
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_with_request_id(wire.encode_find_request(), 42))
        header = await reader.readexactly(16)
        length, _, response_to, _ = wire.HEADER.unpack(header)
        body = await reader.readexactly(length - 16)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
    assert response_to == 42
    assert wire.decode_op_msg_body(header + body)["cursor"] == {
        "firstBatch": [{"_id": 1}],
        "id": 0,
        "ns": "bench.c",
    }


def test_summary_takes_the_median_across_rounds_relative_to_haproxy() -> None:
    from benchmarks.report import RunRecord, summarize
    from benchmarks.targets import all_targets

    def run(round_: int, target: str, ops: float, p50: float) -> RunRecord:
        result = {"ops_per_s": ops, "p50_us": p50, "p99_us": p50 * 2, "errors": []}
        return RunRecord(round_, target, 32, result=result)

    records = [
        run(1, "haproxy", 100_000, 300.0),
        run(2, "haproxy", 80_000, 320.0),
        run(3, "haproxy", 120_000, 280.0),
        run(1, "asyncio-forwarder", 60_000, 450.0),
        run(2, "asyncio-forwarder", 50_000, 500.0),
        run(3, "asyncio-forwarder", 55_000, 600.0),
        RunRecord(1, "anyio-forwarder", 32, error="did not start: boom", started=False),
    ]
    targets = [all_targets()[name] for name in ("haproxy", "asyncio-forwarder", "anyio-forwarder", "meshproxy")]
    summaries = {s.target: s for s in summarize(records, targets, {"meshproxy": "no CLI yet"}, [32])}

    assert summaries["haproxy"].ops_per_s == 100_000
    assert summaries["asyncio-forwarder"].ops_per_s == 55_000
    assert summaries["asyncio-forwarder"].vs_reference_ops_pct == pytest.approx(55.0)
    assert summaries["asyncio-forwarder"].vs_reference_p50 == pytest.approx(500.0 / 300.0)
    assert (summaries["asyncio-forwarder"].ops_min, summaries["asyncio-forwarder"].ops_max) == (50_000, 60_000)
    assert summaries["anyio-forwarder"].ops_per_s is None
    assert summaries["anyio-forwarder"].notes == ["not available: did not start: boom"]
    assert summaries["meshproxy"].notes == ["not available: no CLI yet"]


def test_harness_runs_direct_and_a_forwarder_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--targets",
            "direct,asyncio-forwarder",
            "--connections",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--rounds",
            "1",
            "--no-pin",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(out.read_text())
    by_target = {s["target"]: s for s in report["summary"]}
    assert set(by_target) == {"direct", "asyncio-forwarder"}
    assert all(s["ops_per_s"] > 0 and s["runs"] == 1 for s in by_target.values())
    assert all(r["result"]["sent"] == r["result"]["received"] for r in report["runs"])
    assert "asyncio-forwarder" in done.stdout.decode()


def test_runs_contended_by_other_processes_are_left_out_of_the_median_when_clean_runs_exist() -> None:
    from benchmarks.report import RunRecord, summarize
    from benchmarks.targets import all_targets

    def run(round_: int, ops: float, contended: bool) -> RunRecord:
        result = {"ops_per_s": ops, "p50_us": 300.0, "p99_us": 600.0, "errors": []}
        return RunRecord(round_, "haproxy", 32, result=result, contended=contended)

    records = [run(1, 100_000, False), run(2, 40_000, True), run(3, 30_000, True)]
    (summary,) = summarize(records, [all_targets()["haproxy"]], {}, [32])
    assert summary.ops_per_s == 100_000
    assert summary.runs == 1
    assert summary.notes == ["2 of 3 runs contended by other processes, left out"]


def test_a_missing_haproxy_is_a_skipped_row_that_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import targets
    from benchmarks.report import summarize

    monkeypatch.setattr(targets, "haproxy_binary", lambda: None)
    haproxy = targets.all_targets()["haproxy"]
    reason = haproxy.unavailable()
    assert reason is not None
    assert "haproxy not installed (apt-get install haproxy" in reason
    (summary,) = summarize([], [haproxy], {"haproxy": reason}, [1])
    assert summary.notes == [f"skipped: {reason}"]


def test_ops_per_proxy_core_is_given_only_for_throughput_bound_runs() -> None:
    from benchmarks.report import RunRecord, summarize
    from benchmarks.targets import all_targets

    def run(connections: int, ops: float, proxy_busy: float, load_busy: float) -> RunRecord:
        result = {"ops_per_s": ops, "p50_us": 300.0, "p99_us": 600.0, "errors": []}
        return RunRecord(
            1, "haproxy", connections, result=result, proxy_cpu_busy_pct=proxy_busy, load_cpu_busy_pct=load_busy
        )

    records = [run(32, 100_000, 80.0, 100.0), run(1, 7_000, 55.0, 40.0)]
    bound, latency_bound = summarize(records, [all_targets()["haproxy"]], {}, [32, 1])
    assert bound.ops_per_proxy_core == pytest.approx(125_000)
    assert latency_bound.ops_per_proxy_core is None
