"""The gRPC testbed: a grpcio server, meshproxy in front of it, a grpcio client workload."""
