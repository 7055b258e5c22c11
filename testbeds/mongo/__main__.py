"""``./dev demo``: an embedded SecantusDB, the ``meshproxy sidecar mongo`` command in front of it, a small
pymongo workload through the sidecar, then the per-command stats as the admin endpoint reports them.

Everything is real: the sidecar is the installed CLI in its own process, the database is SecantusDB (a
wire-protocol server on WiredTiger), the client is pymongo with a plain ``mongodb://host:port`` URI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

from testbeds._ports import admin_stats, free_port, quantile, wait_for_http
from testbeds.mongo.workload import run_workload


def _print_table(stats: dict[str, str], prefix: str, counts: dict[str, int]) -> None:
    from rich.console import Console
    from rich.table import Table

    commands = sorted(
        {name.split(".")[3] for name in stats if name.startswith(f"mongo.{prefix}.cmd.") and name.endswith(".total")}
    )
    table = Table(title=f"meshproxy: per-command stats (mongo.{prefix}.cmd.*), as served by the admin endpoint")
    table.add_column("command")
    table.add_column("issued by workload", justify="right")
    table.add_column("total", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("docs returned p50", justify="right")
    for command in commands:
        base = f"mongo.{prefix}.cmd.{command}"
        time_ms = stats.get(f"{base}.reply_time_ms", "")
        docs = stats.get(f"{base}.reply_num_docs", "")
        table.add_row(
            command,
            str(counts.get(command, "")),
            stats.get(f"{base}.total", "0"),
            quantile(time_ms, "P50"),
            quantile(time_ms, "P99"),
            quantile(docs, "P50"),
        )
    console = Console()
    console.print(table)
    interesting = [
        "op_msg", "op_query", "op_reply", "op_compressed", "decoding_error", "topology_rewrite",
        "cursor.opened", "cursor.exhausted", "cursor.killed", "bytes_in", "bytes_out",
    ]
    extra = Table(title="listener-wide")
    extra.add_column("stat")
    extra.add_column("value", justify="right")
    for stat in interesting:
        name = f"mongo.{prefix}.{stat}"
        if name in stats:
            extra.add_row(name, stats[name])
    errors = sorted(n for n in stats if n.startswith(f"mongo.{prefix}.cmd.") and ".error." in n)
    for name in errors:
        extra.add_row(name, stats[name])
    console.print(extra)


def _run_demo(db_port: int, args: argparse.Namespace) -> int:
    listen, admin = free_port(), free_port()
    command = [
        sys.executable, "-m", "meshproxy", "sidecar", "mongo",
        "--listen", f"127.0.0.1:{listen}",
        "--upstream", f"127.0.0.1:{db_port}",
        "--admin", f"127.0.0.1:{admin}",
        "--stat-prefix", args.prefix,
    ]
    print(f"SecantusDB on 127.0.0.1:{db_port}")
    print("$ meshproxy " + " ".join(command[3:]))
    sidecar = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        admin_url = f"http://127.0.0.1:{admin}"
        wait_for_http(f"{admin_url}/ready")
        uri = f"mongodb://127.0.0.1:{listen}"
        print(f"pymongo workload through {uri} ...")
        started = time.perf_counter()
        counts = run_workload(uri, scale=args.scale)
        elapsed = time.perf_counter() - started
        print(f"workload done in {elapsed:.2f}s: {sum(counts.values())} operations")
        stats = admin_stats(admin_url)
        _print_table(stats, args.prefix, counts)
        print(f"admin endpoint: {admin_url}/  (stats: {admin_url}/stats, "
              f"Prometheus: {admin_url}/stats/prometheus)")
        if args.keep_running:
            print("sidecar and database keep running; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                sidecar.wait()
    finally:
        sidecar.send_signal(signal.SIGTERM)
        try:
            code = sidecar.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sidecar.kill()
            code = sidecar.wait()
    print(f"sidecar drained and exited with status {code}")
    return 0 if code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbeds.mongo", description=__doc__)
    parser.add_argument("--prefix", default="demo", help="stat prefix of the sidecar (default: demo)")
    parser.add_argument(
        "--keep-running", action="store_true", help="leave the sidecar and database up until Ctrl-C"
    )
    parser.add_argument("--scale", type=int, default=1, help="multiply the workload size")
    args = parser.parse_args(argv)

    from secantus import SecantusDBServer

    with (
        tempfile.TemporaryDirectory(prefix="meshproxy-demo-") as storage,
        SecantusDBServer(port=0, storage_path=storage) as server,
    ):
        return _run_demo(server.address[1], args)


if __name__ == "__main__":
    raise SystemExit(main())
