"""Per-operation MongoDB statistics: everything Envoy's mongo_proxy counts, and what it cannot see.

Envoy decodes only the legacy opcodes (its issue #5036), so it goes blind after the handshake with every
driver since MongoDB 3.6. This filter keeps Envoy's names and meanings (``op_query``, ``cmd.<cmd>.total``,
``collection.<coll>.query.*``, callsite stats, scatter / multi gets, ...) and applies them to OP_MSG and
OP_COMPRESSED as well: a ``find`` in OP_MSG is a query, a ``getMore`` is a get-more. On top of that every
command is a first-class operation, counted per database + collection + command, with latency histograms,
errors by ``codeName``, the cursor lifecycle, bytes in and out and an active-operations gauge.

The hot path matters: the proxy's throughput is bounded by per-message Python work. So a request costs a few
dict lookups (the stat objects of one ``(db, collection, command)`` are built once and cached under that
tuple) and a handful of counter increments. The request document is never decoded, except the ``filter`` /
``maxTimeMS`` / comment of a query (Envoy's query stats need them) and the cursor list of a
``killCursors``; replies are read only through ``summarize_reply``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from meshproxy.codecs.mongo import (
    EXHAUST_ALLOWED,
    MORE_TO_COME,
    Compressor,
    OpCompressed,
    OpGetMore,
    OpMsg,
    OpQuery,
    summarize_reply,
)
from meshproxy.filters._shared import OVERFLOW
from meshproxy.filters.mongo._error_names import code_name, write_error_name
from meshproxy.filters.mongo._query_shape import (
    MULTI_GET,
    SCATTER_GET,
    killed_cursor_count,
    query_info,
    reply_payload_size,
)
from meshproxy.filters.mongo.api import ConnectionInfo, MongoFilter, MongoOperation
from meshproxy.stats import StatsError

if TYPE_CHECKING:
    from meshproxy.codecs.mongo import PlainMessage
    from meshproxy.stats import Counter, Gauge, Histogram, StatsStore

NO_COLLECTION = "-"
"""Collection (and database) label of commands that name none (``hello``, ``ping``, ``killCursors`` on the
legacy opcode, ...)."""

DEFAULT_MAX_KEYS = 10_000

_MAX_ERROR_NAMES = 200
"""Distinct ``codeName``s kept per command (MongoDB has a few hundred error codes in all)."""

K = TypeVar("K")
S = TypeVar("S")

QUERY_COMMANDS = frozenset({"find", "query"})
"""Operations Envoy's query stats describe: ``find`` (OP_MSG or ``$cmd``) and legacy OP_QUERY on a
collection (command ``query``)."""

GET_MORE_COMMANDS = frozenset({"getMore"})


_ENVOY_OP_COUNTERS = {
    "insert": "op_insert",
    "getMore": "op_get_more",
    "killCursors": "op_kill_cursors",
    "find": "op_query",
    "query": "op_query",
}
"""Envoy counts OP_INSERT / OP_GET_MORE / OP_KILL_CURSORS / OP_QUERY messages; we count the operation
whatever opcode carried it."""


NUM_DOCS_BUCKETS: tuple[float, ...] = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000, 100000)
"""Bucket bounds of ``reply_num_docs`` histograms (documents per reply)."""

SIZE_BUCKETS: tuple[float, ...] = (*(float(64 * 4**i) for i in range(10)), 48_000_000.0, 67_108_864.0)
"""Bucket bounds of ``reply_size`` histograms: 64 B, 256 B, 1 KiB ... 64 MiB (and the 48 MB message limit)."""


def _name(name: str | None) -> str:
    """A database / collection / command / callsite as it appears in stats: ``-`` when missing or empty.

    Anything else is kept as sent; the stats store escapes whitespace in flat names and labels keep it."""
    return name or NO_COLLECTION


def _label_prefix(prefix: str) -> dict[str, str]:
    return {"prefix": prefix}


@dataclass(slots=True)
class _Globals:
    op_get_more: Counter
    op_insert: Counter
    op_kill_cursors: Counter
    op_query: Counter
    op_query_tailable_cursor: Counter
    op_query_no_cursor_timeout: Counter
    op_query_await_data: Counter
    op_query_exhaust: Counter
    op_query_no_max_time: Counter
    op_query_scatter_get: Counter
    op_query_multi_get: Counter
    op_query_active: Gauge
    op_reply: Counter
    op_reply_cursor_not_found: Counter
    op_reply_query_failure: Counter
    op_reply_valid_cursor: Counter
    cx_destroy_local_with_active_rq: Counter
    cx_destroy_remote_with_active_rq: Counter
    op_msg: Counter
    op_msg_more_to_come: Counter
    op_reply_more_to_come: Counter
    op_compressed: Counter
    op_legacy: Counter
    op_active: Gauge
    bytes_in: Counter
    bytes_out: Counter
    cursor_opened: Counter
    cursor_exhausted: Counter
    cursor_killed: Counter
    cursor_not_found: Counter
    unclassified_error: Counter


_GLOBAL_COUNTERS: dict[str, str] = {
    # Envoy-compatible.
    "op_get_more": "meshproxy_mongo_op_get_more",
    "op_insert": "meshproxy_mongo_op_insert",
    "op_kill_cursors": "meshproxy_mongo_op_kill_cursors",
    "op_query": "meshproxy_mongo_op_query",
    "op_query_tailable_cursor": "meshproxy_mongo_op_query_tailable_cursor",
    "op_query_no_cursor_timeout": "meshproxy_mongo_op_query_no_cursor_timeout",
    "op_query_await_data": "meshproxy_mongo_op_query_await_data",
    "op_query_exhaust": "meshproxy_mongo_op_query_exhaust",
    "op_query_no_max_time": "meshproxy_mongo_op_query_no_max_time",
    "op_query_scatter_get": "meshproxy_mongo_op_query_scatter_get",
    "op_query_multi_get": "meshproxy_mongo_op_query_multi_get",
    "op_reply": "meshproxy_mongo_op_reply",
    "op_reply_cursor_not_found": "meshproxy_mongo_op_reply_cursor_not_found",
    "op_reply_query_failure": "meshproxy_mongo_op_reply_query_failure",
    "op_reply_valid_cursor": "meshproxy_mongo_op_reply_valid_cursor",
    "cx_destroy_local_with_active_rq": "meshproxy_mongo_cx_destroy_local_with_active_rq",
    "cx_destroy_remote_with_active_rq": "meshproxy_mongo_cx_destroy_remote_with_active_rq",
    # meshproxy additions.
    "op_msg": "meshproxy_mongo_op_msg",
    "op_msg_more_to_come": "meshproxy_mongo_op_msg_more_to_come",
    "op_reply_more_to_come": "meshproxy_mongo_op_reply_more_to_come",
    "op_compressed": "meshproxy_mongo_op_compressed",
    "op_legacy": "meshproxy_mongo_op_legacy",
    "bytes_in": "meshproxy_mongo_bytes_in",
    "bytes_out": "meshproxy_mongo_bytes_out",
    "cursor_opened": "meshproxy_mongo_cursor_opened",
    "cursor_exhausted": "meshproxy_mongo_cursor_exhausted",
    "cursor_killed": "meshproxy_mongo_cursor_killed",
    "cursor_not_found": "meshproxy_mongo_cursor_not_found",
    "unclassified_error": "meshproxy_mongo_unclassified_error",
}
_GLOBAL_GAUGES: dict[str, str] = {
    "op_query_active": "meshproxy_mongo_op_query_active",
    "op_active": "meshproxy_mongo_op_active",
}


def _flat(attribute: str) -> str:
    """Flat stat name of a global: ``cursor_opened`` is ``cursor.opened`` (the cursor stats are a group)."""
    return "cursor." + attribute.removeprefix("cursor_") if attribute.startswith("cursor_") else attribute


@dataclass(slots=True)
class _CommandStats:
    """Envoy's ``cmd.<cmd>.*`` plus errors by ``codeName``."""

    name: str
    total: Counter
    reply_num_docs: Histogram
    reply_size: Histogram
    reply_time_ms: Histogram
    errors: dict[str, Counter] = field(default_factory=dict)


