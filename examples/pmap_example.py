"""laufband.pmap: a parallel map that remembers its results.

    python pmap_example.py      # computes 200 items on all cores
    python pmap_example.py      # again: nothing is computed, results come from .laufband

Start it twice at the same time and the two calls share the work.
"""

import math

from laufband import pmap


def slow_prime_count(limit: int) -> int:
    """Count primes below ``limit`` the slow way: a stand-in for real work."""
    return sum(all(n % d for d in range(2, math.isqrt(n) + 1)) for n in range(2, limit))


limits = [2_000 + 10 * i for i in range(200)]
counts = pmap(slow_prime_count, limits)  # in input order
print(f"{len(counts)} results; primes below {limits[-1]}: {counts[-1]}")
