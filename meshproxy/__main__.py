"""``python -m meshproxy`` is the ``meshproxy`` command."""

from __future__ import annotations

from meshproxy.cli import main

raise SystemExit(main())
