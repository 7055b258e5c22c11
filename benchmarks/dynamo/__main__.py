"""``python -m benchmarks.dynamo``: see :mod:`benchmarks.dynamo.harness`."""

from __future__ import annotations

import sys

from benchmarks.dynamo.harness import main

sys.exit(main())
