"""Maglev: consistent hashing through a fixed-size lookup table, O(1) a pick."""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

from meshproxy.lb._base import DEFAULT_PANIC_THRESHOLD, Balancer
from meshproxy.lb._hash import hash64
from meshproxy.lb._host import H

DEFAULT_TABLE_SIZE = 65537


class MaglevBalancer(Balancer[H]):
    """Google's Maglev table with Envoy's weighting.

    Every host walks its own permutation of the table slots (offset and skip from two hashes of its name)
    and the hosts take turns claiming the next free slot on their walk; a key goes to ``table[hash % size]``.
    Turns are weighted: a host of weight w claims a slot on w of every max-weight rounds. Compared with ring
    hash, the spread is evener and picks cheaper, at the cost of slightly more keys moving when hosts change.
    ``table_size`` must be prime (so every skip visits every slot) and much larger than the host count.
    """

    uses_key = True

    def __init__(
        self,
        hosts: Sequence[H] = (),
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        table_size: int = DEFAULT_TABLE_SIZE,
        rng: Random | None = None,
    ) -> None:
        if table_size < 2 or any(table_size % d == 0 for d in range(2, int(table_size**0.5) + 1)):
            raise ValueError(f"table_size must be a prime, got {table_size}")
        self.table_size = table_size
        self._rng = rng if rng is not None else Random()
        self._table: list[H] = []
        super().__init__(hosts, panic_threshold=panic_threshold)

    def _rebuild(self, hosts: list[H]) -> None:
        if not hosts:
            self._table = []
            return
        size = self.table_size
        names = [host.name.encode() for host in hosts]
        offsets = [hash64(name) % size for name in names]
        skips = [hash64(name + b"\x00skip") % (size - 1) + 1 for name in names]
        positions = offsets[:]
        weights = [host.weight for host in hosts]
        heaviest = max(weights)
        claim_due = [0] * len(hosts)
        slots = [-1] * size
        filled = 0
        round_ = 1
        while filled < size:
            for index, weight in enumerate(weights):
                if round_ * weight < claim_due[index]:
                    continue
                claim_due[index] += heaviest
                slot, skip = positions[index], skips[index]
                while slots[slot] >= 0:
                    slot += skip
                    if slot >= size:
                        slot -= size
                slots[slot] = index
                slot += skip
                positions[index] = slot - size if slot >= size else slot
                filled += 1
                if filled == size:
                    break
            round_ += 1
        self._table = [hosts[index] for index in slots]

    def pick(self, key: bytes | None = None) -> H | None:
        if not self._table:
            return None
        point = self._rng.getrandbits(64) if key is None else hash64(key)
        return self._table[point % self.table_size]
