"""``python -m benchmarks.grpc``: direct vs meshproxy vs nginx ``grpc_pass`` vs HAProxy ``proto h2``.

Workloads, each against every target, on one HTTP/2 connection:

- ``unary-1`` / ``unary-32``: small unary calls (``/bench.Echo/Unary``: 11-byte request, 9-byte reply,
  prefixes included) from h2load at 1 and 32 concurrent streams (``-c 1 -m 1`` / ``-m 32``);
- ``stream``: client-streaming calls of 5,000 messages of 16 bytes, one DATA frame per message
  (``benchmarks.grpc.stream_load``), reported as messages/s.

The backend (``benchmarks.grpc.backend``, canned frames) and the load run on the load CPU; the proxy alone
on the proxy CPU. Each run: a warmup h2load (``-D warmup``) whose rate sizes the measured run, then a
measured run of exactly ``rate x duration`` calls (``-n``), so the proxy's counters can be checked exactly:
after each meshproxy run ``/stats`` is scraped and the calls it counted (``grpc.<prefix>.downstream_rq_total``,
and the method's ``success``) must equal the calls h2load completed; for the stream workload the method's
``request_message_count`` must equal the messages sent. A mismatch marks the run failed.

Rounds interleave the targets (order rotated by one per round); the tables show medians and the spread.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cpu import CpuAccounting
from benchmarks.grpc import wire
from benchmarks.grpc.targets import all_targets
from benchmarks.harness import (
    add_common_options,
    add_run_options,
    alternated,
    apt_install,
    cpu_placement,
    finish,
    log,
    parse_run,
    rotated,
    run_each,
    run_meta,
    start_target,
)
from benchmarks.report import progress_tail, uncontended
from benchmarks.targets import (
    LOCALHOST,
    REPO_ROOT,
    MeshProxy,
    Running,
    Target,
    find_tool,
    pinned,
    read_listening_line,
    scrape_stats,
    stop_process,
    sum_matching,
)

DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_S = 0.5
WORKLOADS = ("unary-1", "unary-32", "stream")
UNARY_PATH = "/bench.Echo/Unary"
STREAM_MESSAGES, STREAM_PAYLOAD = 5000, 16
REFERENCES = ("nginx-grpc", "haproxy-h2")
LOAD_SIDE = "load + backend"


@dataclass(slots=True)
class Run:
    round: int
    target: str
    workload: str
    rate: float | None = None  # calls/s (unary) or messages/s (stream)
    mean_us: float | None = None
    max_us: float | None = None
    sent: int | None = None  # calls (unary) or messages (stream) the load side completed
    counted: int | None = None  # what meshproxy's /stats says it saw
    note: str = ""
    error: str | None = None
    started: bool = True
    proxy_cpu_pct: float | None = None
    load_cpu_pct: float | None = None
    contended: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


# -- load ---------------------------------------------------------------------------------------------


def _h2load(port: int, streams: int, body: Path, cpu: int | None, *, seconds: float = 0, calls: int = 0) -> dict:
    binary = find_tool("h2load")
    assert binary is not None
    cmd = [binary, f"http://{LOCALHOST}:{port}{UNARY_PATH}", "-d", str(body), "-c", "1", "-t", "1", "-m", str(streams)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    cmd += ["-D", f"{seconds:g}"] if seconds else ["-n", str(calls)]
    timeout = (seconds or 60) + 60
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=pinned(cpu), check=False)
    return _parse_h2load(done.stdout + done.stderr, done.returncode)


def _parse_h2load(text: str, returncode: int) -> dict[str, Any]:
    out: dict[str, Any] = {"returncode": returncode}
    if m := re.search(r"finished in ([\d.]+[mu]?s), ([\d.]+) req/s", text):
        out["seconds"], out["rate"] = _us(m[1]) / 1e6, float(m[2])
    if m := re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    ):
        keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
        out.update(zip(keys, (int(v) for v in m.groups()), strict=True))
    if m := re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text):
        out["2xx"], out["3xx"], out["4xx"], out["5xx"] = (int(v) for v in m.groups())
    if m := re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text):
        out["min_us"], out["max_us"], out["mean_us"] = (_us(v) for v in m.groups())
    if "rate" not in out:
        out["error"] = f"h2load failed ({returncode}): {text.strip()[-200:]}"
    return out


def _us(text: str) -> float:
    for unit, scale in (("us", 1.0), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def _stream_load(port: int, args: argparse.Namespace, cpu: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.grpc.stream_load", "--host", LOCALHOST, "--port", str(port)]
    cmd += ["--messages", str(args.stream_messages), "--payload", str(STREAM_PAYLOAD)]
    cmd += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    done = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=args.duration + args.warmup + 60,
        preexec_fn=pinned(cpu),
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if not lines:
        tail = done.stderr.strip().splitlines()
        return {"errors": [f"stream load failed ({done.returncode}): {tail[-1] if tail else 'no output'}"]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- one run --------------------------------------------------------------------------------------------


def _counters(running: Running, target: Target, method: str) -> tuple[dict[str, int | None], str | None]:
    if running.admin_url is None:
        return {}, "no admin endpoint"
    stats, why = scrape_stats(running.admin_url)
    if why:
        return {}, why
    scope = rf"\.grpc\.bench\.Echo\.{method}\."
    return {
        "calls": sum_matching(stats, r"^grpc\.bench\.downstream_rq_total$"),
        "success": sum_matching(stats, rf"^cluster\..*{scope}success$"),
        "messages": sum_matching(stats, rf"^cluster\..*{scope}request_message_count$"),
        "upstream_rq": sum_matching(stats, r"^cluster\.[^.]+\.upstream_rq_total$"),
    }, None


def _delta(after: dict[str, int | None], before: dict[str, int | None], key: str) -> int | None:
    a, b = after.get(key), before.get(key)
    return None if a is None else a - (b or 0)


def run_one(target: Target, running: Running, workload: str, place: _Place, args: argparse.Namespace, rnd: int) -> Run:
    run = Run(rnd, target.name, workload)
    is_mesh = isinstance(target, MeshProxy)
    method = "Stream" if workload == "stream" else "Unary"
    if workload.startswith("unary"):
        streams = int(workload.split("-")[1])
        if args.warmup > 0:
            warm = _h2load(running.port, streams, place.body, place.load_cpu, seconds=args.warmup)
            rate = warm.get("rate") or 0.0
        else:
            rate = 0.0
        # A cold warmup underestimates (the proxy dials upstream meanwhile): size by the best rate seen so far.
        hints: dict[tuple[str, str], float] = args.rate_hints
        rate = max(rate, hints.get((target.name, workload), 0.0))
        calls = max(200, int(rate * args.duration)) if rate else max(200, int(2000 * args.duration))
        time.sleep(0.2)  # warmup calls cut off at its end are reset; let the proxy account for them first
    before: dict[str, int | None] = {}
    if is_mesh:
        before, _ = _counters(running, target, method)
    accounting = CpuAccounting(
        place.proxy_cpu, place.load_cpu, running.process.pid if running.process else None, place.backend_pid
    )
    if workload.startswith("unary"):
        result = _h2load(running.port, streams, place.body, place.load_cpu, calls=calls)
        run.detail = result
        if "error" in result:
            run.error = result["error"]
        else:
            run.rate, run.mean_us, run.max_us = result["rate"], result.get("mean_us"), result.get("max_us")
            run.sent = result.get("succeeded")
            bad = {k: result.get(k, 0) for k in ("failed", "errored", "timeout", "3xx", "4xx", "5xx")}
            if any(bad.values()) or result.get("done") != calls:
                run.error = f"h2load: {result.get('done')} of {calls} done; " + ", ".join(
                    f"{v} {k}" for k, v in bad.items() if v
                )
    else:
        result = _stream_load(running.port, args, place.load_cpu)
        run.detail = result
        run.rate = result.get("messages_per_s")
        run.sent = result.get("messages")
        if result.get("errors"):
            run.error = "; ".join(result["errors"])[:300]
        elif run.rate is None:
            run.error = "no call completed inside the window (calls too long for --duration?)"
    window = accounting.finish()
    run.proxy_cpu_pct, run.load_cpu_pct = window.proxy_busy_pct, window.load_busy_pct
    run.detail["foreign_cpu_pct"] = (window.proxy_foreign_pct, window.load_foreign_pct)
    run.contended = window.contended(running.process is not None)
    if run.rate and workload.startswith("unary"):
        key = (target.name, workload)
        args.rate_hints[key] = max(args.rate_hints.get(key, 0.0), run.rate)
    if gone := running.exited():
        run.error = f"{target.name} {gone}"
    if is_mesh:
        _check_counts(run, running, target, method, before)
    return run


def _check_counts(run: Run, running: Running, target: Target, method: str, before: dict[str, int | None]) -> None:
    time.sleep(0.05)
    after, why = _counters(running, target, method)
    if why:
        run.note = why
        return
    assert isinstance(target, MeshProxy)
    detail = run.detail
    stream = run.workload == "stream"
    calls = detail.get("calls") if stream else detail.get("done")
    if not target.counts_operations:  # no stats filter: the cluster's upstream stream counter only
        run.counted = _delta(after, before, "upstream_rq")
        run.note = f"{_count(run.counted)} upstream streams for {_count(calls)} calls"
        matches = run.counted == calls
    elif stream:
        messages = detail.get("messages")
        counted_calls, ok = _delta(after, before, "calls"), _delta(after, before, "success")
        run.counted = _delta(after, before, "messages")
        run.note = (
            f"counted {_count(run.counted)} of {_count(messages)} messages, "
            f"{counted_calls} calls ({ok} ok) of {calls}"
        )
        matches = run.counted == messages and counted_calls == calls and ok == detail.get("calls_ok")
    else:
        run.counted, ok = _delta(after, before, "calls"), _delta(after, before, "success")
        run.note = f"counted {_count(run.counted)} calls ({_count(ok)} grpc-status 0) of {_count(calls)} done"
        matches = run.counted == calls and ok == calls
    if not matches:
        run.error = (run.error + "; " if run.error else "") + "stats mismatch: " + run.note


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


@dataclass(frozen=True, slots=True)
class _Place:
    backend_pid: int
    proxy_cpu: int | None
    load_cpu: int | None
    body: Path


# -- rounds -------------------------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace, targets: list[Target], workloads: list[str]) -> list[Run]:
    proxy_cpu, load_cpu, _ = cpu_placement(args, LOAD_SIDE)
    backend = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.grpc.backend", "--host", LOCALHOST, "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        preexec_fn=pinned(load_cpu),
    )
    body = Path(args.workdir) / "unary-request.bin"
    body.write_bytes(wire.REQUEST_MESSAGE)
    runs: list[Run] = []
    try:
        backend_port = read_listening_line(backend)
        place = _Place(backend.pid, proxy_cpu, load_cpu, body)
        for round_index in range(args.rounds):
            for target in rotated(targets, round_index):
                order = alternated(workloads, round_index)
                runs.extend(_run_target(target, backend_port, place, order, args, round_index + 1))
    finally:
        stop_process(backend)
    return runs


def _run_target(
    target: Target, backend_port: int, place: _Place, workloads: list[str], args: argparse.Namespace, rnd: int
) -> list[Run]:
    running = start_target(target, backend_port, place.proxy_cpu, rnd - 1)
    if isinstance(running, str):
        return [Run(rnd, target.name, w, error=running, started=False) for w in workloads]

    def one(workload: str) -> Run:
        try:
            return run_one(target, running, workload, place, args, rnd)
        except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as exc:
            return Run(rnd, target.name, workload, error=f"{type(exc).__name__}: {exc}")

    return run_each(running, workloads, one, _progress)


def _progress(run: Run) -> str:
    unit = "msg/s" if run.workload == "stream" else "calls/s"
    head = f"[round {run.round}] {run.target:<20} {run.workload:<9}"
    if run.rate is None:
        return f"{head} FAILED {run.error}"
    text = f"{head} {run.rate:>12,.0f} {unit}"
    if run.mean_us is not None:
        text += f"  mean {run.mean_us:8.1f} us  max {run.max_us or 0:8.1f} us"
    foreign = run.detail.get("foreign_cpu_pct", (None, None)) if run.contended else None
    return text + progress_tail((run.proxy_cpu_pct, run.load_cpu_pct), foreign, run.note, run.error)


# -- summary ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    target: str
    workload: str
    runs: int = 0
    rate: float | None = None
    rate_min: float | None = None
    rate_max: float | None = None
    mean_us: float | None = None
    proxy_cpu_pct: float | None = None
    load_cpu_pct: float | None = None
    vs: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def summarize(
    runs: list[Run],
    targets: list[Target],
    skipped: dict[str, str],
    workloads: list[str],
    workload_skipped: dict[str, str],
) -> list[Summary]:
    out: list[Summary] = []
    for workload in workloads:
        rows: dict[str, Summary] = {}
        for target in targets:
            s = Summary(target.name, workload)
            rows[target.name] = s
            if target.name in skipped:
                s.notes.append(f"skipped: {skipped[target.name]}")
                continue
            if workload in workload_skipped:
                s.notes.append(f"skipped: {workload_skipped[workload]}")
                continue
            mine = [r for r in runs if r.target == target.name and r.workload == workload]
            clean, note = uncontended([r for r in mine if r.rate is not None and not r.error])
            if note:
                s.notes.append(note)
            if clean:
                rates = [r.rate for r in clean if r.rate is not None]
                s.runs, s.rate = len(rates), statistics.median(rates)
                s.rate_min, s.rate_max = min(rates), max(rates)
                means = [r.mean_us for r in clean if r.mean_us is not None]
                s.mean_us = statistics.median(means) if means else None
                cpu = [(r.proxy_cpu_pct, r.load_cpu_pct) for r in clean if r.proxy_cpu_pct is not None]
                if cpu:
                    s.proxy_cpu_pct = statistics.median(c[0] for c in cpu if c[0] is not None)
                    s.load_cpu_pct = statistics.median(c[1] or 0.0 for c in cpu)
            failed = [r for r in mine if r.error]
            if failed:
                s.notes.append(f"{len(failed)} of {len(mine)} run(s) FAILED: {failed[-1].error}"[:240])
            notes = [r.note for r in mine if r.note]
            if notes:
                s.notes.append(notes[-1])
        for s in rows.values():
            for ref in REFERENCES:
                r = rows.get(ref)
                if r is not None and r.rate and s.rate is not None:
                    s.vs[ref] = 100.0 * s.rate / r.rate
            out.append(s)
    return out


HEADERS = ["target", "rate", "mean us", "vs nginx", "vs haproxy", "cpu proxy/load", "spread", "notes"]


def _cells(s: Summary) -> list[str]:
    spread = "-"
    if s.rate_min is not None and s.rate_max is not None and s.runs > 1:
        spread = f"{s.rate_min / 1000:,.1f}k..{s.rate_max / 1000:,.1f}k"
    cpu = "-" if s.proxy_cpu_pct is None else f"{s.proxy_cpu_pct:.0f}%/{s.load_cpu_pct or 0:.0f}%"
    return [
        s.target,
        "-" if s.rate is None else f"{s.rate:,.0f}",
        "-" if s.mean_us is None else f"{s.mean_us:,.1f}",
        f"{s.vs['nginx-grpc']:.1f}%" if "nginx-grpc" in s.vs else "-",
        f"{s.vs['haproxy-h2']:.1f}%" if "haproxy-h2" in s.vs else "-",
        cpu,
        spread,
        "; ".join(s.notes),
    ]


TITLES = {
    "unary-1": "unary, 1 stream on 1 connection (h2load -c 1 -m 1): calls/s",
    "unary-32": "unary, 32 concurrent streams on 1 connection (h2load -c 1 -m 32): calls/s",
    "stream": f"client streaming, one DATA frame per {STREAM_PAYLOAD}-byte message: messages/s",
}


def print_tables(summaries: list[Summary], workloads: list[str], meta: dict[str, Any]) -> None:
    caption = f"median of {meta['rounds']} interleaved round(s), {meta['duration_s']}s each; {meta['pinning']}"
    for workload in workloads:
        rows = [_cells(s) for s in summaries if s.workload == workload]
        print(f"\n{TITLES[workload]}\n({caption})")
        widths = [max(len(HEADERS[i]), *(len(r[i]) for r in rows)) for i in range(len(HEADERS))]
        print("| " + " | ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


LEGEND = """\
rate: calls/s for unary (h2load, calls that got :status 200), messages/s for streaming (calls that ended with
grpc-status 0). mean us: h2load's mean time per call. cpu proxy/load: busy share of the proxy core and of the
load core (load generator + backend). direct is the ceiling of the load core, not a proxy result."""


# -- main -----------------------------------------------------------------------------------------------


#: Debian package per tool, for --install-tools.
PACKAGES = {"h2load": "nghttp2-client", "nginx": "nginx-light", "haproxy": "haproxy"}


def build_parser() -> argparse.ArgumentParser:
    known = list(all_targets())
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc", description=__doc__.split("\n")[0])
    warmup_help = "unmeasured seconds before each run"
    add_run_options(parser, known, DEFAULT_DURATION_S, DEFAULT_WARMUP_S, warmup_help, "0.5s runs, 0.2s warmup, 1 round")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of: {', '.join(WORKLOADS)}")
    parser.add_argument("--stream-messages", type=int, default=STREAM_MESSAGES, help="messages per streaming call")
    parser.add_argument(
        "--install-tools",
        action="store_true",
        help="apt-get install h2load (nghttp2-client), nginx-light, haproxy when missing",
    )
    add_common_options(parser, LOAD_SIDE)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, selected = parse_run(build_parser(), argv, all_targets(), {"duration": 0.5, "warmup": 0.2, "rounds": 1})
    if args.quick:
        args.stream_messages = min(args.stream_messages, 1000)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := [w for w in workloads if w not in WORKLOADS]:
        log(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
        return 2
    if selected is None:
        return 2
    if args.install_tools and (missing := [pkg for name, pkg in PACKAGES.items() if find_tool(name) is None]):
        log(apt_install(missing))
    skipped = {t.name: why for t in selected if (why := t.unavailable()) is not None}
    for name, why in skipped.items():
        log(f"{name}: skipped ({why})")
    workload_skipped = {}
    if find_tool("h2load") is None:
        for w in workloads:
            if w.startswith("unary"):
                workload_skipped[w] = "h2load not installed (apt-get install nghttp2-client, or --install-tools)"
    runnable_workloads = [w for w in workloads if w not in workload_skipped]
    runnable = [t for t in selected if t.name not in skipped]
    _, _, pinning = cpu_placement(args, LOAD_SIDE)
    meta = run_meta(args, pinning)
    meta["stream_messages_per_call"] = args.stream_messages
    meta["versions"] = {t.name: v for t in selected if t.name not in skipped and (v := t.describe_version())}
    if (h2load := find_tool("h2load")) is not None:
        meta["versions"]["h2load"] = subprocess.run(
            [h2load, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    log(
        f"gRPC benchmark: {pinning}; {args.rounds} round(s) x {len(runnable)} target(s) x "
        f"{len(runnable_workloads)} workload(s), {args.warmup}s warmup + {args.duration}s each"
    )
    log("versions: " + "; ".join(f"{k}: {v}" for k, v in meta["versions"].items()))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as workdir:
        args.workdir = workdir
        args.rate_hints = {}
        runs = run_benchmark(args, runnable, runnable_workloads) if runnable and runnable_workloads else []
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    summaries = summarize(runs, selected, skipped, workloads, workload_skipped)
    print(f"\ngRPC benchmark, {meta['date']}; {meta['machine']}; Python {meta['python']}")
    print("versions: " + "; ".join(f"{k}: {v}" for k, v in meta["versions"].items()))
    print_tables(summaries, workloads, meta)
    print()
    print(LEGEND)
    return finish(args, meta, skipped, [asdict(s) for s in summaries], runs)
