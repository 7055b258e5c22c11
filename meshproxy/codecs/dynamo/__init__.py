"""DynamoDB at L7: operations and tables from botocore's service model, on already-framed HTTP messages.

``parse_request(headers, body) -> DynamoRequest`` and ``parse_response(status, headers, body, request)
-> DynamoResponse`` read what the HTTP/1.1 layer framed; ``error_response(...)`` builds the DynamoDB-shaped
error a fault-injecting filter sends back.
"""

from __future__ import annotations

from meshproxy.codecs.dynamo._errors import (
    SERVER_ERRORS,
    error_namespace,
    error_response,
    error_response_body,
    error_status,
)
from meshproxy.codecs.dynamo._messages import (
    MAX_DECOMPRESSED_BODY,
    ConsumedCapacity,
    DynamoRequest,
    DynamoResponse,
    Headers,
    crc32_of,
    header,
    parse_request,
    parse_response,
)
from meshproxy.codecs.dynamo._model import (
    SERVICES,
    Operation,
    TablePath,
    catalog,
    get_operation,
    operation_for_target,
    operation_names,
    table_from_value,
    tables_in_request,
    tables_of,
)
from meshproxy.codecs.dynamo._partiql import tables_in_statement

__all__ = [
    "MAX_DECOMPRESSED_BODY",
    "SERVER_ERRORS",
    "SERVICES",
    "ConsumedCapacity",
    "DynamoRequest",
    "DynamoResponse",
    "Headers",
    "Operation",
    "TablePath",
    "catalog",
    "crc32_of",
    "error_namespace",
    "error_response",
    "error_response_body",
    "error_status",
    "get_operation",
    "header",
    "operation_for_target",
    "operation_names",
    "parse_request",
    "parse_response",
    "table_from_value",
    "tables_in_request",
    "tables_in_statement",
    "tables_of",
]
