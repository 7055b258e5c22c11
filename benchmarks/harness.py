"""``python -m benchmarks``: direct vs proxies, interleaved, over 1 and 32 connections, side by side.

Method (docs/performance.md has the long form):

- one canned backend process for the whole benchmark (``benchmarks/backend.py``), pinned to the load CPU;
- per run, a fresh load-generator process (``benchmarks/load.py``) pinned to the same load CPU, and the
  proxy under test pinned alone to the proxy CPU;
- rounds interleave the targets (each round runs every target once, the order rotated by one per round,
  the connection counts alternated), so slow drift of the machine hits every target alike; the table shows
  the median across rounds and the spread (min..max ops/s) so the noise is visible;
- after each meshproxy run the admin ``/stats`` counter for ``find`` is scraped and compared with the
  number of requests the load generator sent, which shows the proxy really decoded every operation.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from benchmarks.cpu import CpuAccounting
from benchmarks.report import LEGEND, RunRecord, print_tables, progress_tail, summarize
from benchmarks.targets import (
    LOCALHOST,
    REPO_ROOT,
    MeshProxy,
    Running,
    Target,
    all_targets,
    haproxy_binary,
    pinned,
    read_listening_line,
    stop_process,
)

T = TypeVar("T")
X = TypeVar("X")


class _Outcome(Protocol):
    error: str | None


R = TypeVar("R", bound=_Outcome)

DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_S = 0.5
DEFAULT_ROUNDS = 3
DEFAULT_CONNECTIONS = (1, 32)

#: The counter that proves meshproxy decoded the benchmark's operations (Envoy's name for it).
FIND_COUNTER_PATTERN = r"^mongo\.{prefix}\.cmd\.find\.total$"


def cpu_placement(
    args: argparse.Namespace, load_side: str = "load generator + backend"
) -> tuple[int | None, int | None, str]:
    """(proxy CPU, load CPU, description): the first two CPUs we may run on, unless told otherwise."""
    if args.no_pin or not hasattr(os, "sched_getaffinity"):
        return None, None, "no pinning"
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 and (args.proxy_cpu is None or args.load_cpu is None):
        return None, None, f"no pinning (only {len(allowed)} CPU available)"
    proxy_cpu = args.proxy_cpu if args.proxy_cpu is not None else allowed[0]
    load_cpu = args.load_cpu if args.load_cpu is not None else allowed[1]
    return proxy_cpu, load_cpu, f"proxy on CPU {proxy_cpu}; {load_side} on CPU {load_cpu}"


def apt_install(packages: list[str]) -> str:
    """``apt-get install -y`` the packages (only when asked: --install-haproxy, --install-tools); what happened."""
    cmd = ["apt-get", "install", "-y", *packages]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return f"cannot install {', '.join(packages)}: not root and no sudo"
        cmd = ["sudo", "-n", *cmd]
    log(f"installing: {' '.join(cmd)}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install failed: {exc}"
    if done.returncode != 0:
        return f"apt-get install failed ({done.returncode}): {done.stderr.strip()[-300:]}"
    return f"installed {', '.join(packages)}"


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the tables."""
    print(message, file=sys.stderr, flush=True)


def run_meta(args: argparse.Namespace, pinning: str) -> dict[str, Any]:
    """What every benchmark's JSON and captions say about the machine and the method."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "pinning": pinning,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
    }


def select_targets(args: argparse.Namespace, known: dict[str, Target]) -> list[Target] | None:
    """The targets ``--targets`` names, in its order; ``None`` (and a message) when one is unknown."""
    wanted = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        log(f"unknown target(s): {', '.join(unknown)}; known: {', '.join(known)}")
        return None
    return [known[name] for name in wanted]


def rotated(items: list[T], round_index: int) -> list[T]:
    """The round's order: rotated by one per round, so slow drift of the machine hits every item alike."""
    shift = round_index % len(items) if items else 0
    return items[shift:] + items[:shift]


