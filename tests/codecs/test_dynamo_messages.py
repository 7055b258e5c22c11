"""Specification of DynamoDB request/response reading, on the bytes real boto3 and a real moto server
exchanged (``tests/fixtures/record_dynamo.py``), and of the DynamoDB-shaped errors filters inject."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import NamedTuple

import botocore.parsers
import botocore.session
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codecs.dynamo import (
    ConsumedCapacity,
    DynamoRequest,
    DynamoResponse,
    crc32_of,
    error_namespace,
    error_response,
    error_response_body,
    error_status,
    parse_request,
    parse_response,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dynamo"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
STEPS = [entry["file"] for entry in MANIFEST]


class HttpMessage(NamedTuple):
    start_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.start_line.split(b" ", 2)[1])


def split_http(stream: bytes) -> list[HttpMessage]:
    """Minimal Content-Length framing for the recorded streams (the real HTTP/1.1 layer is
    ``meshproxy.codecs.http1``; this helper only serves these tests and assumes well-formed input)."""
    messages: list[HttpMessage] = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        start_line, *lines = head.split(b"\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]
        length = next((int(v) for k, v in headers if k.lower() == b"content-length"), 0)
        messages.append(HttpMessage(start_line, headers, rest[:length]))
        stream = rest[length:]
    return messages


def exchanges(step: str) -> list[tuple[HttpMessage, HttpMessage]]:
    requests = split_http((FIXTURES / f"{step}.req.http").read_bytes())
    responses = split_http((FIXTURES / f"{step}.resp.http").read_bytes())
    assert len(requests) == len(responses)
    return list(zip(requests, responses, strict=True))


def only(step: str) -> tuple[DynamoRequest, DynamoResponse]:
    [(request, response)] = exchanges(step)
    parsed = parse_request(request.headers, request.body)
    return parsed, parse_response(response.status, response.headers, response.body, parsed)


EXPECTED_REQUESTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "00_create_orders": ("CreateTable", ("orders",)),
    "01_create_users": ("CreateTable", ("users",)),
    "02_describe_table": ("DescribeTable", ("orders",)),
    "03_put_item": ("PutItem", ("orders",)),
    "04_get_item": ("GetItem", ("orders",)),
    "05_update_item": ("UpdateItem", ("orders",)),
    "06_batch_write": ("BatchWriteItem", ("orders", "users")),
    "07_batch_get": ("BatchGetItem", ("orders", "users")),
    "08_query": ("Query", ("orders",)),
    "09_scan_paginated": ("Scan", ("orders",)),
    "10_delete_item": ("DeleteItem", ("orders",)),
    "11_transact_write": ("TransactWriteItems", ("orders", "users")),
    "12_transact_get": ("TransactGetItems", ("orders", "users")),
    "13_execute_statement": ("ExecuteStatement", ("orders",)),
    "14_get_item_by_arn": ("GetItem", ("users",)),
    "15_resource_not_found": ("GetItem", ("missing",)),
    "16_conditional_check_failed": ("PutItem", ("orders",)),
}


def test_the_recording_covers_the_whole_workload() -> None:
    assert sorted(EXPECTED_REQUESTS) == STEPS
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 300_000


@pytest.mark.parametrize("step", STEPS)
def test_every_recorded_request_has_its_operation_and_tables(step: str) -> None:
    operation, tables = EXPECTED_REQUESTS[step]
    for request, _ in exchanges(step):
        parsed = parse_request(request.headers, request.body)
        assert (parsed.operation, parsed.tables, parsed.service) == (operation, tables, "dynamodb")
        assert not parsed.operation_missing
        assert not parsed.operation_unknown
        assert not parsed.invalid_body
        assert parsed.body == request.body
        assert parsed.target == f"DynamoDB_20120810.{operation}".encode()


@pytest.mark.parametrize("step", STEPS)
def test_every_recorded_response_has_its_error_type_and_a_matching_crc(step: str) -> None:
    outcome = next(entry["outcome"] for entry in MANIFEST if entry["file"] == step)
    for request, response in exchanges(step):
        parsed = parse_response(
            response.status, response.headers, response.body, parse_request(request.headers, request.body)
        )
        assert parsed.error_type == (None if outcome == "ok" else outcome)
        assert parsed.status == (200 if outcome == "ok" else 400)
        assert parsed.crc32 is not None
        assert parsed.crc32_ok
        assert not parsed.invalid_body
        assert parsed.operation == EXPECTED_REQUESTS[step][0]


def test_a_missing_table_is_reported_as_resource_not_found_with_its_message() -> None:
    request, response = only("15_resource_not_found")
    assert request.table == "missing"
    assert (response.status, response.error_type, response.is_error) == (400, "ResourceNotFoundException", True)
    assert response.message == "Requested resource not found"


def test_a_failed_condition_is_reported_as_conditional_check_failed() -> None:
    _, response = only("16_conditional_check_failed")
    assert response.error_type == "ConditionalCheckFailedException"
    assert response.message


def test_total_consumed_capacity_is_read_per_table() -> None:
    _, put = only("03_put_item")
    assert put.consumed_capacity == (ConsumedCapacity("orders", 1.0, None, None),)
    _, get = only("04_get_item")
    assert [c.table for c in get.consumed_capacity] == ["orders"]
    assert get.consumed_capacity[0].capacity_units is not None
    assert get.item_count == 1


def test_batch_capacity_is_a_list_with_one_entry_per_table() -> None:
    request, write = only("06_batch_write")
    assert request.multiple_tables
    assert request.table is None
    assert [c.table for c in write.consumed_capacity] == ["orders", "users"]
    assert write.unprocessed_items == ()
    assert write.unprocessed_total == 0
    _, read = only("07_batch_get")
    assert {c.table for c in read.consumed_capacity} == {"orders", "users"}
    assert read.item_count == 3
    assert read.unprocessed_keys == ()


def test_a_transaction_reports_capacity_for_every_table_it_touched() -> None:
    [(_, real)] = exchanges("11_transact_write")
    assert parse_response(real.status, real.headers, real.body).consumed_capacity == ()  # moto sends []
    document = json.loads(real.body)  # DynamoDB itself sends one entry per table of the transaction
    document["ConsumedCapacity"] = [
        {"TableName": "orders", "CapacityUnits": 4.0, "WriteCapacityUnits": 4.0},
        {"TableName": "users", "CapacityUnits": 2.0, "WriteCapacityUnits": 2.0},
    ]
    response = parse_response(200, [], json.dumps(document).encode())
    assert response.consumed_capacity == (
        ConsumedCapacity("orders", 4.0, None, 4.0),
        ConsumedCapacity("users", 2.0, None, 2.0),
    )


def test_query_counts_and_a_paginated_scan_are_read_page_by_page() -> None:
    _, query = only("08_query")
    assert query.count == query.item_count == 7
    assert query.scanned_count == 7
    pages = [parse_response(r.status, r.headers, r.body) for _, r in exchanges("09_scan_paginated")]
    assert len(pages) == 3
    assert [p.count for p in pages] == [3, 3, 1]
    assert sum(p.item_count or 0 for p in pages) == 7


def test_partiql_requests_name_their_table_and_responses_their_items() -> None:
    request, response = only("13_execute_statement")
    assert request.tables == ("orders",)
    assert response.item_count == 6


def test_unprocessed_items_and_keys_are_counted_per_table() -> None:
    [(_, real)] = exchanges("06_batch_write")
    document = json.loads(real.body)
    document["UnprocessedItems"] = {"orders": [{"PutRequest": {"Item": {}}}] * 2, "users": []}
    document["UnprocessedKeys"] = {"users": {"Keys": [{"pk": {"S": "u1"}}]}}
    body = json.dumps(document).encode()
    response = parse_response(200, [(b"x-amz-crc32", str(crc32_of(body)).encode())], body)
    assert response.unprocessed_items == (("orders", 2),)
    assert response.unprocessed_keys == (("users", 1),)
    assert response.unprocessed_total == 3
    assert response.crc32_ok


def test_a_body_that_is_not_json_is_flagged_not_raised() -> None:
    [(request, response)] = exchanges("03_put_item")
    parsed = parse_request(request.headers, request.body[:-5])
    assert parsed.invalid_body
    assert parsed.operation == "PutItem"
    assert parsed.tables == ()
    assert parse_request(request.headers, b"[1, 2]").invalid_body
    assert parse_request(request.headers, b"\xff\xfe").invalid_body
    reply = parse_response(response.status, response.headers, response.body[:10])
    assert reply.invalid_body
    assert not reply.crc32_ok


def test_a_request_without_target_is_flagged_operation_missing() -> None:
    [(request, _)] = exchanges("04_get_item")
    headers = [(k, v) for k, v in request.headers if k.lower() != b"x-amz-target"]
    parsed = parse_request(headers, request.body)
    assert parsed.operation is None
    assert parsed.operation_missing
    assert not parsed.operation_unknown
    assert parsed.tables == ()
    assert parsed.document is not None


def test_a_target_the_model_does_not_know_is_flagged_operation_unknown() -> None:
    [(request, _)] = exchanges("04_get_item")
    for target, service in (
        (b"DynamoDB_20120810.FlyToTheMoon", "dynamodb"),
        (b"DynamoDBStreams_20120810.X", "dynamodbstreams"),
    ):
        headers = [(k, target if k.lower() == b"x-amz-target" else v) for k, v in request.headers]
        parsed = parse_request(headers, request.body)
        assert parsed.operation is None
        assert parsed.operation_unknown
        assert not parsed.operation_missing
        assert parsed.service == service
        assert parsed.target == target


def test_headers_may_come_as_a_mapping_in_any_case() -> None:
    [(request, _)] = exchanges("06_batch_write")
    as_text = {k.decode().upper(): v.decode() for k, v in request.headers}
    assert parse_request(as_text, request.body).tables == ("orders", "users")
    assert parse_request(dict(request.headers), request.body).operation == "BatchWriteItem"


def test_a_gzip_encoded_body_is_read_and_kept_as_sent() -> None:
    [(request, _)] = exchanges("06_batch_write")
    packed = gzip.compress(request.body)
    parsed = parse_request([*request.headers, (b"Content-Encoding", b"gzip")], packed)
    assert parsed.tables == ("orders", "users")
    assert parsed.body == packed
    broken = parse_request([*request.headers, (b"Content-Encoding", b"gzip")], packed[:-8] + b"garbage!")
    assert broken.invalid_body
    assert parse_request([*request.headers, (b"Content-Encoding", b"br")], request.body).invalid_body


def test_a_streams_request_is_read_with_the_streams_model() -> None:
    [(request, _)] = exchanges("04_get_item")
    headers = [
        (k, b"DynamoDBStreams_20120810.DescribeStream" if k.lower() == b"x-amz-target" else v)
        for k, v in request.headers
    ]
    body = b'{"StreamArn": "arn:aws:dynamodb:us-east-1:1:table/orders/stream/2026-01-01T00:00:00.000"}'
    parsed = parse_request(headers, body)
    assert (parsed.service, parsed.operation, parsed.tables) == ("dynamodbstreams", "DescribeStream", ("orders",))


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("ThrottlingException", 400),
        ("ProvisionedThroughputExceededException", 400),
        ("RequestLimitExceeded", 400),
        ("ConditionalCheckFailedException", 400),
        ("TransactionCanceledException", 400),
        ("ResourceNotFoundException", 400),
        ("ValidationException", 400),
        ("InternalServerError", 500),
        ("ServiceUnavailable", 503),
    ],
)
def test_injected_errors_carry_the_status_dynamodb_uses(error_type: str, status: int) -> None:
    assert error_status(error_type) == status


def test_the_model_status_marking_wins_wherever_the_model_has_one() -> None:
    for service in ("dynamodb", "dynamodbstreams"):
        for shape in botocore.session.get_session().get_service_model(service).error_shapes:
            marked = (shape.metadata.get("error") or {}).get("httpStatusCode")
            if marked is not None:
                assert error_status(shape.name, service) == marked
            elif shape.metadata.get("fault"):
                assert error_status(shape.name, service) == 500


@pytest.mark.parametrize(
    "error_type",
    [
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "InternalServerError",
        "TransactionCanceledException",
    ],
)
def test_an_injected_error_is_parsed_by_botocore_as_that_error(error_type: str) -> None:
    status, headers, body = error_response(error_type, "injected by meshproxy")
    model = botocore.session.get_session().get_service_model("dynamodb")
    parsed = botocore.parsers.create_parser("json").parse(
        {"status_code": status, "headers": {k.decode(): v.decode() for k, v in headers}, "body": body},
        model.operation_model("GetItem").output_shape,
    )
    assert parsed["Error"]["Code"] == error_type
    assert parsed["Error"]["Message"] == "injected by meshproxy"
    ours = parse_response(status, headers, body)
    assert (ours.error_type, ours.message, ours.crc32_ok) == (error_type, "injected by meshproxy", True)


def test_an_injected_error_body_looks_like_dynamodbs_own() -> None:
    [(_, real)] = exchanges("15_resource_not_found")
    recorded = json.loads(real.body)
    ours = json.loads(error_response_body("ResourceNotFoundException", "Requested resource not found"))
    assert ours == recorded
    assert error_namespace() == "com.amazonaws.dynamodb.v20120810"
    assert "Message" in json.loads(error_response_body("TransactionCanceledException", "x"))


def test_the_x_amz_crc32_helper_agrees_with_the_recorded_headers() -> None:
    for step in STEPS:
        for _, response in exchanges(step):
            recorded = next(int(v) for k, v in response.headers if k.lower() == b"x-amz-crc32")
            assert crc32_of(response.body) == recorded


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=200) | st.sampled_from([b"{}", b"null", b'{"TableName": {}}', b'{"__type": 3}']),
    target=st.none() | st.binary(max_size=40) | st.just(b"DynamoDB_20120810.BatchWriteItem"),
    encoding=st.none() | st.sampled_from([b"gzip", b"deflate", b"identity", b"zstd", b""]),
    status=st.integers(100, 599),
)
def test_any_bytes_are_read_into_flags_never_into_an_exception(
    body: bytes, target: bytes | None, encoding: bytes | None, status: int
) -> None:
    headers = [(b"Content-Type", b"application/x-amz-json-1.0")]
    if target is not None:
        headers.append((b"X-Amz-Target", target))
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
    request = parse_request(headers, body)
    assert request.operation_missing == (target is None)
    assert request.invalid_body == (request.document is None)
    response = parse_response(status, [*headers, (b"x-amz-crc32", b"12x")], body, request)
    assert response.crc32 is None
    assert response.status == status
