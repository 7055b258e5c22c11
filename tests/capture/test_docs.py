"""The example at the top of docs/capture.md runs, on a real capture, and prints what it says it does."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from .helpers import FIXTURES

DOC = Path(__file__).resolve().parents[2] / "docs" / "capture.md"


def test_the_reading_example_runs_on_the_mongo_capture() -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert code is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), str(DOC), "exec"), {"path": FIXTURES / "mongo.any-sll2.nano.pcap"})
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"pcap \d+ \[\]", lines[-1])  # format, packets, no damage
    assert sum("2013" in line for line in lines) > 40  # OP_MSG requests and replies
    assert not any(line.startswith("missing") for line in lines)
