"""The Mongo testbed: SecantusDB + ``meshproxy sidecar mongo`` + a pymongo workload."""
