"""Decode throughput and replay pacing: ``python -m benchmarks.replay``.

- **Decode**: MB of capture per second through read + TCP reassembly + protocol decoding, for each real
  capture in tests/fixtures (pymongo + SecantusDB compressed with zlib, boto3 + moto, grpcio), and the same
  Mongo capture repeated to a larger file's worth of work. Single core, best of several rounds.
- **Replay pacing**: the Mongo capture's reads replayed with ``--rate`` N against a local SecantusDB loaded
  with the same data; prints requested vs achieved rate and the lag behind the schedule (p50/p99/max).
  Achieved falls short when the target (or the one core the replay runs on) cannot keep up, which is what
  the lag column shows.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from meshproxy.replay.decode import decode_file
from meshproxy.replay.replayer import ReplayOptions, replay
from meshproxy.replay.report import lag_summary

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
CAPTURES = [
    FIXTURES / "replay" / "mongo-cursors.pcap",
    FIXTURES / "capture" / "mongo.lo.pcapng",
    FIXTURES / "capture" / "dynamo.lo.pcap",
    FIXTURES / "capture" / "grpc.lo.pcap",
]


def decode_rate(path: Path, rounds: int) -> tuple[float, float, int]:
    """(MB/s, operations/s, operations per pass): the best of ``rounds`` passes."""
    size = path.stat().st_size
    best = float("inf")
    count = 0
    for _ in range(rounds):
        start = time.perf_counter()
        count = len(decode_file(path).operations)
        best = min(best, time.perf_counter() - start)
    return size / best / 1e6, count / best, count


def pacing(rates: list[float]) -> list[tuple[float, float, dict[str, float | None], int]]:
    from pymongo import MongoClient
    from secantus import SecantusDBServer

    operations = decode_file(CAPTURES[0]).operations
    results = []
    with tempfile.TemporaryDirectory() as storage, SecantusDBServer(port=0, storage_path=storage) as server:
        address = (str(server.address[0]), int(server.address[1]))
        with MongoClient(*address, directConnection=True) as client:
            client.shop.orders.insert_many([{"_id": i, "customer": i % 10, "amount": i * 3 % 97} for i in range(300)])
            client.shop.orders.create_index("customer")
        reads = [op for op in operations if op.operation in ("find", "aggregate", "distinct")]
        for rate in rates:
            # The capture's single-answer reads, 100 times over on as many recorded connections, so each rate
            # runs long enough to measure (cursor reads are left out: copies would share recorded cursor ids).
            batch = [replace(op, connection=copy) for copy in range(100) for op in reads]
            start = time.perf_counter()
            done = asyncio.run(replay(batch, ReplayOptions(target=address, rate=rate)))
            elapsed = time.perf_counter() - start
            sent = sum(1 for r in done if r.skipped is None)
            results.append((rate, sent / elapsed, lag_summary(done), sent))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and rates")
    args = parser.parse_args()
    rounds = 3 if args.quick else 10
    print("decode (read + reassemble + decode), one core:")
    print(f"  {'capture':32} {'size KB':>8} {'ops':>5} {'MB/s':>7} {'ops/s':>9}")
    for path in CAPTURES:
        mb_s, ops_s, count = decode_rate(path, rounds)
        print(f"  {path.name:32} {path.stat().st_size / 1024:>8.1f} {count:>5} {mb_s:>7.2f} {ops_s:>9.0f}")
    rates = [200.0, 1000.0] if args.quick else [100.0, 200.0, 300.0, 500.0, 1000.0]
    print("\nreplay pacing (--rate), the Mongo capture's single-answer reads x100 against a local SecantusDB:")
    header = ("requested/s", "achieved/s", "sent", "lag p50 ms", "lag p99 ms", "lag max ms")
    print("  {:>11} {:>10} {:>5} {:>10} {:>10} {:>10}".format(*header))
    for rate, achieved, lag, sent in pacing(rates):
        cells = [lag["p50_ms"], lag["p99_ms"], lag["max_ms"]]
        text = ["-" if c is None else f"{c:.2f}" for c in cells]
        print(f"  {rate:>11.0f} {achieved:>10.0f} {sent:>5} {text[0]:>10} {text[1]:>10} {text[2]:>10}")


if __name__ == "__main__":
    main()
