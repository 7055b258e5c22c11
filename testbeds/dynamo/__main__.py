"""``python -m testbeds.dynamo``: a moto server, the ``meshproxy sidecar dynamo`` command in front of it, a
small boto3 workload through the sidecar, then the per-operation stats as the admin endpoint reports them,
next to what the workload issued.

Everything is real: the sidecar is the installed CLI in its own process, the backend is moto's DynamoDB
served over HTTP by ``ThreadedMotoServer``, the client is boto3 with a plain ``endpoint_url``. The run fails
(exit status 1) when a counter the sidecar serves differs from what the workload issued, or when the
sidecar does not exit cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from testbeds._ports import admin_stats, quantile, wait_for_http
from testbeds.dynamo.workload import Ledger, run_workload


def mismatches(stats: dict[str, str], prefix: str, ledger: Ledger) -> list[str]:
    """Every per-operation, per-table and per-error counter that does not read what the workload issued,
    as ``name: counted N, issued M`` lines (empty when all agree)."""
    scope = f"dynamodb.{prefix}"
    expected: dict[str, int] = {f"{scope}.rq_total": ledger.requests}
    expected |= {f"{scope}.operation.{op}.upstream_rq_total": n for op, n in ledger.operations.items()}
    expected |= {f"{scope}.table.{table}.upstream_rq_total": n for table, n in ledger.tables.items()}
    expected |= {f"{scope}.error.{table}.{kind}": n for (table, kind), n in ledger.errors.items()}
    # Counters the workload did not expect must be absent (or zero): an operation or an error type the
    # sidecar invented is as wrong as a missing one.
    for name in stats:
        if re.fullmatch(rf"{re.escape(scope)}\.(operation|table)\.[^.]+\.upstream_rq_total", name) or (
            name.startswith(f"{scope}.error.")
        ):
            expected.setdefault(name, 0)
    problems = []
    for name, want in sorted(expected.items()):
        got = stats.get(name, "0")
        if got != str(want):
            problems.append(f"{name}: counted {got}, issued {want}")
    return problems


def _print_tables(stats: dict[str, str], prefix: str, ledger: Ledger) -> None:
    from rich.console import Console
    from rich.table import Table

    scope = f"dynamodb.{prefix}"
    pattern = re.compile(rf"{re.escape(scope)}\.operation\.([^.]+)\.upstream_rq_total")
    operations = sorted({m.group(1) for name in stats if (m := pattern.fullmatch(name))} | set(ledger.operations))
    table = Table(title=f"per-operation stats ({scope}.operation.<op>.*), as the admin endpoint serves them")
    table.add_column("operation")
    table.add_column("issued", justify="right")
    table.add_column("counted", justify="right")
    table.add_column("2xx", justify="right")
    table.add_column("4xx", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    for operation in operations:
        base = f"{scope}.operation.{operation}"
        histogram = stats.get(f"{base}.upstream_rq_time", "")
        table.add_row(
            operation,
            str(ledger.operations.get(operation, 0)),
            stats.get(f"{base}.upstream_rq_total", "0"),
            stats.get(f"{base}.upstream_rq_total_2xx", "0"),
            stats.get(f"{base}.upstream_rq_total_4xx", "0"),
            quantile(histogram, "P50"),
            quantile(histogram, "P99"),
        )
    console = Console()
    console.print(table)

    tables = Table(title=f"per-table and per-error counters (under {scope}.)")
    tables.add_column("stat")
    tables.add_column("issued", justify="right")
    tables.add_column("counted", justify="right")
    for name, n in sorted(ledger.tables.items()):
        stat = f"table.{name}.upstream_rq_total"
        tables.add_row(stat, str(n), stats.get(f"{scope}.{stat}", "0"))
    errors = {f"error.{t}.{kind}": n for (t, kind), n in ledger.errors.items()}
    errors |= {
        name.removeprefix(f"{scope}."): 0
        for name in stats
        if name.startswith(f"{scope}.error.") and name.removeprefix(f"{scope}.") not in errors
    }
    for stat, n in sorted(errors.items()):
        tables.add_row(stat, str(n), stats.get(f"{scope}.{stat}", "0"))
    console.print(tables)

    extra = Table(title="listener-wide")
    extra.add_column("stat")
    extra.add_column("value", justify="right")
    for stat in (
        "rq_total", "rq_active", "multiple_tables", "table_missing", "operation_missing", "operation_unknown",
        "invalid_req_body", "invalid_resp_body", "local_response", "request_bytes", "response_bytes",
    ):
        name = f"{scope}.{stat}"
        if name in stats:
            extra.add_row(name, stats[name])
    console.print(extra)


@contextlib.contextmanager
def _moto_server() -> Iterator[tuple[str, int]]:
    """moto's DynamoDB over HTTP on a free port of 127.0.0.1; yields its (host, port)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


