"""Integration tests of the DynamoDB sidecar: a real moto server over HTTP, the real proxy, real boto3."""
