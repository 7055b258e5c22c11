"""Specification of the DynamoDB operation catalogue compiled from botocore's model, and of the PartiQL
table reader."""

from __future__ import annotations

from typing import Any

import botocore.session
import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codecs.dynamo import (
    SERVICES,
    Operation,
    catalog,
    get_operation,
    operation_for_target,
    operation_names,
    table_from_value,
    tables_in_request,
    tables_in_statement,
    tables_of,
)
from meshproxy.codecs.dynamo._model import EACH, KEYS, VALUES, PathStep

ALL_OPERATIONS = [(service, name) for (service, name) in catalog().by_name]

# Operations whose requests cannot name a table: no table-shaped member, no resource ARN, no statement.
# Computed from the model by ``_model``; pinned here so that a model change is noticed by a human.
NO_TABLE_OPERATIONS = {
    ("dynamodb", "DescribeEndpoints"),
    ("dynamodb", "DescribeLimits"),
    ("dynamodb", "ListBulkOperations"),
    ("dynamodb", "ListGlobalTables"),
    ("dynamodb", "ListTables"),  # its ExclusiveStartTableName is a pagination cursor
}


def _set_path(document: dict[str, Any], steps: tuple[PathStep, ...], value: str) -> None:
    """Add ``value`` at ``steps`` to ``document`` (one list element per ``[*]``, one entry per ``{*}``)."""
    node: Any = document
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        if step is KEYS:
            node[value] = {}
            return
        if step is EACH:
            element: dict[str, Any] = {}
            node.append(element)
            node = element
            continue
        if step is VALUES:
            entry: dict[str, Any] = {}
            node[f"v{len(node)}"] = entry
            node = entry
            continue
        assert isinstance(step, str)
        if last:
            node[step] = value
        else:
            following = steps[index + 1]
            node = node.setdefault(step, [] if following is EACH else {})


def _document_naming_every_path(operation: Operation) -> tuple[dict[str, Any], list[str]]:
    """A request document that names a distinct table at each of the operation's compiled places."""
    document: dict[str, Any] = {}
    expected: list[str] = []
    for number, path in enumerate(operation.table_paths):
        table = f"{operation.name.lower()}_t{number}"
        value = f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}" if path.arn_only else table
        _set_path(document, path.steps, value)
        expected.append(table)
    for number, steps in enumerate(operation.statement_paths):
        table = f"{operation.name.lower()}_s{number}"
        _set_path(document, steps, f'SELECT * FROM "{table}"')
        expected.append(table)
    return document, expected


def test_both_services_are_loaded_from_the_newest_model_botocore_has() -> None:
    session = botocore.session.get_session()
    for service in SERVICES:
        model = session.get_service_model(service)
        assert set(operation_names(service)) == set(model.operation_names)
    assert len(operation_names()) == sum(len(operation_names(s)) for s in SERVICES)


def test_target_prefixes_come_from_the_model_metadata() -> None:
    assert get_operation("GetItem").target == b"DynamoDB_20120810.GetItem"
    assert get_operation("GetRecords", "dynamodbstreams").target == b"DynamoDBStreams_20120810.GetRecords"
    get_item = operation_for_target(b"DynamoDB_20120810.GetItem")
    assert get_item is not None
    assert get_item.name == "GetItem"
    assert operation_for_target(b"DynamoDB_20120810.NoSuchThing") is None
    assert operation_for_target(b"getitem") is None


@pytest.mark.parametrize(("service", "name"), ALL_OPERATIONS, ids=[f"{s}.{n}" for s, n in ALL_OPERATIONS])
def test_every_operation_reads_a_table_from_every_place_its_model_allows(service: str, name: str) -> None:
    operation = get_operation(name, service)
    if (service, name) in NO_TABLE_OPERATIONS:
        assert not operation.names_tables
        return
    assert operation.names_tables
    document, expected = _document_naming_every_path(operation)
    assert tables_of(operation, document) == tuple(expected)


def test_operations_that_name_no_table_are_exactly_the_computed_ones() -> None:
    computed = {(s, n) for (s, n), op in catalog().by_name.items() if not op.names_tables}
    assert computed == NO_TABLE_OPERATIONS


