"""The 64-bit hash behind ring hash and maglev.

We use blake2b from the standard library rather than xxhash even where xxhash is installed: where a key
lands must not depend on which optional packages a process happens to have, or two proxies in front of the
same hosts would send the same key to different hosts.
"""

from __future__ import annotations

from hashlib import blake2b


def hash64(data: bytes) -> int:
    """A well-mixed unsigned 64-bit hash of ``data``, identical on every platform and process."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")
