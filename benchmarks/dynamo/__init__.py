"""The DynamoDB (HTTP/1.1) benchmark: wrk -> [proxy] -> nginx answering like DynamoDB. See ``harness``."""
