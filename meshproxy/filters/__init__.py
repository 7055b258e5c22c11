"""Per-protocol filter chains (``meshproxy.filters.mongo``, ...): observe, delay, answer locally, rewrite."""
