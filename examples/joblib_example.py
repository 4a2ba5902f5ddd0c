"""Existing joblib code, made resumable and shareable by one line.

    python joblib_example.py    # computes
    python joblib_example.py    # again: every result comes from .laufband

The only change to ordinary joblib code is backend="laufband" (after importing
laufband, which registers the backend).
"""

import math

from joblib import Parallel, delayed

import laufband  # noqa: F401  (registers the "laufband" joblib backend)


def norm(vector: tuple[float, ...]) -> float:
    return math.sqrt(sum(x * x for x in vector))


vectors = [(i, i + 1.0, i + 2.0) for i in range(500)]
norms = Parallel(n_jobs=2, backend="laufband")(delayed(norm)(v) for v in vectors)
print(f"{len(norms)} norms, the largest {max(norms):.2f}")
