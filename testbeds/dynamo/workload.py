"""A small boto3 workload that issues every kind of DynamoDB request a sidecar should recognise.

``run_workload`` returns a ``Ledger``: what it issued, counted the way ``DynamoStatsFilter`` counts
(``docs/dynamo.md``) — per operation, per table (a batch or a transaction counts once for each table it
touches), per ``(table, error type)`` — and what every call returned, so a caller can check both that the
proxy counted exactly what happened and that it changed nothing on the way.

Retries are off by default (``total_max_attempts=1``): a retried request would be counted twice by the
proxy and once here, and the point of the ledger is that the numbers are exact.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ORDERS = "orders"
"""Hash + range key table (``customer``, ``order_id``)."""

CUSTOMERS = "customers"
"""Hash-only table (``customer``)."""

MISSING = "no_such_table"
"""A table that is never created: requests on it get ``ResourceNotFoundException``."""

NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})
"""One attempt per call, so every call is exactly one request on the wire."""

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
REGION = "us-east-1"

SCAN_PAGE_SIZE = 3
"""``Limit`` of each Scan page: small, so the paginator needs several requests."""


def client_for(endpoint_url: str, config: Config = NO_RETRIES) -> Any:
    """A low-level DynamoDB client with a plain endpoint URL (the sidecar's, or the server's) and test keys."""
    return boto3.client(
        "dynamodb", endpoint_url=endpoint_url, region_name=REGION, config=config, **CREDENTIALS
    )


@dataclass(slots=True)
class Ledger:
    """What a workload issued, in the proxy's own units, and what it got back."""

    operations: Counter[str] = field(default_factory=Counter)
    """Requests per operation name (``GetItem`` …): ``dynamodb.<prefix>.operation.<op>.upstream_rq_total``."""
    tables: Counter[str] = field(default_factory=Counter)
    """Requests per table touched: ``dynamodb.<prefix>.table.<table>.upstream_rq_total``."""
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Error responses per ``(table, error type)``: ``dynamodb.<prefix>.error.<table>.<type>``."""
    results: list[tuple[str, Any]] = field(default_factory=list)
    """``(step, response)`` for every call, with request ids and timestamps removed (see ``comparable``)."""

    @property
    def requests(self) -> int:
        return sum(self.operations.values())

    def issue(
        self, step: str, operation: str, tables: Iterable[str], call: Callable[[], Mapping[str, Any]]
    ) -> Mapping[str, Any] | None:
        """Make one call (one request, retries being off) and book it; a ``ClientError`` is booked as an
        error of every table of the request, as the stats filter counts it, and returned as ``None``."""
        touched = list(dict.fromkeys(tables))
        self.operations[operation] += 1
        self.tables.update(touched)
        try:
            response = call()
        except ClientError as error:
            error_type = str(error.response.get("Error", {}).get("Code", ""))
            for table in touched:
                self.errors[(table, error_type)] += 1
            self.results.append((step, {"error": error_type}))
            return None
        self.results.append((step, comparable(response)))
        return response


def comparable(value: Any) -> Any:
    """``value`` without what differs between two identical runs: ``ResponseMetadata`` (request id, HTTP
    headers, retry count) and timestamps (``CreationDateTime``, ``LastUpdateToIndex…``)."""
    if isinstance(value, Mapping):
        return {
            key: comparable(item)
            for key, item in value.items()
            if key != "ResponseMetadata" and not isinstance(item, datetime.datetime)
        }
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def _order(customer: str, order_id: int, total: int) -> dict[str, Any]:
    return {"customer": {"S": customer}, "order_id": {"N": str(order_id)}, "total": {"N": str(total)}}


def _customer(customer: str, name: str) -> dict[str, Any]:
    return {"customer": {"S": customer}, "name": {"S": name}}


def run_workload(endpoint_url: str, *, config: Config = NO_RETRIES) -> Ledger:
    """Create ``orders`` and ``customers`` and issue one or more of each data-plane operation on them,
    plus one ``ResourceNotFoundException`` and one ``ConditionalCheckFailedException``.

    Expects an endpoint without those tables (a fresh moto server). About 30 requests.
    """
    dynamo = client_for(endpoint_url, config)
    ledger = Ledger()
    issue = ledger.issue
    try:
        issue("create orders", "CreateTable", [ORDERS], lambda: dynamo.create_table(
            TableName=ORDERS,
            KeySchema=[
                {"AttributeName": "customer", "KeyType": "HASH"},
                {"AttributeName": "order_id", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "customer", "AttributeType": "S"},
                {"AttributeName": "order_id", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        ))
        issue("create customers", "CreateTable", [CUSTOMERS], lambda: dynamo.create_table(
            TableName=CUSTOMERS,
            KeySchema=[{"AttributeName": "customer", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "customer", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        ))
        for table in (ORDERS, CUSTOMERS):
            issue(f"describe {table}", "DescribeTable", [table], partial(dynamo.describe_table, TableName=table))

        # Single-item writes and reads.
        for n in range(4):
            issue(f"put order c1/{n}", "PutItem", [ORDERS],
                  partial(dynamo.put_item, TableName=ORDERS, Item=_order("c1", n, 10 * n)))
        issue("put customer c1", "PutItem", [CUSTOMERS],
              lambda: dynamo.put_item(TableName=CUSTOMERS, Item=_customer("c1", "Ada")))
        issue("get order c1/2", "GetItem", [ORDERS], lambda: dynamo.get_item(
            TableName=ORDERS, Key={"customer": {"S": "c1"}, "order_id": {"N": "2"}}, ConsistentRead=True))
        issue("update order c1/1", "UpdateItem", [ORDERS], lambda: dynamo.update_item(
            TableName=ORDERS,
            Key={"customer": {"S": "c1"}, "order_id": {"N": "1"}},
            UpdateExpression="SET #t = #t + :inc",
            ExpressionAttributeNames={"#t": "total"},
            ExpressionAttributeValues={":inc": {"N": "5"}},
            ReturnValues="ALL_NEW",
        ))
        issue("delete order c1/3", "DeleteItem", [ORDERS], lambda: dynamo.delete_item(
            TableName=ORDERS, Key={"customer": {"S": "c1"}, "order_id": {"N": "3"}}, ReturnValues="ALL_OLD"))

        # Batches over both tables: one request each, counted once per table.
        issue("batch write", "BatchWriteItem", [ORDERS, CUSTOMERS], lambda: dynamo.batch_write_item(
            RequestItems={
                ORDERS: [{"PutRequest": {"Item": _order("c2", n, 7 * n)}} for n in range(6)],
                CUSTOMERS: [{"PutRequest": {"Item": _customer(c, name)}} for c, name in (("c2", "Bo"), ("c3", "Cy"))],
            }
        ))
        issue("batch get", "BatchGetItem", [ORDERS, CUSTOMERS], lambda: dynamo.batch_get_item(
            RequestItems={
                ORDERS: {"Keys": [{"customer": {"S": "c2"}, "order_id": {"N": str(n)}} for n in (0, 5)],
                         "ConsistentRead": True},
                CUSTOMERS: {"Keys": [{"customer": {"S": c}} for c in ("c1", "c2", "c3")]},
            }
        ))

        # Reads over many items.
        issue("query c2", "Query", [ORDERS], lambda: dynamo.query(
            TableName=ORDERS,
            KeyConditionExpression="customer = :c AND order_id >= :from",
            ExpressionAttributeValues={":c": {"S": "c2"}, ":from": {"N": "2"}},
        ))
        pages = dynamo.get_paginator("scan").paginate(
            TableName=ORDERS, PaginationConfig={"PageSize": SCAN_PAGE_SIZE}
        )
        # Every page the paginator yields is one Scan request; it stops after the page without a
        # LastEvaluatedKey, so the ledger books exactly the requests made.
        for number, page in enumerate(pages, start=1):
            ledger.operations["Scan"] += 1
            ledger.tables[ORDERS] += 1
            ledger.results.append((f"scan page {number}", comparable(page)))

        # Transactions over both tables.
        issue("transact write", "TransactWriteItems", [ORDERS, CUSTOMERS], lambda: dynamo.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": ORDERS, "Item": _order("c3", 1, 99)}},
                {"Update": {
                    "TableName": CUSTOMERS,
                    "Key": {"customer": {"S": "c3"}},
                    "UpdateExpression": "SET vip = :yes",
                    "ExpressionAttributeValues": {":yes": {"BOOL": True}},
                }},
            ]
        ))
        issue("transact get", "TransactGetItems", [ORDERS, CUSTOMERS], lambda: dynamo.transact_get_items(
            TransactItems=[
                {"Get": {"TableName": ORDERS, "Key": {"customer": {"S": "c3"}, "order_id": {"N": "1"}}}},
                {"Get": {"TableName": CUSTOMERS, "Key": {"customer": {"S": "c3"}}}},
            ]
        ))

        # PartiQL: the table is read from the statement.
        issue("partiql select", "ExecuteStatement", [CUSTOMERS], lambda: dynamo.execute_statement(
            Statement=f'SELECT * FROM "{CUSTOMERS}" WHERE customer = ?', Parameters=[{"S": "c2"}]
        ))

        # Two errors, each booked under the table of its request.
        issue("get from a missing table", "GetItem", [MISSING], lambda: dynamo.get_item(
            TableName=MISSING, Key={"customer": {"S": "c1"}}))
        issue("put over an existing order", "PutItem", [ORDERS], lambda: dynamo.put_item(
            TableName=ORDERS,
            Item=_order("c1", 0, 1),
            ConditionExpression="attribute_not_exists(order_id)",
        ))
    finally:
        dynamo.close()
    return ledger
