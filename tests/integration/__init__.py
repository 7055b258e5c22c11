"""Integration tests: real SecantusDB, the real sidecar, real pymongo."""