@pytest.mark.parametrize(("service", "name"), ALL_OPERATIONS, ids=[f"{s}.{n}" for s, n in ALL_OPERATIONS])
def test_every_place_botocore_marks_as_the_resource_is_read(service: str, name: str) -> None:
    """botocore's endpoint rules mark each request's resource (``contextParam``, ``operationContextParams``
    JMESPath); whatever those select in a request must be among the tables we read from it."""
    operation = get_operation(name, service)
    document, _ = _document_naming_every_path(operation)
    found = set(tables_of(operation, document))
    marked: list[str] = [p.member_name for p in operation.model.context_parameters]
    for parameter in marked:
        if parameter.startswith("ExclusiveStart"):
            continue
        value = document.get(parameter)
        assert value is not None, f"{name}.{parameter} has no compiled path"
        assert table_from_value(value) in found
    for spec in dict(operation.model.operation_context_parameters or {}).values():
        selected = jmespath.search(spec["path"], document)
        values = selected if isinstance(selected, list) else [selected]
        assert values, f"{name}: {spec['path']} selects nothing in {document}"
        for value in values:
            assert table_from_value(value) in found


def test_a_batch_names_every_table_of_request_items_in_order() -> None:
    body = {"RequestItems": {"orders": [{"PutRequest": {"Item": {}}}], "users": [{"DeleteRequest": {"Key": {}}}]}}
    assert tables_in_request("BatchWriteItem", body) == ("orders", "users")
    assert tables_in_request("BatchGetItem", {"RequestItems": {"users": {"Keys": []}}}) == ("users",)


def test_a_transaction_names_each_table_once_whatever_the_action() -> None:
    body = {
        "TransactItems": [
            {"Put": {"TableName": "a"}},
            {"Update": {"TableName": "b"}},
            {"Delete": {"TableName": "a"}},
            {"ConditionCheck": {"TableName": "arn:aws:dynamodb:eu-west-1:1:table/c"}},
        ]
    }
    assert set(tables_in_request("TransactWriteItems", body)) == {"a", "b", "c"}
    assert len(tables_in_request("TransactWriteItems", body)) == 3


def test_paths_sharing_a_list_are_merged_so_the_list_is_walked_once() -> None:
    transaction = get_operation("TransactWriteItems")
    assert len(transaction.table_paths) == 4
    [(step, children, _)] = transaction.trie
    assert step == "TransactItems"
    assert children is not None
    [(each, actions, _)] = children
    assert each is EACH
    assert actions is not None
    assert {action for action, _, _ in actions} == {"Put", "Update", "Delete", "ConditionCheck"}


def test_a_table_arn_stands_for_its_table_name() -> None:
    assert table_from_value("arn:aws:dynamodb:us-east-1:123456789012:table/orders") == "orders"
    assert table_from_value("arn:aws:dynamodb:us-east-1:1:table/orders/stream/2024-01-01T00:00:00.000") == "orders"
    assert table_from_value("arn:aws:dynamodb:us-east-1:1:table/orders/backup/01700000000000-abcd") == "orders"
    assert table_from_value("arn:aws:dynamodb:us-east-1:1:table/orders/index/by_user") == "orders"
    assert table_from_value("arn:aws:dynamodb:us-east-1:1:table/orders/stream/x|1|AAAAiterator") == "orders"
    assert table_from_value("arn:aws:kinesis:us-east-1:1:stream/events") is None
    assert table_from_value("arn:aws:dynamodb:us-east-1:1:global-table/orders") is None
    assert table_from_value("orders") == "orders"
    assert table_from_value("orders", arn_only=True) is None
    assert table_from_value("") is None
    assert table_from_value("arn:aws:dynamodb:us-east-1:1:table/") is None


def test_a_resource_arn_names_a_table_only_when_it_is_a_table_arn() -> None:
    arn = "arn:aws:dynamodb:us-east-1:1:table/orders"
    assert tables_in_request("TagResource", {"ResourceArn": arn, "Tags": []}) == ("orders",)
    assert tables_in_request("DescribeBackup", {"BackupArn": arn + "/backup/0170"}) == ("orders",)
    assert tables_in_request("TagResource", {"ResourceArn": "arn:aws:kinesis:us-east-1:1:stream/s"}) == ()
    assert tables_in_request("DescribeStream", {"StreamArn": arn + "/stream/L"}, "dynamodbstreams") == ("orders",)


def test_a_pagination_cursor_is_not_a_table() -> None:
    assert tables_in_request("ListTables", {"ExclusiveStartTableName": "orders", "Limit": 10}) == ()


