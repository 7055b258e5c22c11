"""Pieces every protocol's filters use the same way: an access-log sink, fault dice, bounded per-name stats.

They live here once so that the Mongo and DynamoDB filters (and gRPC's later) differ only in what they
know about their protocol.
"""

from __future__ import annotations

import json
import random as _random
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from meshproxy.stats import Counter

STDOUT = "stdout"
STDERR = "stderr"

OVERFLOW = "_overflow"
"""The label that replaces a name (command, collection, table, error type, ...) once a filter has seen its
bound of distinct ones: such names come from clients and upstreams, and without a bound they could grow the
stats store without limit."""


def now_rfc3339() -> str:
    """The current time as an RFC 3339 UTC timestamp with milliseconds (``2026-11-25T08:46:00.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLineSink:
    """One JSON object per line to a file (appended to, line-buffered), ``stdout`` or ``stderr``."""

    def __init__(self, path: str = STDOUT) -> None:
        self.path = path
        self._file: IO[str] | None = None
        if path not in (STDOUT, STDERR):
            self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        if self._file is not None:
            self._file.write(line)
            return
        # Looked up at each write so that a redirected sys.stdout (tests, daemons) is honoured.
        stream = sys.stdout if self.path == STDOUT else sys.stderr
        stream.write(line)
        stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FaultDice:
    """Decides whether a fault configured for ``percentage`` % of requests fires this time."""

    def __init__(self, random: _random.Random | None = None) -> None:
        self.random = random if random is not None else _random.Random()

    def roll(self, percentage: float) -> bool:
        if percentage >= 100.0:
            return True
        if percentage <= 0.0:
            return False
        return self.random.random() * 100.0 < percentage


class BoundedCounters:
    """Counters keyed by (kind, name) where the name comes from clients (a command, an operation): past
    ``limit`` distinct keys, new names count under ``_overflow``, so a client cannot grow the stats without
    bound. ``build(kind, name)`` registers the counter the first time a key is seen."""

    def __init__(self, build: Callable[[str, str], Counter], limit: int) -> None:
        self._build = build
        self._limit = limit
        self._counters: dict[tuple[str, str], Counter] = {}

    def inc(self, kind: str, name: str) -> None:
        counter = self._counters.get((kind, name))
        if counter is None:
            if len(self._counters) >= self._limit:
                name = OVERFLOW
                counter = self._counters.get((kind, name))
            if counter is None:
                counter = self._counters[(kind, name)] = self._build(kind, name)
        counter.value += 1