def _wait_ready(sidecar: subprocess.Popen[bytes], url: str, timeout: float = 15.0) -> None:
    """Poll the admin endpoint's ``/ready`` until it answers 200; fail at once if the sidecar exits first
    (a port taken since ``free_port`` chose it, a bad flag) instead of polling a dead process."""
    deadline = time.monotonic() + timeout
    while True:
        code = sidecar.poll()
        if code is not None:
            raise RuntimeError(f"the sidecar exited with status {code} before it was ready")
        try:
            wait_for_http(url, timeout=0.5)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def _stop(sidecar: subprocess.Popen[bytes]) -> int:
    sidecar.send_signal(signal.SIGTERM)
    try:
        return sidecar.wait(timeout=15)
    except subprocess.TimeoutExpired:
        sidecar.kill()
        sidecar.wait()
        return -signal.SIGKILL


def _run(moto: tuple[str, int], args: argparse.Namespace) -> int:
    from testbeds._ports import free_port

    listen, admin = free_port(), free_port()
    command = [
        sys.executable, "-m", "meshproxy", "sidecar", "dynamo",
        "--listen", f"127.0.0.1:{listen}",
        "--upstream", f"{moto[0]}:{moto[1]}",
        "--admin", f"127.0.0.1:{admin}",
        "--stat-prefix", args.prefix,
    ]
    print(f"moto DynamoDB on {moto[0]}:{moto[1]}")
    print("$ meshproxy " + " ".join(command[3:]))
    sidecar = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    problems: list[str] = []
    try:
        admin_url = f"http://127.0.0.1:{admin}"
        _wait_ready(sidecar, f"{admin_url}/ready")
        endpoint = f"http://127.0.0.1:{listen}"
        print(f"boto3 workload through endpoint_url={endpoint} ...")
        started = time.perf_counter()
        ledger = run_workload(endpoint)
        elapsed = time.perf_counter() - started
        print(f"workload done in {elapsed:.2f}s: {ledger.requests} requests")
        stats = admin_stats(admin_url)
        _print_tables(stats, args.prefix, ledger)
        problems = mismatches(stats, args.prefix, ledger)
        for problem in problems:
            print(f"MISMATCH {problem}")
        if not problems:
            print(f"every operation, table and error counter equals what the workload issued "
                  f"({ledger.requests} requests)")
        print(f"admin endpoint: {admin_url}/  (stats: {admin_url}/stats, "
              f"Prometheus: {admin_url}/stats/prometheus, hot keys: {admin_url}/dynamodb/hot_keys)")
        if args.keep_running:
            print("sidecar and moto keep running; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                sidecar.wait()
    finally:
        code = _stop(sidecar)
    print(f"sidecar drained and exited with status {code}")
    return 0 if code == 0 and not problems else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbeds.dynamo", description=__doc__)
    parser.add_argument("--prefix", default="demo", help="stat prefix of the sidecar (default: demo)")
    parser.add_argument("--keep-running", action="store_true", help="leave the sidecar and moto up until Ctrl-C")
    args = parser.parse_args(argv)
    with _moto_server() as moto:
        return _run(moto, args)


if __name__ == "__main__":
    raise SystemExit(main())
