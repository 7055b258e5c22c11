"""Turn runs into the summary and the tables: medians across rounds, relative to HAProxy, plain or rich.

Kept apart from :mod:`benchmarks.harness` (which runs things) so the arithmetic can be tested on its own.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from benchmarks.cpu import CpuWindow
from benchmarks.targets import MeshProxy, Target

REFERENCE_TARGET = "haproxy"

#: ops/s per proxy core is printed only for throughput-bound runs: one core at least this busy ...
SATURATED_BUSY_PCT = 90.0
#: ... and the proxy core busy enough that dividing by its share is not mostly noise.
MIN_PROXY_BUSY_FOR_CAPACITY = 50.0


@dataclass(slots=True)
class RunRecord:
    """One load run against one target in one round."""

    round: int
    target: str
    connections: int
    result: dict[str, Any] | None = None
    error: str | None = None
    proxy_find_counted: int | None = None
    proxy_note: str | None = None
    started: bool = True
    proxy_cpu_busy_pct: float | None = None
    load_cpu_busy_pct: float | None = None
    proxy_cpu_foreign_pct: float | None = None
    load_cpu_foreign_pct: float | None = None
    contended: bool = False

    def take_cpu(self, window: CpuWindow, proxy_running: bool) -> None:
        """Keep the run's CPU accounting (``proxy_running``: a proxy process ran on the proxy core)."""
        self.proxy_cpu_busy_pct, self.load_cpu_busy_pct = window.proxy_busy_pct, window.load_busy_pct
        self.proxy_cpu_foreign_pct, self.load_cpu_foreign_pct = window.proxy_foreign_pct, window.load_foreign_pct
        self.contended = window.contended(proxy_running)


@dataclass(slots=True)
class Summary:
    """The median across rounds for one target at one connection count."""

    target: str
    connections: int
    runs: int = 0
    ops_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    ops_min: float | None = None
    ops_max: float | None = None
    vs_reference_ops_pct: float | None = None
    vs_reference_p50: float | None = None
    proxy_cpu_pct: float | None = None
    load_cpu_pct: float | None = None
    ops_per_proxy_core: float | None = None
    notes: list[str] = field(default_factory=list)


def progress_tail(
    cpu: tuple[float | None, float | None],
    foreign: tuple[float | None, float | None] | None,
    note: str | None,
    error: str | None,
) -> str:
    """The end of a progress line: the cores' busy shares, contention (``foreign`` when contended), the
    proxy's own note and the error."""
    text = ""
    if cpu[0] is not None:
        text += f"  cpu proxy/load {cpu[0]:.0f}%/{cpu[1] or 0:.0f}%"
    if foreign is not None:
        text += f"  CONTENDED (others took {foreign[0] or 0:.0f}%/{foreign[1] or 0:.0f}% of the cores)"
    if note:
        text += f"  ({note})"
    if error:
        text += f"  ERROR {error}"
    return text


class _Measured(Protocol):
    contended: bool


M = TypeVar("M", bound=_Measured)


def uncontended(completed: list[M]) -> tuple[list[M], str | None]:
    """The runs that go into a median: the clean ones when there are any, else all of them (noisy); and the
    note that says which, if any was contended by other processes."""
    clean = [r for r in completed if not r.contended]
    if len(clean) == len(completed):
        return completed, None
    if not clean:
        return completed, "every run contended by other processes: figures are noisy"
    return clean, f"{len(completed) - len(clean)} of {len(completed)} runs contended by other processes, left out"


