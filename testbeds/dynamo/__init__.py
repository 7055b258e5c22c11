"""The DynamoDB testbed: a moto server + ``meshproxy sidecar dynamo`` + a boto3 workload."""
