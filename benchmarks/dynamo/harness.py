"""``python -m benchmarks.dynamo``: DynamoDB over HTTP/1.1 — direct vs L7 proxies vs meshproxy, side by side.

Method (docs/performance.md, section "DynamoDB (HTTP/1.1)", has the long form):

- backend: one nginx (master + 1 worker) for the whole benchmark, pinned to the load CPU, answering each
  ``POST /`` like DynamoDB (body and ``x-amz-crc32`` chosen by ``X-Amz-Target``);
- load: per run, a fresh ``wrk -t1 -cN`` pinned to the load CPU, sending botocore-shaped GetItem or PutItem
  requests on N keep-alive connections; a separate wrk run of ``--warmup`` seconds goes first;
- the proxy under test runs alone on the proxy CPU; every target is probed once after it starts (GetItem and
  PutItem: status 200, the exact body, a matching CRC) before any load;
- rounds interleave the targets (order rotated by one per round, connection counts and operations
  alternated), the tables show the median across rounds and the spread;
- a run fails when wrk saw socket errors or responses >= 400; for meshproxy the admin counter
  ``dynamodb.bench.rq_total`` is scraped around the measured run and must equal wrk's completed requests,
  give or take the requests still in flight when wrk stopped (at most one per connection).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.cpu import CpuAccounting
from benchmarks.dynamo.payloads import OPERATIONS, operation
from benchmarks.dynamo.targets import (
    RQ_TOTAL_PATTERN,
    STAT_PREFIX,
    all_targets,
    haproxy_version,
    nginx_binary,
    nginx_version,
    probe,
    start_backend,
)
from benchmarks.dynamo.wrk import run_wrk, write_scripts, wrk_binary, wrk_version
from benchmarks.harness import (
    add_common_options,
    add_connections_option,
    add_run_options,
    alternated,
    apt_install,
    cpu_placement,
    finish,
    log,
    meshproxy_counts,
    parse_run,
    record_progress,
    rotated,
    run_each,
    run_meta,
    start_target,
)
from benchmarks.report import LEGEND, RunRecord, Summary, print_tables, summarize
from benchmarks.targets import Running, Target, haproxy_binary, meshproxy_version

DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_S = 1.0
REFERENCE = "haproxy-http"
DEFAULT_RETRY_CONTENDED = 2
RETRY_PAUSE_S = 2.0

#: meshproxy counters that must stay at zero in a clean run (summed and shown when they do not).
PROXY_ERRORS_PATTERN = (
    rf"^dynamodb\.{STAT_PREFIX}\.(decoding_error|upstream_connect_error|upstream_reset|upstream_rq_timeout|"
    r"local_response|invalid_req_body|invalid_resp_body|unexpected_response|filter_error|operation_unknown|"
    r"operation_missing)$"
)

#: Debian package per tool, for --install-tools.
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy"}


@dataclass(slots=True)
class DynamoRun(RunRecord):
    """One wrk run against one target for one operation in one round."""

    op: str = "getitem"
    warmup_requests: int | None = None
    rq_counted: int | None = None
    proxy_errors: int | None = None


def missing_tools() -> dict[str, str]:
    """Tool name -> package for each of wrk / nginx / haproxy that is not installed."""
    found = {"wrk": wrk_binary(), "nginx": nginx_binary(), "haproxy": haproxy_binary()}
    return {tool: PACKAGES[tool] for tool, path in found.items() if path is None}


@dataclass(frozen=True, slots=True)
class _Setup:
    backend: Running
    scripts: dict[str, Path]
    proxy_cpu: int | None
    load_cpu: int | None


def run_benchmark(
    args: argparse.Namespace, targets: list[Target], ops: list[str]
) -> tuple[list[DynamoRun], dict[str, Any]]:
    proxy_cpu, load_cpu, pinning = cpu_placement(args)
    meta = run_meta(args, pinning)
    meta["connections"] = args.connections
    meta["ops"] = ops
    meta["versions"] = {"wrk": wrk_version(), "nginx": nginx_version(), "haproxy": haproxy_version()}
    if version := meshproxy_version():
        meta["versions"]["meshproxy"] = version
    log(
        f"DynamoDB benchmark: {pinning}; {args.rounds} round(s) x {len(targets)} target(s) x {len(ops)} op(s) x "
        f"{len(args.connections)} connection count(s), {args.warmup}s warmup + {args.duration}s each"
    )
    records: list[DynamoRun] = []
    if not targets:
        return records, meta
    with tempfile.TemporaryDirectory(prefix="bench-dynamo-wrk-") as scratch:
        scripts = write_scripts(Path(scratch), [operation(name) for name in ops])
        backend = start_backend(load_cpu)
        try:
            probe(backend.port)
            setup = _Setup(backend, scripts, proxy_cpu, load_cpu)
            for round_index in range(args.rounds):
                counts = alternated(args.connections, round_index)
                round_ops = alternated(ops, round_index)
                for target in rotated(targets, round_index):
                    records.extend(_run_target(target, round_index, round_ops, counts, setup, args))
        finally:
            backend.stop()
    return records, meta


def _run_target(
    target: Target,
    round_index: int,
    ops: list[str],
    counts: list[int],
    setup: _Setup,
    args: argparse.Namespace,
) -> list[DynamoRun]:
    combos = [(op, n) for op in ops for n in counts]
    running = start_target(target, setup.backend.port, setup.proxy_cpu, round_index)
    if isinstance(running, str):
        return [DynamoRun(round_index + 1, target.name, n, error=running, started=False, op=op) for op, n in combos]
    try:
        probe(running.port)
    except RuntimeError as exc:
        running.stop()
        reason = f"{exc} (through {target.name})"
        log(f"[round {round_index + 1}] {target.name}: FAILED {reason}")
        return [DynamoRun(round_index + 1, target.name, n, error=reason, op=op) for op, n in combos]

    def one(combo: tuple[str, int]) -> DynamoRun:
        record = _one_run(target, running, round_index, *combo, setup, args)
        for _ in range(args.retry_contended):
            if not record.contended or record.error:
                break
            log(_progress(record) + "  -> retrying")
            time.sleep(RETRY_PAUSE_S)
            record = _one_run(target, running, round_index, *combo, setup, args)
        return record

    return run_each(running, combos, one, _progress)


def _one_run(
    target: Target,
    running: Running,
    round_index: int,
    op: str,
    connections: int,
    setup: _Setup,
    args: argparse.Namespace,
) -> DynamoRun:
    record = DynamoRun(round_index + 1, target.name, connections, op=op)
    counted = meshproxy_counts(target)
    script = setup.scripts[op]
    try:
        if args.warmup > 0:
            warm = run_wrk(running.port, script, connections, args.warmup, setup.load_cpu)
            record.warmup_requests = warm["requests"]
        before = running.counter(RQ_TOTAL_PATTERN)[0] if counted else None
        errors_before = running.counter(PROXY_ERRORS_PATTERN)[0] if counted else None
        accounting = CpuAccounting(
            setup.proxy_cpu,
            setup.load_cpu,
            running.process.pid if running.process else None,
            setup.backend.process.pid if setup.backend.process else None,
        )
        record.result = run_wrk(running.port, script, connections, args.duration, setup.load_cpu)
        window = accounting.finish()
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        record.error = str(exc)
        return record
    record.take_cpu(window, running.process is not None)
    result = record.result
    problems = []
    if result["non_2xx"]:
        problems.append(f"{result['non_2xx']:,} responses >= 400")
    if result["socket_errors"]:
        problems.append(
            f"socket errors connect {result['connect']} read {result['read']} write {result['write']} "
            f"timeout {result['timeout']}"
        )
    if counted:
        time.sleep(0.05)  # let the proxy finish the requests that were in flight when wrk closed
        after = running.counter(RQ_TOTAL_PATTERN)[0]
        errors_after = running.counter(PROXY_ERRORS_PATTERN)[0]
        if after is None or before is None:
            record.proxy_note = "rq_total not scraped"
            problems.append("dynamodb.bench.rq_total not found on the admin endpoint")
        else:
            record.rq_counted = record.proxy_find_counted = after - before
            extra = record.rq_counted - result["requests"]
            record.proxy_note = f"rq_total {record.rq_counted:,} vs wrk {result['requests']:,} ({extra:+d})"
            if not 0 <= extra <= connections:
                problems.append(f"rq_total off by {extra:+d} (allowed 0..+{connections} in flight)")
        if errors_after is not None and errors_before is not None:
            record.proxy_errors = errors_after - errors_before
            if record.proxy_errors:
                problems.append(f"{record.proxy_errors} proxy error counter(s) went up")
    if gone := running.exited():
        problems.append(f"{target.name} {gone}")
    if problems:
        record.error = "; ".join(problems)
    return record


def _progress(record: DynamoRun) -> str:
    head = f"[round {record.round}] {record.target:<20} {record.op:<7} {record.connections:>3} conn: "
    return record_progress(
        record, head, lambda r: f"{r['req_per_s']:>10,.0f} req/s  p50 {r['p50_us']:6d} us  p99 {r['p99_us']:6d} us"
    )


def summarize_dynamo(
    records: list[DynamoRun], targets: list[Target], skipped: dict[str, str], connections: list[int], op: str
) -> list[Summary]:
    """:func:`benchmarks.report.summarize` for one operation, relative to ``haproxy-http``."""
    mine: list[RunRecord] = [r for r in records if r.op == op]
    summaries = summarize(mine, targets, skipped, connections, reference=REFERENCE)
    for s in summaries:
        if s.target in skipped:
            s.notes = [f"skipped: {skipped[s.target]}"]
        non_2xx = sum(
            r.result["non_2xx"]
            for r in records
            if r.op == op and r.target == s.target and r.connections == s.connections
            if r.result
        )
        if non_2xx:
            s.notes.append(f"{non_2xx:,} responses >= 400 across rounds")
    return summaries


def markdown_tables(summaries: dict[str, list[Summary]], connections: list[int]) -> str:
    """The tables as Markdown, for docs/performance.md."""
    out = []
    for op, rows in summaries.items():
        for n in sorted(connections, reverse=True):
            out.append(f"\n**{operation(op).target.split('.')[-1]}, {n} connection{'s' if n != 1 else ''}**\n")
            out.append(
                "| target | req/s | p50 µs | p99 µs | req/s vs HAProxy | p50 vs HAProxy | cpu proxy/load "
                "| req/s per proxy core | spread | notes |"
            )
            out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
            for s in rows:
                if s.connections != n:
                    continue
                cpu = "—" if s.proxy_cpu_pct is None else f"{s.proxy_cpu_pct:.0f} % / {s.load_cpu_pct or 0:.0f} %"
                spread = "—"
                if s.ops_min is not None and s.ops_max is not None and s.runs > 1:
                    spread = f"{s.ops_min / 1000:,.1f}k..{s.ops_max / 1000:,.1f}k"
                out.append(
                    "| "
                    + " | ".join(
                        [
                            s.target,
                            "—" if s.ops_per_s is None else f"{s.ops_per_s:,.0f}",
                            "—" if s.p50_us is None else f"{s.p50_us:,.0f}",
                            "—" if s.p99_us is None else f"{s.p99_us:,.0f}",
                            "—" if s.vs_reference_ops_pct is None else f"{s.vs_reference_ops_pct:.0f} %",
                            "—" if s.vs_reference_p50 is None else f"{s.vs_reference_p50:.2f}x",
                            cpu,
                            "—" if s.ops_per_proxy_core is None else f"{s.ops_per_proxy_core:,.0f}",
                            spread,
                            "; ".join(s.notes).replace("|", "/"),
                        ]
                    )
                    + " |"
                )
    return "\n".join(out) + "\n"


LEGEND_DYNAMO = """\
ops/s here is HTTP requests/s as wrk counted them; "vs haproxy" is relative to haproxy-http in the same run.
rq_total X vs wrk Y (+d): meshproxy's admin counter dynamodb.bench.rq_total over the measured run against the
requests wrk completed; +d (0..connections) are requests still in flight when wrk stopped."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dynamo",
        description="DynamoDB over HTTP/1.1: direct vs HAProxy (HTTP mode) vs nginx vs forwarders vs meshproxy.",
    )
    warmup_help = "seconds of a separate wrk run before each (0: none)"
    quick = "1s runs, no warmup, 1 round"
    add_run_options(parser, list(all_targets()), DEFAULT_DURATION_S, DEFAULT_WARMUP_S, warmup_help, quick)
    add_connections_option(parser, "keep-alive connection")
    parser.add_argument(
        "--op",
        choices=[*OPERATIONS, "both"],
        default="both",
        help="GetItem, PutItem, or both as separate runs and tables (default both)",
    )
    parser.add_argument(
        "--retry-contended",
        type=int,
        default=DEFAULT_RETRY_CONTENDED,
        metavar="N",
        help="repeat a run up to N times while other processes took > 10%% of a pinned core (default 2)",
    )
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    parser.add_argument(
        "--install-tools", action="store_true", help="apt-get install whichever of wrk, nginx-light, haproxy is missing"
    )
    add_common_options(parser, "wrk + nginx backend")
    return parser