def alternated(items: list[T], round_index: int) -> list[T]:
    """As given in even rounds, reversed in odd ones (connection counts, operations, workloads)."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))


def start_target(target: Target, backend_port: int, cpu: int | None, round_index: int) -> Running | str:
    """The started target, or why it did not start (logged; any failure is a row, not a crash)."""
    try:
        return target.start(backend_port, cpu)
    except Exception as exc:
        reason = f"did not start: {exc}"
        log(f"[round {round_index + 1}] {target.name}: not available ({reason})")
        return reason


def add_common_options(parser: argparse.ArgumentParser, load_side: str) -> None:
    """--json, --proxy-cpu, --load-cpu, --no-pin: the same in every benchmark."""
    parser.add_argument("--json", metavar="PATH", help="also write every run and the summary as JSON")
    parser.add_argument("--proxy-cpu", type=int, default=None, help="CPU for the proxy (default: first)")
    parser.add_argument("--load-cpu", type=int, default=None, help=f"CPU for {load_side} (default: second)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")


def write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as out:
        json.dump(payload, out, indent=2)
    log(f"wrote {path}")


def _start_backend(cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.backend", "--host", LOCALHOST, "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        preexec_fn=pinned(cpu),
    )
    return process, read_listening_line(process)


def _run_load(port: int, connections: int, args: argparse.Namespace, cpu: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.load", "--host", LOCALHOST, "--port", str(port)]
    cmd += ["--connections", str(connections), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    timeout = args.duration + args.warmup + 30
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, timeout=timeout, preexec_fn=pinned(cpu), check=False)
    lines = done.stdout.decode().strip().splitlines()
    if not lines:
        detail = done.stderr.decode().strip().splitlines()
        raise RuntimeError(f"load generator failed ({done.returncode}): {detail[-1] if detail else 'no output'}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def meshproxy_counts(target: Target) -> bool:
    """Whether the run checks meshproxy's admin counters against what the load side sent."""
    return isinstance(target, MeshProxy) and target.counts_operations


def run_benchmark(args: argparse.Namespace, targets: list[Target]) -> tuple[list[RunRecord], dict[str, Any]]:
    """All rounds; returns every run and the metadata that explains them."""
    proxy_cpu, load_cpu, pinning = cpu_placement(args)
    meta = run_meta(args, pinning)
    meta["connections"] = args.connections
    meta["versions"] = {t.name: v for t in targets if (v := t.describe_version())}
    try:
        import uvloop

        meta["uvloop"] = getattr(uvloop, "__version__", "?")
    except ImportError:
        meta["uvloop"] = None
    log(
        f"meshproxy benchmark: {pinning}; {args.rounds} round(s) x {len(targets)} target(s) x "
        f"{len(args.connections)} connection count(s), {args.warmup}s warmup + {args.duration}s each"
    )

    records: list[RunRecord] = []
    backend, backend_port = _start_backend(load_cpu)
    try:
        for round_index in range(args.rounds):
            counts = alternated(args.connections, round_index)
            for target in rotated(targets, round_index):
                placement = _Placement(backend_port, backend.pid, proxy_cpu, load_cpu)
                records.extend(_run_target(target, round_index, counts, placement, args))
    finally:
        stop_process(backend)
    return records, meta


@dataclass(frozen=True, slots=True)
class _Placement:
    backend_port: int
    backend_pid: int
    proxy_cpu: int | None
    load_cpu: int | None


def run_each(running: Running, items: Iterable[X], one: Callable[[X], R], progress: Callable[[R], str]) -> list[R]:
    """One run per item on a started target, each logged as it ends; the target is stopped afterwards, and
    early when it died (its error says so)."""
    records: list[R] = []
    try:
        for item in items:
            record = one(item)
            records.append(record)
            log(progress(record))
            if record.error and running.exited():
                break
    finally:
        running.stop()
    return records


def _run_target(
    target: Target, round_index: int, counts: list[int], placement: _Placement, args: argparse.Namespace
) -> list[RunRecord]:
    running = start_target(target, placement.backend_port, placement.proxy_cpu, round_index)
    if isinstance(running, str):
        return [RunRecord(round_index + 1, target.name, n, error=running, started=False) for n in counts]
    one = functools.partial(_one_run, target, running, round_index, placement, args)
    return run_each(running, counts, one, _progress)


def _one_run(
    target: Target,
    running: Running,
    round_index: int,
    placement: _Placement,
    args: argparse.Namespace,
    connections: int,
) -> RunRecord:
    record = RunRecord(round_index + 1, target.name, connections)
    prefix = target.stat_prefix if isinstance(target, MeshProxy) and meshproxy_counts(target) else ""
    before: int | None = None
    if prefix:
        before, _ = running.counter(FIND_COUNTER_PATTERN.format(prefix=prefix))
    proxy_pid = running.process.pid if running.process else None
    accounting = CpuAccounting(placement.proxy_cpu, placement.load_cpu, proxy_pid, placement.backend_pid)
    try:
        record.result = _run_load(running.port, connections, args, placement.load_cpu)
        if record.result.get("errors"):
            record.error = "; ".join(record.result["errors"])[:300]
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        record.error = str(exc)
    record.take_cpu(accounting.finish(), running.process is not None)
    if gone := running.exited():
        record.error = f"{target.name} {gone}"
    if prefix:
        after, note = running.counter(FIND_COUNTER_PATTERN.format(prefix=prefix))
        if after is not None:
            record.proxy_find_counted = after - (before or 0)
            sent = record.result["sent"] if record.result else 0
            record.proxy_note = f"find counted {record.proxy_find_counted:,} of {sent:,} sent"
        else:
            record.proxy_note = note
    return record