def summarize(
    records: list[RunRecord],
    targets: list[Target],
    skipped: dict[str, str],
    connections: list[int],
    reference: str = REFERENCE_TARGET,
) -> list[Summary]:
    """Median across rounds per (target, connections), relative to ``reference``'s (HAProxy's) median in the
    same runs."""
    summaries: list[Summary] = []
    for n in connections:
        by_target: dict[str, Summary] = {}
        for target in targets:
            summary = Summary(target.name, n)
            if target.name in skipped:
                word = "skipped" if target.name == reference else "not available"
                summary.notes.append(f"{word}: {skipped[target.name]}")
                by_target[target.name] = summary
                continue
            mine = [r for r in records if r.target == target.name and r.connections == n]
            good_runs, note = uncontended([r for r in mine if r.result is not None and not r.error])
            if note:
                summary.notes.append(note)
            good = [r.result for r in good_runs if r.result is not None]
            summary.runs = len(good)
            proxy_busy = [r.proxy_cpu_busy_pct for r in good_runs if r.proxy_cpu_busy_pct is not None]
            load_busy = [r.load_cpu_busy_pct for r in good_runs if r.load_cpu_busy_pct is not None]
            if proxy_busy and load_busy:
                summary.proxy_cpu_pct = statistics.median(proxy_busy)
                summary.load_cpu_pct = statistics.median(load_busy)
            capacity = [
                r.result["ops_per_s"] * 100.0 / r.proxy_cpu_busy_pct
                for r in good_runs
                if r.result is not None and r.proxy_cpu_busy_pct is not None and _throughput_bound(r)
            ]
            if capacity and target.name != "direct":
                summary.ops_per_proxy_core = statistics.median(capacity)
            if good:
                ops = [g["ops_per_s"] for g in good]
                summary.ops_per_s = statistics.median(ops)
                summary.ops_min, summary.ops_max = min(ops), max(ops)
                summary.p50_us = statistics.median(g["p50_us"] for g in good)
                summary.p99_us = statistics.median(g["p99_us"] for g in good)
            not_started = sorted({r.error for r in mine if r.error and not r.started})
            summary.notes.extend(f"not available: {_short(e)}" for e in not_started[:1])
            errors = sorted({r.error for r in mine if r.error and r.started})
            summary.notes.extend(f"error: {_short(e)}" for e in errors[:2])
            if isinstance(target, MeshProxy):
                notes = [r.proxy_note for r in mine if r.proxy_note]
                if notes:
                    summary.notes.append(notes[-1])
            by_target[target.name] = summary
        base = by_target.get(reference)
        for summary in by_target.values():
            if base is not None and base.ops_per_s and summary.ops_per_s is not None:
                summary.vs_reference_ops_pct = 100.0 * summary.ops_per_s / base.ops_per_s
            if base is not None and base.p50_us and summary.p50_us is not None:
                summary.vs_reference_p50 = summary.p50_us / base.p50_us
            summaries.append(summary)
    return summaries


def _throughput_bound(record: RunRecord) -> bool:
    """True when a core was saturated and the proxy did a real share of the work (not a latency-bound run)."""
    proxy, load = record.proxy_cpu_busy_pct, record.load_cpu_busy_pct
    if proxy is None or load is None:
        return False
    return max(proxy, load) >= SATURATED_BUSY_PCT and proxy >= MIN_PROXY_BUSY_FOR_CAPACITY


def _short(text: str, limit: int = 160) -> str:
    """Table notes stay readable; the JSON output keeps the whole message."""
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def _cells(s: Summary) -> list[str]:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    spread = "-"
    if s.ops_min is not None and s.ops_max is not None and s.runs > 1:
        spread = f"{s.ops_min / 1000:,.0f}k..{s.ops_max / 1000:,.0f}k"
    cpu = "-"
    if s.proxy_cpu_pct is not None and s.load_cpu_pct is not None:
        cpu = f"{s.proxy_cpu_pct:.0f}%/{s.load_cpu_pct:.0f}%"
    return [
        s.target,
        num(s.ops_per_s, ",.0f"),
        num(s.p50_us, ",.1f"),
        num(s.p99_us, ",.1f"),
        "-" if s.vs_reference_ops_pct is None else f"{s.vs_reference_ops_pct:.0f}%",
        "-" if s.vs_reference_p50 is None else f"{s.vs_reference_p50:.2f}x",
        cpu,
        num(s.ops_per_proxy_core, ",.0f"),
        spread,
        "; ".join(s.notes),
    ]


HEADERS = [
    "target",
    "ops/s",
    "p50 us",
    "p99 us",
    "ops vs haproxy",
    "p50 vs haproxy",
    "cpu proxy/load",
    "ops/s per proxy core",
    "spread",
    "notes",
]


def print_tables(summaries: list[Summary], connections: list[int], meta: dict[str, Any]) -> None:
    """One table per connection count: rich when installed, plain text otherwise."""
    caption = f"median of {meta['rounds']} interleaved round(s), {meta['duration_s']}s each; {meta['pinning']}"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None  # type: ignore[assignment,misc]  # noqa: N806
    for n in connections:
        rows = [_cells(s) for s in summaries if s.connections == n]
        title = f"{n} connection{'s' if n != 1 else ''}"
        if Console is not None:
            table = Table(title=title, caption=caption)
            for i, header in enumerate(HEADERS):
                table.add_column(header, justify="right" if 0 < i < len(HEADERS) - 1 else "left", overflow="fold")
            for row in rows:
                table.add_row(*row)
            Console(width=max(160, shutil.get_terminal_size().columns)).print(table)
        else:
            print(f"\n{title} ({caption})")
            widths = [max(len(HEADERS[i]), *(len(r[i]) for r in rows)) for i in range(len(HEADERS))]
            print("  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)))
            for row in rows:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


LEGEND = """\
direct: the load side's own ceiling (load generator + backend share one core), not a proxy result.
cpu proxy/load: how busy each core was during the run; at 100% on the load core the proxy is not the limit.
ops/s per proxy core: ops/s / proxy-core busy share, the proxy's capacity if its core were saturated
(shown for throughput-bound runs: a core at >= 90% and the proxy core at >= 50%)."""
