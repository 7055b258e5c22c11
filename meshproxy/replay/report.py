"""What a replay found: a summary table per operation, the differences, the lag, and an HTML report with
the latency distributions of the recording and of the replay side by side.

The HTML page is one self-contained file (no scripts, no external styles), so it can be attached to a ticket
or opened from CI artifacts as it is.
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from typing import TextIO

from meshproxy.replay.replayer import ReplayResult

BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, float("inf"))


@dataclass(slots=True)
class OperationRow:
    protocol: str
    operation: str
    replayed: int
    skipped: int
    differing: int
    recorded_p50: float | None
    replayed_p50: float | None
    recorded_p99: float | None
    replayed_p99: float | None


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rows(results: list[ReplayResult]) -> list[OperationRow]:
    groups: dict[tuple[str, str], list[ReplayResult]] = defaultdict(list)
    for result in results:
        groups[(result.recorded.protocol, result.recorded.operation)].append(result)
    table = []
    for (protocol, operation), group in sorted(groups.items()):
        sent = [r for r in group if r.skipped is None]
        recorded = [r.recorded.latency_ms for r in sent if r.recorded.latency_ms is not None]
        replayed = [r.latency_ms for r in sent if r.latency_ms is not None]
        table.append(
            OperationRow(
                protocol, operation, len(sent), len(group) - len(sent), sum(1 for r in group if r.differences),
                quantile(recorded, 0.5), quantile(replayed, 0.5), quantile(recorded, 0.99), quantile(replayed, 0.99),
            )
        )
    return table


def lag_summary(results: list[ReplayResult]) -> dict[str, float | None]:
    lags = [r.lag_ms for r in results if r.lag_ms is not None]
    return {"p50_ms": quantile(lags, 0.5), "p99_ms": quantile(lags, 0.99), "max_ms": max(lags) if lags else None}


def differences(results: list[ReplayResult]) -> list[str]:
    lines = []
    for result in results:
        op = result.recorded
        for difference in result.differences:
            lines.append(f"c{op.connection} {op.protocol} {op.operation} {op.namespace or '-'}: {difference}")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_text(results: list[ReplayResult], out: TextIO, *, elapsed_s: float) -> None:
    sent = sum(1 for r in results if r.skipped is None)
    print(f"{'protocol':9} {'operation':32} {'sent':>5} {'skip':>5} {'diff':>5} "
          f"{'rec p50':>9} {'rep p50':>9} {'rec p99':>9} {'rep p99':>9}", file=out)  # fmt: skip
    for row in rows(results):
        print(
            f"{row.protocol:9} {row.operation[:32]:32} {row.replayed:>5} {row.skipped:>5} {row.differing:>5} "
            f"{_ms(row.recorded_p50):>9} {_ms(row.replayed_p50):>9} {_ms(row.recorded_p99):>9} "
            f"{_ms(row.replayed_p99):>9}",
            file=out,
        )
    lag = lag_summary(results)
    rate = sent / elapsed_s if elapsed_s > 0 else 0.0
    print(
        f"\n{sent} sent, {len(results) - sent} skipped, in {elapsed_s:.2f}s ({rate:.1f}/s); lag behind the schedule: "
        f"p50 {_ms(lag['p50_ms'])} ms, p99 {_ms(lag['p99_ms'])} ms, max {_ms(lag['max_ms'])} ms",
        file=out,
    )
    found = differences(results)
    print(f"{len(found)} difference(s)" + (":" if found else ""), file=out)
    for line in found:
        print(f"  {line}", file=out)


def _histogram(values: list[float]) -> list[int]:
    counts = [0] * len(BUCKETS_MS)
    for value in values:
        for index, bound in enumerate(BUCKETS_MS):
            if value <= bound:
                counts[index] += 1
                break
    return counts


def write_html(results: list[ReplayResult], out: TextIO, *, title: str, elapsed_s: float) -> None:
    """The report as one HTML page: summary, differences, lag, and per-operation latency histograms."""
    esc = html.escape
    parts = [
        "<!doctype html><meta charset=utf-8>",
        f"<title>{esc(title)}</title>",
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,td:nth-child(2){text-align:left}"
        ".bar{display:inline-block;height:10px}.rec{background:#88a}.rep{background:#e93}</style>",
        f"<h1>{esc(title)}</h1>",
    ]
    lag = lag_summary(results)
    sent = sum(1 for r in results if r.skipped is None)
    parts.append(
        f"<p>{sent} operations sent, {len(results) - sent} skipped, in {elapsed_s:.2f} s. Lag behind the recorded "
        f"schedule: p50 {_ms(lag['p50_ms'])} ms, p99 {_ms(lag['p99_ms'])} ms, max {_ms(lag['max_ms'])} ms.</p>"
    )
    parts.append(
        "<h2>Operations</h2><table><tr><th>protocol<th>operation<th>sent<th>skipped<th>differing"
        "<th>recorded p50 ms<th>replayed p50 ms<th>recorded p99 ms<th>replayed p99 ms</tr>"
    )
    for row in rows(results):
        parts.append(
            f"<tr><td>{esc(row.protocol)}<td>{esc(row.operation)}<td>{row.replayed}<td>{row.skipped}"
            f"<td>{row.differing}<td>{_ms(row.recorded_p50)}<td>{_ms(row.replayed_p50)}"
            f"<td>{_ms(row.recorded_p99)}<td>{_ms(row.replayed_p99)}</tr>"
        )
    parts.append("</table>")
    found = differences(results)
    parts.append(f"<h2>Differences ({len(found)})</h2><ul>")
    parts += [f"<li>{esc(line)}</li>" for line in found] or ["<li>none</li>"]
    parts.append("</ul><h2>Latency distributions (recorded vs replayed)</h2>")
    groups: dict[str, list[ReplayResult]] = defaultdict(list)
    for result in results:
        if result.skipped is None:
            groups[f"{result.recorded.protocol} {result.recorded.operation}"].append(result)
    for name, group in sorted(groups.items()):
        recorded = _histogram([r.recorded.latency_ms for r in group if r.recorded.latency_ms is not None])
        replayed = _histogram([r.latency_ms for r in group if r.latency_ms is not None])
        top = max([*recorded, *replayed, 1])
        parts.append(f"<h3>{esc(name)}</h3><table><tr><th>≤ ms<th>recorded<th>replayed<th></tr>")
        for bound, before, after in zip(BUCKETS_MS, recorded, replayed, strict=True):
            if not before and not after:
                continue
            label = "more" if bound == float("inf") else f"{bound:g}"
            parts.append(
                f"<tr><td>{label}<td>{before}<td>{after}<td style=text-align:left>"
                f"<span class='bar rec' style=width:{200 * before // top}px></span><br>"
                f"<span class='bar rep' style=width:{200 * after // top}px></span></tr>"
            )
        parts.append("</table>")
    out.write("\n".join(parts) + "\n")