def record_progress(record: RunRecord, head: str, figures: Callable[[dict[str, Any]], str]) -> str:
    """A progress line: ``head``, then ``figures(result)`` and the common tail when the run has a result."""
    if record.result is None:
        return head + f"FAILED {record.error}"
    foreign = (record.proxy_cpu_foreign_pct, record.load_cpu_foreign_pct) if record.contended else None
    cpu = (record.proxy_cpu_busy_pct, record.load_cpu_busy_pct)
    return head + figures(record.result) + progress_tail(cpu, foreign, record.proxy_note, record.error)


def _progress(record: RunRecord) -> str:
    head = f"[round {record.round}] {record.target:<20} {record.connections:>3} conn: "
    return record_progress(
        record, head, lambda r: f"{r['ops_per_s']:>10,.0f} ops/s  p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:8.1f} us"
    )


def parse_connections(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("connection counts are positive integers, e.g. 1,32")
    return values


def add_run_options(
    parser: argparse.ArgumentParser, known: list[str], duration: float, warmup: float, warmup_help: str, quick: str
) -> None:
    """--duration, --warmup, --rounds, --targets, --quick: the same in every benchmark, with its own defaults."""
    parser.add_argument("--duration", type=float, default=duration, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=warmup, help=warmup_help)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds (median)")
    parser.add_argument("--targets", default=",".join(known), help=f"comma-separated subset of: {', '.join(known)}")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {quick}")


def parse_run(
    parser: argparse.ArgumentParser, argv: list[str] | None, known: dict[str, Target], quick: dict[str, float]
) -> tuple[argparse.Namespace, list[Target] | None]:
    """The options (``quick`` overrides them with --quick) and the selected targets (``None``: unknown ones)."""
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in quick.items():
            setattr(args, name, value)
    return args, select_targets(args, known)


def add_connections_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--connections",
        type=parse_connections,
        default=list(DEFAULT_CONNECTIONS),
        help=f"comma-separated {what} counts (default 1,32)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Direct vs HAProxy vs bare Python forwarders vs meshproxy, interleaved, side by side.",
    )
    add_run_options(
        parser,
        list(all_targets()),
        DEFAULT_DURATION_S,
        DEFAULT_WARMUP_S,
        "unmeasured seconds before",
        "0.5s runs, 0.2s warmup, 1 round",
    )
    add_connections_option(parser, "connection")
    parser.add_argument(
        "--install-haproxy", action="store_true", help="apt-get install haproxy first when it is missing"
    )
    add_common_options(parser, "load generator + backend")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, selected = parse_run(build_parser(), argv, all_targets(), {"duration": 0.5, "warmup": 0.2, "rounds": 1})
    if selected is None:
        return 2

    if args.install_haproxy and any(t.name == "haproxy" for t in selected) and haproxy_binary() is None:
        log(apt_install(["haproxy"]))
    skipped = {t.name: reason for t in selected if (reason := t.unavailable()) is not None}
    for name, reason in skipped.items():
        log(f"{name}: {'skipped' if name == 'haproxy' else 'not available'} ({reason})")
    runnable = [t for t in selected if t.name not in skipped]

    started = time.monotonic()
    records, meta = run_benchmark(args, runnable)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    summaries = summarize(records, selected, skipped, args.connections)
    print_tables(summaries, args.connections, meta)
    print(LEGEND)
    return finish(args, meta, skipped, [asdict(s) for s in summaries], records)


def finish(
    args: argparse.Namespace, meta: dict[str, Any], skipped: dict[str, str], summary: object, runs: Sequence[Any]
) -> int:
    """The end of every benchmark: how long it took, the JSON when asked, and the exit status.

    A target that is missing or does not start is reported, not fatal; a run that started and failed is.
    """
    log(f"done in {meta['elapsed_s']}s")
    if args.json:
        payload = {"meta": meta, "skipped": skipped, "summary": summary, "runs": [asdict(r) for r in runs]}
        write_json(args.json, payload)
    failed = any(r.error and r.started for r in runs)
    return 1 if failed else 0
