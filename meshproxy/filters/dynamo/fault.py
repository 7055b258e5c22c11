"""Fault injection for DynamoDB requests: a delay and a DynamoDB-shaped error, each for a share of requests.

Envoy's fault filter can abort an HTTP request with a status code, but not with a body a DynamoDB client
understands: an SDK retries a ``ThrottlingException`` with back-off and fails fast on a
``ValidationException``, and tells them apart only by ``__type``. Here an abort answers exactly what
DynamoDB would: the status DynamoDB uses for that error (400 for throttling, 500 for
``InternalServerError``, from ``meshproxy.codecs.dynamo.error_status``), its JSON body and a correct
``x-amz-crc32`` (botocore retries a response whose CRC does not match). Faults are matched by operation and
table, so one can throttle ``GetItem`` on ``orders`` only and watch the SDK's retries absorb it.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshproxy.codecs.dynamo import error_response
from meshproxy.filters._shared import BoundedCounters, FaultDice
from meshproxy.filters.dynamo.api import Delay, DynamoFilter, DynamoOperation, LocalResponse, RequestAction

if TYPE_CHECKING:
    from meshproxy.stats import StatsStore

MAX_OPERATION_STATS = 1000
"""Distinct per-operation fault counters kept (operation names come from botocore's model, but a bound
costs nothing)."""


@dataclass(slots=True, frozen=True)
class DynamoMatch:
    """Which requests a fault applies to: ``None`` means any. A request matches when its operation is one of
    ``operations`` and at least one of its tables is one of ``tables``."""

    operations: frozenset[str] | None = None
    tables: frozenset[str] | None = None


@dataclass(slots=True, frozen=True)
class DynamoDelay:
    seconds: float
    percentage: float = 100.0


@dataclass(slots=True, frozen=True)
class DynamoAbort:
    error_type: str = "ThrottlingException"
    """Any DynamoDB error ``__type``; the status follows from it (``error_status``)."""
    message: str = "Rate of requests exceeds the allowed throughput (injected by meshproxy)"
    percentage: float = 100.0


@dataclass(slots=True, frozen=True)
class DynamoFaultConfig:
    match: DynamoMatch = DynamoMatch()
    delay: DynamoDelay | None = None
    abort: DynamoAbort | None = None


class DynamoFaultFilter(DynamoFilter):
    """Delays and/or aborts matching requests; an abort wins when both fire (it answers at once)."""

    def __init__(
        self,
        config: DynamoFaultConfig,
        stats: StatsStore,
        prefix: str,
        *,
        random: _random.Random | None = None,
    ) -> None:
        self.config = config
        self.dice = FaultDice(random)
        self.random = self.dice.random
        labels = {"prefix": prefix}
        self.delay_injected = stats.counter(
            f"dynamodb.{prefix}.fault.delay_injected", prom="meshproxy_dynamodb_fault_delay_injected", labels=labels
        )
        self.abort_injected = stats.counter(
            f"dynamodb.{prefix}.fault.abort_injected", prom="meshproxy_dynamodb_fault_abort_injected", labels=labels
        )
        self._per_operation = BoundedCounters(
            lambda kind, operation: stats.counter(
                f"dynamodb.{prefix}.fault.operation.{operation}.{kind}",
                prom=f"meshproxy_dynamodb_fault_operation_{kind}",
                labels={"prefix": prefix, "operation": operation},
            ),
            MAX_OPERATION_STATS,
        )
        abort = config.abort
        self._abort_response: LocalResponse | None = None
        if abort is not None:
            status, headers, body = error_response(abort.error_type, abort.message)
            # Built once: the body never changes, so neither does its CRC.
            self._abort_response = LocalResponse(status, tuple(headers), body)

    def matches(self, op: DynamoOperation) -> bool:
        """Whether ``op`` is one the configured match selects (before the percentage is rolled)."""
        match = self.config.match
        if match.operations is not None and op.operation not in match.operations:
            return False
        return match.tables is None or any(table in match.tables for table in op.tables)

    def on_request(self, op: DynamoOperation) -> RequestAction | None:
        if not self.matches(op):
            return None
        config = self.config
        abort = config.abort
        if abort is not None and self._abort_response is not None and self.dice.roll(abort.percentage):
            self.abort_injected.value += 1
            self._per_operation.inc("abort_injected", op.operation or "-")
            return self._abort_response
        delay = config.delay
        if delay is not None and delay.seconds > 0 and self.dice.roll(delay.percentage):
            self.delay_injected.value += 1
            self._per_operation.inc("delay_injected", op.operation or "-")
            return Delay(delay.seconds)
        return None
