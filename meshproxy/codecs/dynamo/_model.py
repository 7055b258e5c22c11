"""Every DynamoDB operation, and where each request names its tables, read from botocore's service model.

Envoy's dynamo filter keeps a hand-written operation list that has fallen behind the API (transactions,
PartiQL). Here nothing is listed by hand: botocore ships the ``dynamodb`` and ``dynamodbstreams`` models
(the newest API version it has), and at first use each operation's input shape is walked once and
compiled into a few short *paths* (``("TableName",)``, ``("RequestItems", KEYS)``,
``("TransactItems", EACH, "Put", "TableName")``). Reading the tables of a request is then a handful of
dict and list look-ups, never a model walk per request.

What counts as a table, from the model alone:

* a *table shape* is the shape of any member called ``TableName`` (``TableArn`` and ``TableName`` in
  today's model: the first accepts a name or an ARN); every member of a table shape, at any depth, and
  the keys of every map whose key is a table shape (``RequestItems``) name tables;
* members the model marks as the request's resource for endpoint rules (``contextParam`` ``ResourceArn``
  / ``StreamArn`` / ``ShardIterator``: backup, export, import and stream ARNs, tag and policy resource
  ARNs) name a table only when they hold a table ARN, so they are compiled as ARN-only paths;
* members whose name starts with ``ExclusiveStart`` are pagination cursors (``ListTables``'s
  ``ExclusiveStartTableName`` says where the previous page ended, not which table is used) and are skipped;
* members of shape ``PartiQLStatement`` are statements, handed to the best-effort PartiQL reader.

A table ARN (``arn:aws:dynamodb:REGION:ACCOUNT:table/NAME[/stream/... | /backup/... | /index/...]``)
stands for ``NAME``; real shard iterators begin with their stream's ARN, so they resolve too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import botocore.session
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape

from meshproxy.codecs.dynamo._partiql import tables_in_statement

SERVICES: Final = ("dynamodb", "dynamodbstreams")
"""The botocore service models this codec understands (both speak the AWS JSON 1.0 protocol)."""


class _Step:
    """A non-key step of a compiled path (a singleton per kind, compared by identity)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


EACH: Final = _Step("[*]")
"""Every element of a list."""
VALUES: Final = _Step("{*}")
"""Every value of a map."""
KEYS: Final = _Step("{keys}")
"""The keys of a map (last step only)."""

PathStep = str | _Step

Branch = tuple[PathStep, "tuple[Branch, ...] | None", bool]
"""One edge of a compiled path trie: (step, children or None at a table, arn_only)."""


@dataclass(frozen=True, slots=True)
class TablePath:
    """Where one operation may name a table: dict keys and list/map steps from the request document."""

    steps: tuple[PathStep, ...]
    arn_only: bool
    """The member is a generic resource ARN: only a *table* ARN there names a table."""

    def __str__(self) -> str:
        out = ""
        for step in self.steps:
            out += step.name if isinstance(step, _Step) else f".{step}"
        return out.lstrip(".")


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of one service, with its compiled table and statement paths."""

    service: str
    name: str
    target: bytes
    """The ``X-Amz-Target`` value that selects it: ``<targetPrefix>.<Name>``."""
    table_paths: tuple[TablePath, ...]
    statement_paths: tuple[tuple[PathStep, ...], ...]
    """Paths to PartiQL statements (``ExecuteStatement``, ``BatchExecuteStatement``, ``ExecuteTransaction``)."""
    model: OperationModel
    trie: tuple[Branch, ...] = ()
    """``table_paths`` merged on common prefixes, so a list shared by several paths
    (``TransactItems[*]``) is walked once per request, not once per path."""

    @property
    def names_tables(self) -> bool:
        """Whether a request of this operation can name a table at all."""
        return bool(self.table_paths or self.statement_paths)


@dataclass(frozen=True, slots=True)
class Catalog:
    """All operations of all services, indexed by ``X-Amz-Target`` and by ``(service, name)``."""

    by_target: dict[bytes, Operation]
    by_name: dict[tuple[str, str], Operation]
    service_models: dict[str, ServiceModel]


def table_from_value(value: str, arn_only: bool = False) -> str | None:
    """The table a string names: itself, or the ``NAME`` of a table ARN; None for any other ARN or ``""``."""
    if not value.startswith("arn:"):
        return None if arn_only or not value else value
    parts = value.split(":", 5)
    if len(parts) != 6 or not parts[2].startswith("dynamodb"):
        return None
    resource = parts[5]
    if not resource.startswith("table/"):
        return None
    name = resource[6:].split("/", 1)[0]
    return name or None


def _walk(
    shape: Shape,
    prefix: tuple[PathStep, ...],
    table_shapes: frozenset[str],
    seen: tuple[str, ...],
) -> Iterator[tuple[tuple[PathStep, ...], str]]:
    """Yield ``(path, kind)`` for every table-bearing place under ``shape``; kind is table/statement."""
    if shape.name in seen:  # AttributeValue nests itself: stop at the first repeat
        return
    seen = (*seen, shape.name)
    if isinstance(shape, StructureShape):
        for member_name, member in shape.members.items():
            if member_name.startswith("ExclusiveStart"):
                continue
            path = (*prefix, member_name)
            if member.name in table_shapes:
                yield path, "table"
            elif member.name == "PartiQLStatement":
                yield path, "statement"
            else:
                yield from _walk(member, path, table_shapes, seen)
    elif isinstance(shape, ListShape):
        yield from _walk(shape.member, (*prefix, EACH), table_shapes, seen)
    elif isinstance(shape, MapShape):
        if shape.key.name in table_shapes:
            yield (*prefix, KEYS), "table"
        yield from _walk(shape.value, (*prefix, VALUES), table_shapes, seen)


def _table_shapes(model: ServiceModel) -> frozenset[str]:
    """Shapes of every member called ``TableName`` anywhere in the model's operations."""
    found: set[str] = set()
    for shape_name in model.shape_names:
        shape = model.shape_for(shape_name)
        if isinstance(shape, StructureShape):
            member = shape.members.get("TableName")
            if member is not None:
                found.add(member.name)
    return frozenset(found)