def test_tables_are_read_from_partiql_statements_of_every_statement_operation() -> None:
    assert tables_in_request("ExecuteStatement", {"Statement": 'SELECT * FROM "orders"'}) == ("orders",)
    batch = {"Statements": [{"Statement": 'INSERT INTO "a" VALUE {}'}, {"Statement": 'DELETE FROM "b" WHERE k=1'}]}
    assert tables_in_request("BatchExecuteStatement", batch) == ("a", "b")
    transaction = {"TransactStatements": [{"Statement": "UPDATE c SET x = 1"}, {"Statement": 'SELECT * FROM "a"'}]}
    assert tables_in_request("ExecuteTransaction", transaction) == ("c", "a")


def test_malformed_documents_name_no_table_and_never_raise() -> None:
    assert tables_in_request("GetItem", {"TableName": 7}) == ()
    assert tables_in_request("BatchWriteItem", {"RequestItems": ["orders"]}) == ()
    assert tables_in_request("TransactWriteItems", {"TransactItems": {"Put": {"TableName": "a"}}}) == ()
    assert tables_in_request("TransactWriteItems", {"TransactItems": [None, 3, {"Put": "a"}]}) == ()
    assert tables_in_request("ExecuteStatement", {"Statement": None}) == ()
    assert tables_in_request("GetItem", ["TableName"]) == ()


@pytest.mark.parametrize(
    ("statement", "tables"),
    [
        ("SELECT * FROM \"orders\" WHERE pk = 'c1'", ("orders",)),
        ("select a, b from orders where pk = 'x'", ("orders",)),
        ('SELECT * FROM "orders"."by_user" WHERE uid = ?', ("orders",)),
        ("SELECT * FROM orders.by_user", ("orders",)),
        ("INSERT INTO \"orders\" VALUE {'pk': 'a'}", ("orders",)),
        ("insert into orders value {'pk': ?}", ("orders",)),
        ("UPDATE \"orders\" SET n = n + 1 WHERE pk = 'a'", ("orders",)),
        ("update orders set n = 1", ("orders",)),
        ("DELETE FROM \"orders\" WHERE pk = 'a'", ("orders",)),
        ('SELECT * FROM "we""ird" WHERE a = 1', ('we"ird',)),
        ('SELECT * FROM "my-table.v2"', ("my-table.v2",)),
        ('SELECT * FROM "t" WHERE note = \'from "other" into x\'', ("t",)),
        ("EXISTS(SELECT * FROM \"orders\" WHERE pk = 'a' AND n > 1)", ("orders",)),
        ('  \n SeLeCt * FrOm "orders"', ("orders",)),
    ],
)
def test_partiql_statements_name_their_table(statement: str, tables: tuple[str, ...]) -> None:
    assert tables_in_statement(statement) == tables


@pytest.mark.parametrize(
    "statement",
    [
        "",
        "SELECT * FROM",
        'SELECT * FROM "unterminated',
        "SELECT * FROM 'a string, not a table'",
        "SELECT 'it''s' FROM (",
        "EXPLAIN SELECT * FROM t",
        "-- comment\nSELECT * FROM t",
        "SELECT * FROM SELECT",
        "UPDATE",
    ],
)
def test_partiql_reader_names_nothing_when_unsure(statement: str) -> None:
    assert tables_in_statement(statement) == ()


_PATH_KEYS = sorted(
    {
        step
        for op in catalog().by_name.values()
        for path in op.table_paths
        for step in path.steps
        if isinstance(step, str)
    }
    | {
        step
        for op in catalog().by_name.values()
        for steps in op.statement_paths
        for step in steps
        if isinstance(step, str)
    }
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(['SELECT * FROM "t"', "arn:aws:dynamodb:r:1:table/t/x", "arn:", "UPDATE"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(_PATH_KEYS) | st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(operation=st.sampled_from(ALL_OPERATIONS), document=_JSON)
def test_any_json_document_gives_a_tuple_of_names_and_never_raises(operation: tuple[str, str], document: Any) -> None:
    service, name = operation
    tables = tables_of(get_operation(name, service), document)
    assert isinstance(tables, tuple)
    assert all(isinstance(t, str) and t for t in tables)
    assert len(set(tables)) == len(tables)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_read_as_a_statement_without_raising(statement: str) -> None:
    tables = tables_in_statement(statement)
    assert all(isinstance(t, str) and t for t in tables)
