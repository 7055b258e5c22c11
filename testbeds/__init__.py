"""Ready-made rigs: a real backend, meshproxy in front, a real client workload."""
