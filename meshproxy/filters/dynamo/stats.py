"""Per-operation and per-table DynamoDB statistics: everything Envoy's dynamo filter counts, without its gaps.

Envoy counts requests per operation and per table, by response code class and code, with latency
histograms; errors per table and ``__type`` (16 known types, 4xx only); ``BatchFailureUnprocessedKeys``;
and, from a pre-release ``ConsumedCapacity.Partitions`` field, capacity per partition. It keeps per-table
stats only when a batch names a single table. This filter keeps Envoy's names (under
``dynamodb.<prefix>.`` instead of ``http.<prefix>.dynamodb.``, see ``docs/dynamo.md``) and meanings, and
adds: every error type on any status, ``UnprocessedItems`` next to ``UnprocessedKeys``, per-table stats for
*every* table of a batch or a transaction, consumed capacity (read / write / total, exact, in milli-units)
per table and operation, an in-flight gauge, and a bounded top-K of hot partition keys per table.

Hot path: the stat objects of one ``(operation, tables)`` pair and of one status code are built once and
cached; a request then costs a few dict lookups and ``counter.value += 1``s. The only extra work is the
hot-key sketch, one dict update (an O(K) eviction when a new key arrives at a full sketch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshproxy.filters._shared import OVERFLOW
from meshproxy.filters.dynamo.api import ConnectionInfo, DynamoFilter, DynamoOperation

if TYPE_CHECKING:
    from meshproxy.stats import Counter, Gauge, Histogram, StatsStore

NO_TABLE = "-"
"""Table label of errors of requests that name no table (``ListTables``, a request without a body)."""


DEFAULT_MAX_KEYS = 10_000
"""Distinct tables (and operation x table pairs) with stats of their own."""

MAX_ERROR_TYPES = 200
"""Distinct error types per table (DynamoDB's model defines a few dozen)."""

MAX_PARTITIONS = 1_000
"""Distinct ``__partition_id`` stats in all (only a pre-release DynamoDB feature sends them)."""

HOT_KEYS = 100
"""Entries of each table's hot-partition-key sketch (space-saving: the top keys with their counts)."""

KEY_OPERATIONS = frozenset({"GetItem", "PutItem", "UpdateItem", "DeleteItem"})
"""Operations whose partition key feeds the hot-key sketch (and ``Query``, from its key condition)."""

_EQUALITY = re.compile(r"([#:]?[A-Za-z0-9_.-]+)\s*=\s*([#:]?[A-Za-z0-9_.-]+)")
"""``a = b`` in a key condition expression (``pk = :c``, ``#p = :v``, ``:v = pk``); ``<=`` and ``>=`` cannot
match because their left side would end in ``<`` / ``>``, which the operand pattern excludes."""

SCHEMA_OPERATIONS = frozenset({"CreateTable", "DescribeTable"})
"""Operations whose request or response carries a table's ``KeySchema`` (learned for the hot-key sketch)."""

MILLI = 1000
"""Capacity units are counted in thousandths: DynamoDB reports multiples of 0.5 units (or less with
``ReturnConsumedCapacity`` on indexes), and integer counters keep sums exact."""


def _labels(prefix: str, **more: str) -> dict[str, str]:
    return {"prefix": prefix, **more}


class SpaceSaving:
    """Metwally et al.'s space-saving top-K: at most ``capacity`` keys, each with an over-estimate of its
    count; any key seen more than ``total / capacity`` times is guaranteed to be present.

    A new key at a full sketch replaces the key with the smallest count and inherits that count plus one,
    which is why counts are upper bounds (the error of each is at most the evicted minimum)."""

    __slots__ = ("_floor", "_victims", "capacity", "counts", "total")

    def __init__(self, capacity: int = HOT_KEYS) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.total = 0
        self._victims: list[str] = []
        """Keys that had the smallest count ``_floor`` at the last scan: eviction candidates."""
        self._floor = 0

    def add(self, key: str) -> None:
        self.total += 1
        counts = self.counts
        n = counts.get(key)
        if n is not None:
            counts[key] = n + 1
            return
        if len(counts) < self.capacity:
            counts[key] = 1
            return
        # Evict a key with the smallest count. Counts only grow and newcomers enter above the floor, so a
        # candidate still at ``_floor`` is a minimum; one O(K) scan serves every eviction until the
        # candidates run out (amortised O(1) when many keys share the minimum, the usual case).
        victims = self._victims
        while True:
            if not victims:
                self._floor = min(counts.values())
                floor = self._floor
                victims.extend(k for k, c in counts.items() if c == floor)
            victim = victims.pop()
            if counts.get(victim) == self._floor:
                break
        del counts[victim]
        counts[key] = self._floor + 1

    def top(self) -> list[tuple[str, int]]:
        """Keys by count, highest first (ties by key, so the order is stable)."""
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass(slots=True)
class _StatusStats:
    total: Counter
    total_class: Counter
    time: Histogram
    time_class: Histogram


@dataclass(slots=True)
class _EntityStats:
    """Envoy's ``operation.<op>.*`` or ``table.<table>.*``."""

    kind: str
    name: str
    total: Counter
    time: Histogram
    by_status: dict[int, _StatusStats] = field(default_factory=dict)


@dataclass(slots=True)
class _CapacityStats:
    """``table.<table>.capacity.<op>.*``: consumed capacity in milli-units."""

    total: Counter
    read: Counter
    write: Counter


@dataclass(slots=True)
class _Resolved:
    """The stat bundles of one ``(operation, tables)`` pair."""

    operation: _EntityStats | None
    tables: tuple[_EntityStats, ...]


class DynamoStatsFilter(DynamoFilter):
    """Counts every request and response; see ``docs/dynamo.md`` for the full table of names."""

    def __init__(
        self,
        stats: StatsStore,
        prefix: str,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        hot_keys: int = HOT_KEYS,
    ) -> None:
        self.store = stats
        self.prefix = prefix
        self.max_keys = max_keys
        self.hot_key_capacity = hot_keys
        """0 keeps no sketch at all."""
        self._scope = f"dynamodb.{prefix}."
        labels = _labels(prefix)

        def counter(name: str) -> Counter:
            return stats.counter(self._scope + name, prom=f"meshproxy_dynamodb_{name}", labels=labels)

        self.operation_missing = counter("operation_missing")
        self.operation_unknown = counter("operation_unknown")
        self.table_missing = counter("table_missing")
        self.multiple_tables = counter("multiple_tables")
        self.invalid_req_body = counter("invalid_req_body")
        self.invalid_resp_body = counter("invalid_resp_body")
        self.rq_total = counter("rq_total")
        self.local_response = counter("local_response")
        self.request_bytes = counter("request_bytes")
        self.response_bytes = counter("response_bytes")
        self.rq_active: Gauge = stats.gauge(
            self._scope + "rq_active", prom="meshproxy_dynamodb_rq_active", labels=labels
        )
        self._resolved: dict[tuple[str | None, tuple[str, ...]], _Resolved] = {}
        self._entities: dict[tuple[str, str], _EntityStats] = {}
        self._errors: dict[tuple[str, str], Counter] = {}
        self._errors_per_table: dict[str, int] = {}
        self._capacity: dict[tuple[str, str], _CapacityStats] = {}
        self._unprocessed: dict[tuple[str, str], Counter] = {}
        self._partitions: dict[tuple[str, str, str], Counter] = {}
        self._hot: dict[str, SpaceSaving] = {}
        self._hash_keys: dict[str, str] = {}
        self._active_by_connection: dict[int, int] = {}

    # -- resolution (once per key) -------------------------------------------------------------------

    def _entity(self, kind: str, name: str) -> _EntityStats:
        stats = self._entities.get((kind, name))
        if stats is not None:
            return stats
        if len(self._entities) >= self.max_keys:
            name = OVERFLOW
            stats = self._entities.get((kind, name))
            if stats is not None:
                return stats
        labels = _labels(self.prefix, **{kind: name})
        scope = f"{self._scope}{kind}.{name}."
        stats = _EntityStats(
            kind=kind,
            name=name,
            total=self.store.counter(
                scope + "upstream_rq_total", prom=f"meshproxy_dynamodb_{kind}_upstream_rq", labels=labels
            ),
            time=self.store.histogram(
                scope + "upstream_rq_time", prom=f"meshproxy_dynamodb_{kind}_upstream_rq_time_ms", labels=labels
            ),
        )
        self._entities[(kind, name)] = stats
        return stats

    def _status(self, entity: _EntityStats, status: int) -> _StatusStats:
        stats = entity.by_status.get(status)
        if stats is not None:
            return stats
        store = self.store
        kind = entity.kind
        scope = f"{self._scope}{kind}.{entity.name}."
        klass = f"{status // 100}xx"
        code_labels = _labels(self.prefix, **{kind: entity.name}, code=str(status))
        class_labels = _labels(self.prefix, **{kind: entity.name}, code_class=klass)
        family = f"meshproxy_dynamodb_{kind}_upstream_rq"
        stats = _StatusStats(
            total=store.counter(f"{scope}upstream_rq_total_{status}", prom=f"{family}_by_code", labels=code_labels),
            total_class=store.counter(
                f"{scope}upstream_rq_total_{klass}", prom=f"{family}_by_class", labels=class_labels
            ),
            time=store.histogram(
                f"{scope}upstream_rq_time_{status}", prom=f"{family}_time_by_code_ms", labels=code_labels
            ),
            time_class=store.histogram(
                f"{scope}upstream_rq_time_{klass}", prom=f"{family}_time_by_class_ms", labels=class_labels
            ),
        )
        entity.by_status[status] = stats
        return stats

    def _resolve(self, op: DynamoOperation) -> _Resolved:
        key = (op.operation, op.tables)
        resolved = self._resolved.get(key)
        if resolved is None:
            operation = self._entity("operation", op.operation) if op.operation is not None else None
            tables = tuple(self._entity("table", t) for t in dict.fromkeys(op.tables))
            resolved = _Resolved(operation, tables)
            if len(self._resolved) < self.max_keys:
                self._resolved[key] = resolved
        return resolved

    def _error(self, table: str, error_type: str) -> Counter:
        counter = self._errors.get((table, error_type))
        if counter is None:
            seen = self._errors_per_table.get(table, 0)
            if seen >= MAX_ERROR_TYPES or len(self._errors) >= self.max_keys:
                error_type = OVERFLOW
                counter = self._errors.get((table, error_type))
                if counter is not None:
                    return counter
            counter = self.store.counter(
                f"{self._scope}error.{table}.{error_type}",
                prom="meshproxy_dynamodb_error",
                labels=_labels(self.prefix, table=table, error_type=error_type),
            )
            self._errors[(table, error_type)] = counter
            self._errors_per_table[table] = seen + 1
        return counter

    def _capacity_stats(self, table: str, operation: str) -> _CapacityStats:
        stats = self._capacity.get((table, operation))
        if stats is None:
            if len(self._capacity) >= self.max_keys:
                table = OVERFLOW
                found = self._capacity.get((table, operation))
                if found is not None:
                    return found
            labels = _labels(self.prefix, table=table, operation=operation)
            scope = f"{self._scope}table.{table}.capacity.{operation}."
            family = "meshproxy_dynamodb_consumed_"
            stats = _CapacityStats(
                total=self.store.counter(
                    scope + "consumed_milliunits", prom=family + "capacity_milliunits", labels=labels
                ),
                read=self.store.counter(
                    scope + "consumed_read_milliunits", prom=family + "read_capacity_milliunits", labels=labels
                ),
                write=self.store.counter(
                    scope + "consumed_write_milliunits", prom=family + "write_capacity_milliunits", labels=labels
                ),
            )
            self._capacity[(table, operation)] = stats
        return stats

    def _unprocessed_counter(self, table: str, kind: str) -> Counter:
        counter = self._unprocessed.get((table, kind))
        if counter is None:
            if len(self._unprocessed) >= self.max_keys:
                table = OVERFLOW
                found = self._unprocessed.get((table, kind))
                if found is not None:
                    return found
            counter = self.store.counter(
                f"{self._scope}table.{table}.{kind}",
                prom=f"meshproxy_dynamodb_table_{kind}",
                labels=_labels(self.prefix, table=table),
            )
            self._unprocessed[(table, kind)] = counter
        return counter

    def _partition(self, table: str, operation: str, partition: str) -> Counter:
        key = (table, operation, partition)
        counter = self._partitions.get(key)
        if counter is None:
            if len(self._partitions) >= MAX_PARTITIONS:
                key = (table, operation, OVERFLOW)
                partition = OVERFLOW
                found = self._partitions.get(key)
                if found is not None:
                    return found
            counter = self.store.counter(
                f"{self._scope}table.{table}.capacity.{operation}.__partition_id={partition}",
                prom="meshproxy_dynamodb_partition_capacity",
                labels=_labels(self.prefix, table=table, operation=operation, partition_id=partition),
            )
            self._partitions[key] = counter
        return counter

    # -- hooks ----------------------------------------------------------------------------------------

    def on_request(self, op: DynamoOperation) -> None:
        self.rq_total.value += 1
        self.request_bytes.value += op.request_size
        self.rq_active.value += 1
        conn = op.connection.id
        self._active_by_connection[conn] = self._active_by_connection.get(conn, 0) + 1
        request = op.request
        n = len(request.tables)
        if request.operation is None:
            if request.operation_missing:
                self.operation_missing.value += 1
            else:
                self.operation_unknown.value += 1
        else:
            if n == 0:
                self.table_missing.value += 1
            elif n > 1:
                self.multiple_tables.value += 1
        if request.invalid_body:
            self.invalid_req_body.value += 1
            return
        if request.operation in KEY_OPERATIONS and n == 1:
            self._hot_key(request.tables[0], request.document)
        elif request.operation == "Query" and n == 1:
            self._query_key(request.tables[0], request.document)
        elif request.operation == "CreateTable":
            self._learn_schema(request.tables, request.document)

    def on_response(self, op: DynamoOperation) -> None:
        conn = op.connection.id
        active = self._active_by_connection.get(conn, 0)
        if active > 0:
            self.rq_active.value -= 1
            if active == 1:
                del self._active_by_connection[conn]
            else:
                self._active_by_connection[conn] = active - 1
        response = op.response
        if response is None:
            return
        self.response_bytes.value += op.response_size
        if op.local_response:
            self.local_response.value += 1
        if response.invalid_body:
            self.invalid_resp_body.value += 1
        resolved = self._resolve(op)
        status = response.status
        ms = op.duration_ms
        for entity in (resolved.operation, *resolved.tables) if resolved.operation else resolved.tables:
            entity.total.value += 1
            entity.time.record(ms)
            by_status = entity.by_status.get(status) or self._status(entity, status)
            by_status.total.value += 1
            by_status.total_class.value += 1
            by_status.time.record(ms)
            by_status.time_class.record(ms)
        error_type = response.error_type
        if error_type is not None:
            for table in op.tables or (NO_TABLE,):
                self._error(table, error_type).value += 1
        operation = op.operation
        if operation is None:
            return
        for capacity in response.consumed_capacity:
            stats = self._capacity_stats(capacity.table, operation)
            if capacity.capacity_units is not None:
                stats.total.value += round(capacity.capacity_units * MILLI)
            if capacity.read_capacity_units is not None:
                stats.read.value += round(capacity.read_capacity_units * MILLI)
            if capacity.write_capacity_units is not None:
                stats.write.value += round(capacity.write_capacity_units * MILLI)
        for table, n in response.unprocessed_keys:
            self._error(table, "BatchFailureUnprocessedKeys").value += 1
            self._unprocessed_counter(table, "unprocessed_keys").value += n
        for table, n in response.unprocessed_items:
            self._error(table, "BatchFailureUnprocessedItems").value += 1
            self._unprocessed_counter(table, "unprocessed_items").value += n
        document = response.document
        if document is not None and len(op.tables) == 1:
            consumed = document.get("ConsumedCapacity")
            if type(consumed) is dict and type(consumed.get("Partitions")) is dict:
                self._count_partitions(op.tables[0], operation, consumed["Partitions"])
            if operation in SCHEMA_OPERATIONS:
                description = document.get("TableDescription", document.get("Table"))
                if type(description) is dict:
                    self._learn_schema(op.tables, description)

    def on_connection_close(self, connection: ConnectionInfo, *, active_operations: int, local: bool) -> None:
        """Requests that will never see a response leave the in-flight gauge with their connection."""
        self.rq_active.value -= self._active_by_connection.pop(connection.id, 0)

    # -- partitions and hot keys ----------------------------------------------------------------------

    def _count_partitions(self, table: str, operation: str, partitions: dict[str, Any]) -> None:
        """Envoy's ``capacity.<op>.__partition_id=<last 7 characters>``, by the capacity each consumed."""
        for partition_id, units in partitions.items():
            if type(units) in (int, float) and units >= 0:
                self._partition(table, operation, str(partition_id)[-7:]).value += int(units)

    def _learn_schema(self, tables: tuple[str, ...], document: dict[str, Any] | None) -> None:
        if document is None or len(tables) != 1:
            return
        schema = document.get("KeySchema")
        if type(schema) is not list:
            return
        for element in schema:
            if type(element) is dict and element.get("KeyType") == "HASH" and type(element.get("AttributeName")) is str:
                if tables[0] in self._hash_keys or len(self._hash_keys) < self.max_keys:
                    self._hash_keys[tables[0]] = element["AttributeName"]
                return

    def _hot_key(self, table: str, document: dict[str, Any] | None) -> None:
        if document is None:
            return
        key = document.get("Key", document.get("Item"))
        if type(key) is not dict or not key:
            return
        attribute = self._hash_keys.get(table)
        if attribute is None:
            if len(key) != 1:
                return  # a key of two attributes: which one is the partition key is not known yet
            attribute = next(iter(key))
        self._count_key(table, key.get(attribute))

    def _query_key(self, table: str, document: dict[str, Any] | None) -> None:
        """The partition key of a ``Query`` on the table itself (an index has a partition key of its own):
        ``KeyConditionExpression``'s ``<hash key> = :value``, or the legacy ``KeyConditions``' ``EQ``."""
        attribute = self._hash_keys.get(table)
        if document is None or attribute is None or "IndexName" in document:
            return
        expression = document.get("KeyConditionExpression")
        if type(expression) is str:
            names = document.get("ExpressionAttributeNames")
            values = document.get("ExpressionAttributeValues")
            if type(values) is not dict:
                return
            for left, right in _EQUALITY.findall(expression):
                name, placeholder = (right, left) if left.startswith(":") else (left, right)
                if not placeholder.startswith(":") or name.startswith(":"):
                    continue
                if name.startswith("#"):
                    name = names.get(name) if type(names) is dict else None
                if name == attribute:
                    self._count_key(table, values.get(placeholder))
                    return
            return
        conditions = document.get("KeyConditions")
        if type(conditions) is dict:
            condition = conditions.get(attribute)
            if type(condition) is dict and condition.get("ComparisonOperator") == "EQ":
                operands = condition.get("AttributeValueList")
                if type(operands) is list and len(operands) == 1:
                    self._count_key(table, operands[0])

    def _count_key(self, table: str, value: Any) -> None:
        """Count one partition-key attribute value (``{"S": "c1"}``) in the table's sketch."""
        if type(value) is not dict or len(value) != 1:
            return
        [raw] = value.values()
        if type(raw) is not str:
            return
        sketch = self._hot.get(table)
        if sketch is None:
            if len(self._hot) >= self.max_keys or not self.hot_key_capacity:
                return
            sketch = self._hot[table] = SpaceSaving(self.hot_key_capacity)
        sketch.add(raw)

    def hot_keys(self, table: str) -> list[tuple[str, int]]:
        """The table's hottest partition-key values with (over-)estimated request counts, hottest first.

        Values are the attribute value as sent (``S`` and ``N`` as text, ``B`` as its base64). The partition
        key attribute is learned from ``CreateTable`` / ``DescribeTable``; before that only single-attribute
        keys (hash-only tables) are counted."""
        sketch = self._hot.get(table)
        return sketch.top() if sketch is not None else []

    def hot_tables(self) -> list[str]:
        """Tables that have a hot-key sketch."""
        return sorted(self._hot)
