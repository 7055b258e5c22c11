"""``meshproxy decode FILE``: one line (or JSON object) per operation of a capture, or per-operation totals.

Damage is reported, never fatal: what the file could not give (``CaptureReport.damage``), bytes the capture
lost (gaps) and what the decoders could not take (``StreamNote``) go to stderr after the operations, and
the exit status is 0 when the file could be read at all, 1 when it could not be opened or is not a capture.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from meshproxy.capture import CaptureReport, Gap, read_packets, reassemble
from meshproxy.replay.operations import CaptureDecoder, CapturedOperation, StreamNote
from meshproxy.replay.report import quantile

OK_STATUSES = frozenset({"ok", "OK", "200"})


@dataclass(slots=True)
class DecodedCapture:
    """Everything ``decode_file`` learnt: operations in completion order, and what went wrong on the way."""

    operations: list[CapturedOperation]
    report: CaptureReport
    notes: list[StreamNote]
    protocols: dict[int, str]
    lost_bytes: int = 0
    """Bytes the capture did not have (gaps in TCP streams)."""
    gaps: list[Gap] = field(default_factory=list)


def iter_operations(
    path: str | Path, report: CaptureReport, decoder: CaptureDecoder, gaps: list[Gap], server_ports: Iterable[int] = ()
) -> Iterator[CapturedOperation]:
    """Operations of the capture at ``path`` as they complete (for large files: nothing is kept).

    ``server_ports`` tells client from server in connections whose handshake the capture did not see (it
    began mid-way): otherwise the side that spoke first is taken for the client, which is wrong for a
    connection caught while its server was streaming (a monitor's awaitable ``hello``)."""
    for event in reassemble(read_packets(path, report), server_ports=server_ports):
        if isinstance(event, Gap):
            gaps.append(event)
        yield from decoder.feed(event)
    yield from decoder.finish()


def decode_file(path: str | Path, server_ports: Iterable[int] = ()) -> DecodedCapture:
    report, decoder, gaps = CaptureReport(), CaptureDecoder(), list[Gap]()
    operations = list(iter_operations(path, report, decoder, gaps, server_ports))
    return DecodedCapture(operations, report, decoder.notes, decoder.protocols, sum(g.length for g in gaps), gaps)


def _time(ns: int) -> str:
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def format_line(op: CapturedOperation) -> str:
    latency = "-" if op.latency_ms is None else f"{op.latency_ms:.3f}ms"
    return (
        f"{_time(op.time_ns)} c{op.connection} {op.protocol} {op.operation} {op.namespace or '-'} "
        f"{op.status or 'no-answer'} {op.request_bytes}B/{op.response_bytes}B {latency}"
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summary_rows(operations: list[CapturedOperation]) -> list[dict[str, object]]:
    """Per (protocol, operation): count, errors, unanswered, bytes both ways, p50/p99 latency."""
    groups: dict[tuple[str, str], list[CapturedOperation]] = defaultdict(list)
    for op in operations:
        groups[(op.protocol, op.operation)].append(op)
    rows: list[dict[str, object]] = []
    for (protocol, operation), ops in sorted(groups.items()):
        latencies = [op.latency_ms for op in ops if op.latency_ms is not None]
        rows.append(
            {
                "protocol": protocol,
                "operation": operation,
                "count": len(ops),
                "errors": sum(1 for op in ops if op.status is not None and op.status not in OK_STATUSES),
                "unanswered": sum(1 for op in ops if op.status is None and op.latency_ms is None),
                "request_bytes": sum(op.request_bytes for op in ops),
                "response_bytes": sum(op.response_bytes for op in ops),
                "p50_ms": _rounded(quantile(latencies, 0.5)),
                "p99_ms": _rounded(quantile(latencies, 0.99)),
            }
        )
    return rows


def run_decode(
    path: str,
    *,
    as_json: bool,
    summary: bool,
    server_ports: Iterable[int] = (),
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``decode`` command: exit status 0 when ``path`` was read as a capture (damaged or not), else 1."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        return _decode_to(path, as_json=as_json, summary=summary, server_ports=server_ports, out=out, err=err)
    except BrokenPipeError:  # ``meshproxy decode big.pcap | head``: the reader is gone, and that is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _decode_to(
    path: str, *, as_json: bool, summary: bool, server_ports: Iterable[int], out: TextIO, err: TextIO
) -> int:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        print(f"meshproxy decode: cannot open {path}: {exc.strerror or exc}", file=err)
        return 1
    report, decoder, gaps = CaptureReport(), CaptureDecoder(), list[Gap]()
    operations: list[CapturedOperation] = []
    for op in iter_operations(path, report, decoder, gaps, server_ports):
        if summary:
            operations.append(op)
        elif as_json:
            print(json.dumps(op.as_json()), file=out)
        else:
            print(format_line(op), file=out)
    if summary:
        rows = summary_rows(operations)
        if as_json:
            print(json.dumps({"operations": rows}), file=out)
        else:
            header = ("protocol", "operation", "count", "errors", "no answer", "p50 ms", "p99 ms")
            print("{:9} {:40} {:>6} {:>6} {:>9} {:>9} {:>9}".format(*header), file=out)
            for row in rows:
                p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.3f}"
                p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.3f}"
                cells = (row["protocol"], row["operation"], row["count"], row["errors"], row["unanswered"], p50, p99)
                print("{!s:9} {!s:40} {!s:>6} {!s:>6} {!s:>9} {:>9} {:>9}".format(*cells), file=out)
    if report.format == "unknown":
        print(f"meshproxy decode: {path} is not a pcap or pcapng file", file=err)
        return 1
    for damage in report.damage:
        print(f"damage: at byte {damage.offset}: {damage.what}", file=err)
    for gap in gaps:
        print(
            f"gap: connection c{gap.conn.id} {gap.direction.value}: {gap.length} bytes missing at stream offset "
            f"{gap.offset} ({gap.reason})",
            file=err,
        )
    for note in decoder.notes:
        where = f"c{note.connection}" + (f" {note.direction}" if note.direction else "")
        print(f"note: connection {where}: {note.what}", file=err)
    return 0
