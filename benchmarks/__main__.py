"""``python -m benchmarks``: see :mod:`benchmarks.harness`."""

from __future__ import annotations

import sys

from benchmarks.harness import main

sys.exit(main())