def main(argv: list[str] | None = None) -> int:
    quick = {"duration": 1.0, "warmup": 0.0, "rounds": 1, "retry_contended": 0}
    args, selected = parse_run(build_parser(), argv, all_targets(), quick)
    if selected is None:
        return 2
    ops = list(OPERATIONS) if args.op == "both" else [args.op]

    missing = missing_tools()
    if args.install_tools and missing:
        log(apt_install(sorted(set(missing.values()))))
        missing = missing_tools()
    skipped: dict[str, str] = {}
    for tool in ("wrk", "nginx"):  # the load generator and the backend: nothing runs without them
        if tool in missing:
            reason = f"{tool} not installed (apt-get install {PACKAGES[tool]}, or --install-tools)"
            skipped.update({t.name: reason for t in selected if t.name not in skipped})
    for t in selected:
        if t.name not in skipped and (reason := t.unavailable()) is not None:
            skipped[t.name] = reason
    for name, reason in skipped.items():
        log(f"{name}: skipped ({reason})")
    runnable = [t for t in selected if t.name not in skipped]

    started = time.monotonic()
    try:
        records, meta = run_benchmark(args, runnable, ops)
    except RuntimeError as exc:  # the backend itself did not start or answer
        log(f"backend failed: {exc}")
        return 1
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    per_op = {op: summarize_dynamo(records, selected, skipped, args.connections, op) for op in ops}
    for op, summaries in per_op.items():
        print(
            f"\n=== {operation(op).target} (request {len(operation(op).body)} B, response "
            f"{len(operation(op).response)} B) ==="
        )
        print_tables(summaries, args.connections, meta)
    print(LEGEND)
    print(LEGEND_DYNAMO)
    versions = ", ".join(v for v in meta["versions"].values() if v)
    print(f"{meta['date']}; {meta['machine']}; Python {meta['python']}; {versions}")
    if args.markdown:
        print(markdown_tables(per_op, args.connections))
    summary = {op: [asdict(s) for s in rows] for op, rows in per_op.items()}
    return finish(args, meta, skipped, summary, records)