@dataclass(slots=True)
class _NamespaceStats:
    """``db.<db>.collection.<coll>.cmd.<cmd>.*``: one bundle per (database, collection, command)."""

    total: Counter
    errors: Counter
    reply_time_ms: Histogram
    request_bytes: Counter
    reply_bytes: Counter


@dataclass(slots=True)
class _QueryStats:
    """Envoy's ``collection.<coll>.query.*`` (and the same under ``.callsite.<callsite>``)."""

    total: Counter
    scatter_get: Counter
    multi_get: Counter
    reply_num_docs: Histogram
    reply_size: Histogram
    reply_time_ms: Histogram


@dataclass(slots=True)
class _OpState:
    """What ``on_request`` worked out, kept until the operation's final reply."""

    op: MongoOperation
    """Held so that ``id(op)``, the key of this state, cannot be reused by another operation meanwhile."""
    command: _CommandStats
    namespace: _NamespaceStats | None
    queries: tuple[_QueryStats, ...]
    is_query: bool
    is_get_more: bool
    last_ns: int


class MongoStatsFilter(MongoFilter):
    """Counts every operation; see ``docs/mongo.md`` for the full table of names."""

    def __init__(
        self,
        stats: StatsStore,
        prefix: str,
        *,
        per_collection: bool = True,
        callsite_field: str = "$comment",
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.store = stats
        self.prefix = prefix
        self.per_collection = per_collection
        self.callsite_field = callsite_field
        self.max_keys = max_keys
        self._scope = f"mongo.{prefix}."
        labels = _label_prefix(prefix)
        counters: dict[str, Any] = {
            name: stats.counter(self._scope + _flat(name), prom=prom, labels=labels)
            for name, prom in _GLOBAL_COUNTERS.items()
        }
        for name, prom in _GLOBAL_GAUGES.items():
            counters[name] = stats.gauge(self._scope + name, prom=prom, labels=labels)
        self.g = _Globals(**counters)
        self._envoy_ops: dict[str, Counter] = {
            command: getattr(self.g, counter) for command, counter in _ENVOY_OP_COUNTERS.items()
        }
        self._compressors: dict[int, Counter] = {}
        self._commands: dict[str, _CommandStats] = {}
        self._namespaces: dict[tuple[str, str, str], _NamespaceStats] = {}
        self._queries: dict[tuple[str, str | None], _QueryStats] = {}
        self._connections: dict[int, dict[int, _OpState]] = {}
        """Per connection id: the operations awaiting their final reply, keyed by ``id(op)``."""

    # -- stat objects, built once per key ---------------------------------------------------------------

    def _compressor(self, compressor: int) -> Counter:
        counter = self._compressors.get(compressor)
        if counter is None:
            try:
                name = Compressor(compressor).name.lower()
            except ValueError:
                name = str(compressor)
            counter = self.store.counter(
                f"{self._scope}op_compressed.{name}",
                prom="meshproxy_mongo_op_compressed_by_compressor",
                labels={"prefix": self.prefix, "compressor": name},
            )
            self._compressors[compressor] = counter
        return counter

    def _command(self, command: str) -> _CommandStats:
        stats = self._commands.get(command)
        if stats is None:
            stats = self._bounded(self._commands, command, OVERFLOW, self._new_command)
        return stats

    def _new_command(self, command: str) -> _CommandStats:
        base = f"{self._scope}cmd.{command}."
        labels = {"prefix": self.prefix, "command": command}
        store = self.store
        return _CommandStats(
            name=command,
            total=store.counter(base + "total", prom="meshproxy_mongo_cmd", labels=labels),
            reply_num_docs=store.histogram(
                base + "reply_num_docs",
                prom="meshproxy_mongo_cmd_reply_num_docs",
                labels=labels,
                buckets=NUM_DOCS_BUCKETS,
            ),
            reply_size=store.histogram(
                base + "reply_size", prom="meshproxy_mongo_cmd_reply_size_bytes", labels=labels, buckets=SIZE_BUCKETS
            ),
            reply_time_ms=store.histogram(
                base + "reply_time_ms", prom="meshproxy_mongo_cmd_reply_time_ms", labels=labels
            ),
        )

    def _command_error(self, command: _CommandStats, code_name: str) -> Counter:
        counter = command.errors.get(code_name)
        if counter is None:
            if len(command.errors) >= _MAX_ERROR_NAMES:
                code_name = OVERFLOW
            try:
                counter = self.store.counter(
                    f"{self._scope}cmd.{command.name}.error.{code_name}",
                    prom="meshproxy_mongo_cmd_error",
                    labels={"prefix": self.prefix, "command": command.name, "code_name": code_name},
                )
            except StatsError:
                return self.g.unclassified_error
            command.errors[code_name] = counter
        return counter

    def _namespace(self, key: tuple[str, str, str]) -> _NamespaceStats:
        stats = self._namespaces.get(key)
        if stats is None:
            stats = self._bounded(self._namespaces, key, (OVERFLOW, OVERFLOW, OVERFLOW), self._new_namespace)
        return stats

    def _new_namespace(self, key: tuple[str, str, str]) -> _NamespaceStats:
        db, collection, command = key
        base = f"{self._scope}db.{db}.collection.{collection}.cmd.{command}."
        labels = {"prefix": self.prefix, "db": db, "collection": collection, "command": command}
        store = self.store
        return _NamespaceStats(
            total=store.counter(base + "total", prom="meshproxy_mongo_command", labels=labels),
            errors=store.counter(base + "errors", prom="meshproxy_mongo_command_errors", labels=labels),
            reply_time_ms=store.histogram(
                base + "reply_time_ms", prom="meshproxy_mongo_command_duration_ms", labels=labels
            ),
            request_bytes=store.counter(
                base + "request_bytes", prom="meshproxy_mongo_command_request_bytes", labels=labels
            ),
            reply_bytes=store.counter(base + "reply_bytes", prom="meshproxy_mongo_command_reply_bytes", labels=labels),
        )

    def _query(self, collection: str, callsite: str | None) -> _QueryStats:
        key = (collection, callsite)
        stats = self._queries.get(key)
        if stats is None:
            overflow = (OVERFLOW, None if callsite is None else OVERFLOW)
            stats = self._bounded(self._queries, key, overflow, self._new_query)
        return stats

    def _new_query(self, key: tuple[str, str | None]) -> _QueryStats:
        collection, callsite = key
        if callsite is None:
            base = f"{self._scope}collection.{collection}."
            family = "meshproxy_mongo_collection"
            labels = {"prefix": self.prefix, "collection": collection}
        else:
            base = f"{self._scope}collection.{collection}.callsite.{callsite}."
            family = "meshproxy_mongo_callsite"
            labels = {"prefix": self.prefix, "collection": collection, "callsite": callsite}
        store = self.store
        return _QueryStats(
            total=store.counter(base + "query.total", prom=family + "_query", labels=labels),
            scatter_get=store.counter(base + "query.scatter_get", prom=family + "_query_scatter_get", labels=labels),
            multi_get=store.counter(base + "query.multi_get", prom=family + "_query_multi_get", labels=labels),
            reply_num_docs=store.histogram(
                base + "reply_num_docs", prom=family + "_reply_num_docs", labels=labels, buckets=NUM_DOCS_BUCKETS
            ),
            reply_size=store.histogram(
                base + "reply_size", prom=family + "_reply_size_bytes", labels=labels, buckets=SIZE_BUCKETS
            ),
            reply_time_ms=store.histogram(base + "reply_time_ms", prom=family + "_reply_time_ms", labels=labels),
        )

    def _bounded(self, cache: dict[K, S], key: K, overflow: K, build: Callable[[K], S]) -> S:
        """Build (once) the stats of ``key``; past ``max_keys`` entries, or if a client-chosen name would
        collide with another stat's flat name, count under the ``overflow`` key instead."""
        if len(cache) < self.max_keys:
            try:
                stats = build(key)
            except StatsError:  # e.g. a collection named "x.callsite.y" meeting collection x, callsite y
                pass
            else:
                cache[key] = stats
                return stats
        existing = cache.get(overflow)
        if existing is None:
            existing = cache[overflow] = build(overflow)
        return existing

    # -- hooks ----------------------------------------------------------------------------------------

    def on_connection_open(self, connection: ConnectionInfo) -> None:
        self._connections[connection.id] = {}

    def on_request(self, op: MongoOperation) -> None:
        # Hot path: type() identity checks and ``counter.value += n`` rather than isinstance / inc().
        g = self.g
        request = op.request
        size = len(request.raw)
        g.bytes_in.value += size
        message: PlainMessage
        if type(request) is OpCompressed:
            g.op_compressed.value += 1
            self._compressor(request.compressor).value += 1
            message = request.inner
        else:
            message = request  # type: ignore[assignment]
        command_query = False
        if type(message) is OpMsg:
            g.op_msg.value += 1
            expects_reply = not message.flag_bits & MORE_TO_COME
            if not expects_reply:
                g.op_msg_more_to_come.value += 1
        else:
            g.op_legacy.value += 1
            expects_reply = type(message) is OpQuery or type(message) is OpGetMore
            if type(message) is OpQuery and message.is_command:
                command_query = True
                g.op_query.value += 1  # Envoy counts every OP_QUERY, commands included
        command_name = op.command
        if not command_query:
            envoy_op = self._envoy_ops.get(command_name)
            if envoy_op is not None:
                envoy_op.value += 1
        command = self._commands.get(command_name) or self._command(command_name or NO_COLLECTION)
        command.total.value += 1

        namespace: _NamespaceStats | None = None
        collection = op.collection
        if self.per_collection:
            key = (op.database or NO_COLLECTION, collection or NO_COLLECTION, command.name)
            namespace = self._namespaces.get(key) or self._namespace(key)
            namespace.total.value += 1
            namespace.request_bytes.value += size

        is_query = command_name in QUERY_COMMANDS
        queries: tuple[_QueryStats, ...] = ()
        if is_query:
            queries = self._count_query(message, collection)
        elif command_name == "killCursors":
            g.cursor_killed.value += killed_cursor_count(message)
        elif type(message) is OpMsg and message.flag_bits & EXHAUST_ALLOWED and command_name == "getMore":
            # Drivers run an exhaust cursor as a plain find, then one getMore allowed to stream the rest.
            g.op_query_exhaust.value += 1

        if not expects_reply:
            return
        g.op_active.value += 1
        if is_query:
            g.op_query_active.value += 1
        connection_id = op.connection.id
        pending = self._connections.get(connection_id)
        if pending is None:
            pending = self._connections[connection_id] = {}
        pending[id(op)] = _OpState(
            op, command, namespace, queries, is_query, command_name in GET_MORE_COMMANDS, op.started_ns
        )

    def _count_query(self, message: PlainMessage, collection: str | None) -> tuple[_QueryStats, ...]:
        g = self.g
        info = query_info(message, self.callsite_field)
        if info is None:
            return ()
        kind, max_time_ms, callsite, tailable, await_data, no_cursor_timeout, exhaust = info
        if tailable:
            g.op_query_tailable_cursor.value += 1
        if no_cursor_timeout:
            g.op_query_no_cursor_timeout.value += 1
        if await_data:
            g.op_query_await_data.value += 1
        if exhaust:
            g.op_query_exhaust.value += 1
        if max_time_ms < 1:
            g.op_query_no_max_time.value += 1
        if kind == SCATTER_GET:
            g.op_query_scatter_get.value += 1
        elif kind == MULTI_GET:
            g.op_query_multi_get.value += 1
        if not self.per_collection:
            return ()
        name = collection or NO_COLLECTION
        stats = self._queries.get((name, None)) or self._query(name, None)
        targets: tuple[_QueryStats, ...] = (stats,)
        if callsite:
            targets = (stats, self._query(name, callsite))
        for stats in targets:
            stats.total.value += 1
            if kind == SCATTER_GET:
                stats.scatter_get.value += 1
            elif kind == MULTI_GET:
                stats.multi_get.value += 1
        return targets

    def on_response(self, op: MongoOperation) -> None:
        pending = self._connections.get(op.connection.id)
        if pending is None:
            return
        state = pending.get(id(op))
        response = op.response
        if state is None or response is None:
            return  # a request this filter did not see (it sits after a filter that answered it)
        g = self.g
        g.op_reply.value += 1
        size = len(response.raw)
        g.bytes_out.value += size
        message = response.inner if isinstance(response, OpCompressed) else response
        final = not (type(message) is OpMsg and message.flag_bits & MORE_TO_COME)
        if not final:
            g.op_reply_more_to_come.value += 1

        summary = summarize_reply(message)
        cursor_id = summary.cursor_id
        if cursor_id:
            g.op_reply_valid_cursor.value += 1
        if summary.cursor_not_found:
            g.op_reply_cursor_not_found.value += 1
            g.cursor_not_found.value += 1
        if summary.query_failure:
            g.op_reply_query_failure.value += 1
        if state.is_get_more:
            if cursor_id == 0 and summary.ok:
                g.cursor_exhausted.value += 1
        elif cursor_id and op.replies <= 1:
            g.cursor_opened.value += 1

        finished_ns = op.finished_ns
        elapsed_ms = (finished_ns - state.last_ns) / 1e6 if finished_ns else 0.0
        if finished_ns:
            state.last_ns = finished_ns
        num_docs = summary.num_docs
        reply_size = reply_payload_size(message)
        command = state.command
        command.reply_num_docs.record(num_docs)
        command.reply_size.record(reply_size)
        command.reply_time_ms.record(elapsed_ms)
        for query in state.queries:
            query.reply_num_docs.record(num_docs)
            query.reply_size.record(reply_size)
            query.reply_time_ms.record(elapsed_ms)

        failed = not summary.ok
        if failed:
            self._command_error(command, code_name(summary.code, summary.code_name)).value += 1
        if summary.write_errors:
            failed = True
            for write_error in summary.write_errors:
                self._command_error(command, write_error_name(write_error)).value += 1

        namespace = state.namespace
        if namespace is not None:
            namespace.reply_bytes.value += size
            namespace.reply_time_ms.record(elapsed_ms)
            if failed:
                namespace.errors.value += 1

        if final:
            del pending[id(op)]
            g.op_active.value -= 1
            if state.is_query:
                g.op_query_active.value -= 1

    def on_connection_close(self, connection: ConnectionInfo, *, active_operations: int, local: bool) -> None:
        pending = self._connections.pop(connection.id, None) or {}
        if active_operations or any(not state.op.is_monitoring for state in pending.values()):
            if local:
                self.g.cx_destroy_local_with_active_rq.inc()
            else:
                self.g.cx_destroy_remote_with_active_rq.inc()
        for state in pending.values():
            self.g.op_active.dec()
            if state.is_query:
                self.g.op_query_active.dec()