def _trie(paths: list[TablePath]) -> tuple[Branch, ...]:
    """Merge paths that share a prefix into one tree of branches (order of first appearance kept)."""
    groups: dict[tuple[PathStep, bool], list[TablePath]] = {}
    for path in paths:
        last = len(path.steps) == 1
        key = (path.steps[0], path.arn_only) if last else (path.steps[0], False)
        groups.setdefault(key, []).append(path)
    branches: list[Branch] = []
    for (step, arn_only), members in groups.items():
        ends = [m for m in members if len(m.steps) == 1]
        rest = [TablePath(m.steps[1:], m.arn_only) for m in members if len(m.steps) > 1]
        for end in ends:
            branches.append((step, None, end.arn_only))
        if rest:
            branches.append((step, _trie(rest), arn_only))
    return tuple(branches)


def _compile(service: str, model: ServiceModel, name: str, table_shapes: frozenset[str]) -> Operation:
    operation = model.operation_model(name)
    table_paths: list[TablePath] = []
    statement_paths: list[tuple[PathStep, ...]] = []
    input_shape = operation.input_shape
    if input_shape is not None:
        for path, kind in _walk(input_shape, (), table_shapes, ()):
            if kind == "table":
                table_paths.append(TablePath(path, arn_only=False))
            else:
                statement_paths.append(path)
        covered = {p.steps for p in table_paths}
        for parameter in operation.context_parameters:
            path = (parameter.member_name,)
            if path not in covered and not parameter.member_name.startswith("ExclusiveStart"):
                table_paths.append(TablePath(path, arn_only=True))
    prefix = model.metadata["targetPrefix"]
    return Operation(
        trie=_trie(table_paths),
        service=service,
        name=name,
        target=f"{prefix}.{name}".encode("ascii"),
        table_paths=tuple(table_paths),
        statement_paths=tuple(statement_paths),
        model=operation,
    )


@functools.cache
def catalog() -> Catalog:
    """Load both service models (the newest API version botocore has) and compile every operation once."""
    session = botocore.session.get_session()
    by_target: dict[bytes, Operation] = {}
    by_name: dict[tuple[str, str], Operation] = {}
    models: dict[str, ServiceModel] = {}
    for service in SERVICES:
        model = session.get_service_model(service)
        models[service] = model
        table_shapes = _table_shapes(model)
        for name in model.operation_names:
            compiled = _compile(service, model, name, table_shapes)
            by_target[compiled.target] = compiled
            by_name[(service, name)] = compiled
    return Catalog(by_target=by_target, by_name=by_name, service_models=models)


def operation_names(service: str | None = None) -> tuple[str, ...]:
    """Every operation name of ``service`` (or of both services), as the model spells them."""
    return tuple(name for (svc, name) in catalog().by_name if service is None or svc == service)


def operation_for_target(target: bytes) -> Operation | None:
    """The operation an ``X-Amz-Target`` header selects, or None when the model has no such target."""
    return catalog().by_target.get(target)


def get_operation(name: str, service: str = "dynamodb") -> Operation:
    """One compiled operation by name (KeyError if the model has none)."""
    return catalog().by_name[(service, name)]


def _walk_trie(node: Any, branches: tuple[Branch, ...], out: list[str]) -> None:
    """Follow every branch from ``node`` (a decoded JSON value), appending each table found to ``out``."""
    for step, children, arn_only in branches:
        if step is EACH:
            if type(node) is list and children is not None:
                for element in node:
                    _walk_trie(element, children, out)
        elif type(node) is dict:
            if step is KEYS:
                for key in node:
                    table = table_from_value(key, arn_only)
                    if table is not None and table not in out:
                        out.append(table)
            elif step is VALUES:
                if children is not None:
                    for value in node.values():
                        _walk_trie(value, children, out)
            else:
                child = node.get(step)
                if child is None:
                    continue
                if children is None:
                    if type(child) is str:
                        table = table_from_value(child, arn_only)
                        if table is not None and table not in out:
                            out.append(table)
                else:
                    _walk_trie(child, children, out)


def _statements(node: Any, steps: tuple[PathStep, ...], index: int, out: list[str]) -> None:
    """Collect the PartiQL statement strings at ``steps`` (lists only; statements are never map keys)."""
    while index < len(steps):
        step = steps[index]
        if step is EACH:
            if type(node) is list:
                for element in node:
                    _statements(element, steps, index + 1, out)
            return
        if type(node) is not dict or isinstance(step, _Step):
            return
        node = node.get(step)
        index += 1
    if type(node) is str:
        out.append(node)


def tables_of(operation: Operation, document: Any) -> tuple[str, ...]:
    """The tables a decoded request body of ``operation`` names, in order of appearance, no repeats."""
    if type(document) is not dict:
        return ()
    out: list[str] = []
    _walk_trie(document, operation.trie, out)
    if operation.statement_paths:
        statements: list[str] = []
        for steps in operation.statement_paths:
            _statements(document, steps, 0, statements)
        for statement in statements:
            for table in tables_in_statement(statement):
                if table not in out:
                    out.append(table)
    return tuple(out)


def tables_in_request(operation: str, body: Any, service: str = "dynamodb") -> tuple[str, ...]:
    """The tables a decoded request body of the named operation names (``()`` when it names none)."""
    return tables_of(get_operation(operation, service), body)
