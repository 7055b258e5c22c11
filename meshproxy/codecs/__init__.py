"""Sans-IO protocol codecs: bytes in, typed messages out, and back.

Nothing here touches sockets, clocks or event loops (design.md, principle 1).
"""

from __future__ import annotations

from meshproxy.codecs.errors import DecodeError

__all__ = ["DecodeError"]
