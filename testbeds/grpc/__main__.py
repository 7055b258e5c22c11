"""``python -m testbeds.grpc`` (or ``./dev demo grpc``): a grpcio server, the ``meshproxy sidecar grpc``
command in front of it, the gRPC workload (every call shape, a 4 MiB message, 100 concurrent calls, a
unicode failure, a cancel, a deadline, a health check) through the sidecar, then the per-method stats as
the admin endpoint reports them next to what the workload did.

Everything is real: the sidecar is the installed CLI in its own process, the server and client are
grpcio. The run fails (exit status 1) when a per-method counter differs from the workload, or when the
sidecar does not exit cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from testbeds._ports import admin_stats, free_port, quantile, wait_for_http
from testbeds.grpc.service import EchoServer
from testbeds.grpc.workload import Ledger, run_workload


def _compare(stats: dict[str, str], ledger: Ledger) -> list[tuple[str, ...]]:
    """One row per method: what the workload did / what the sidecar counted, and a verdict."""
    rows = []
    for (service, method), counts in sorted(ledger.methods.items()):
        scope = f"cluster.upstream.grpc.{service}.{method}."
        calls = stats.get(scope + "total", "0")
        sent = stats.get(scope + "request_message_count", "0")
        received = stats.get(scope + "response_message_count", "0")
        statuses = {code: stats.get(f"{scope}{code}", "0") for code in counts.statuses}
        ok = calls == str(counts.calls) and sent == str(counts.request_messages)
        ok = ok and all(statuses[code] == str(n) for code, n in counts.statuses.items())
        if method != "Wait":  # how many ticks a cancelled stream received is not known to the client
            ok = ok and received == str(counts.response_messages)
        expected_received = "?" if method == "Wait" else str(counts.response_messages)
        rows.append((
            f"{service.rsplit('.', 1)[-1]}/{method}",
            f"{counts.calls} / {calls}",
            f"{counts.request_messages} / {sent}",
            f"{expected_received} / {received}",
            ", ".join(f"{code}: {n} / {statuses[code]}" for code, n in sorted(counts.statuses.items())),
            _p(stats, scope),
            "ok" if ok else "MISMATCH",
        ))
    return rows


def _p(stats: dict[str, str], scope: str) -> str:
    line = stats.get(scope + "upstream_rq_time", "")
    return f"{quantile(line, 'P50')} / {quantile(line, 'P99')}"


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    listen, admin = free_port(), free_port()
    with EchoServer() as server:
        command = [
            sys.executable, "-m", "meshproxy", "--log-level", "warning", "sidecar", "grpc",
            "--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{server.port}",
            "--admin", f"127.0.0.1:{admin}", "--stat-prefix", "demo", "--drain-timeout", "2s",
        ]  # fmt: skip
        console.print(f"grpcio server on 127.0.0.1:{server.port}; starting: {' '.join(command[1:])}")
        sidecar = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for_http(f"http://127.0.0.1:{admin}/ready")
            ledger = run_workload(("127.0.0.1", listen), server_saw_cancel=server.service.cancelled)
            stats = admin_stats(f"http://127.0.0.1:{admin}")
        finally:
            sidecar.send_signal(signal.SIGTERM)
            status = sidecar.wait(timeout=15)
    table = Table(title="per method: what the workload did / what the sidecar counted (cluster.upstream.grpc.*)")
    for column in ("method", "calls", "request msgs", "response msgs", "grpc-status", "p50 / p99 ms", ""):
        table.add_column(column)
    rows = _compare(stats, ledger)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    http = {k: stats.get(f"grpc.demo.downstream_rq_{k}", "0") for k in ("total", "2xx", "4xx", "5xx")}
    console.print(f"HTTP view: {http}; deadline ended by the proxy: {stats.get('http2.demo.deadline_exceeded')}")
    console.print(f"admin endpoint was http://127.0.0.1:{admin}/ (stats, /stats/prometheus)")
    console.print(f"sidecar drained and exited with status {status}")
    bad = [row for row in rows if row[-1] != "ok"]
    return 0 if not bad and status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
