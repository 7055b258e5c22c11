"""``meshproxy replay FILE --target HOST:PORT``: decode a capture, replay it, print (and write) the report.

Exit status: 0 when every replayed operation answered as recorded, 3 when there were differences (so a CI
job can fail on them), 1 when the capture or the target could not be used.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from meshproxy.replay.decode import decode_file
from meshproxy.replay.operations import CapturedOperation
from meshproxy.replay.replayer import ReplayOptions, ReplayResult, replay, select
from meshproxy.replay.report import write_html, write_text

EXIT_DIFFERENCES = 3


@dataclass(slots=True)
class ReplayRun:
    results: list[ReplayResult]
    elapsed_s: float


def run_replay(path: str, options: ReplayOptions, *, report_path: str | None = None, out: TextIO | None = None,
               err: TextIO | None = None, progress: bool | None = None) -> int:  # fmt: skip
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        decoded = decode_file(path)
    except OSError as exc:
        print(f"meshproxy replay: cannot open {path}: {exc.strerror or exc}", file=err)
        return 1
    if decoded.report.format == "unknown":
        print(f"meshproxy replay: {path} is not a pcap or pcapng file", file=err)
        return 1
    for note in decoded.notes:
        print(f"note: connection c{note.connection}: {note.what}", file=err)
    show = err.isatty() if progress is None else progress
    began = time.perf_counter()
    try:
        results = asyncio.run(_with_progress(decoded.operations, options, show, err))
    except OSError as exc:
        host, port = options.target
        print(f"meshproxy replay: cannot reach {host}:{port}: {exc}", file=err)
        return 1
    elapsed = time.perf_counter() - began
    write_text(results, out, elapsed_s=elapsed)
    if report_path is not None:
        with open(report_path, "w", encoding="utf-8") as page:
            write_html(results, page, title=f"meshproxy replay of {Path(path).name}", elapsed_s=elapsed)
        print(f"report written to {report_path}", file=out)
    return EXIT_DIFFERENCES if any(r.differences for r in results) else 0


async def _with_progress(
    operations: list[CapturedOperation], options: ReplayOptions, show: bool, err: TextIO
) -> list[ReplayResult]:
    if not show:
        return await replay(operations, options)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=err), transient=True) as bar:
        task = bar.add_task("replaying", total=len(select(operations, options)))
        return await replay(operations, options, progress=lambda _: bar.advance(task))
