"""gRPC benchmark: direct vs meshproxy vs nginx ``grpc_pass`` vs HAProxy ``proto h2``: ``python -m benchmarks.grpc``."""
