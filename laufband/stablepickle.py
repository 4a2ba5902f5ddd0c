"""A pickle that is the same in every process for equal data: sets in sorted order.

The order of a set of strings follows their hashes, which change with the hash seed of
each process (``PYTHONHASHSEED``): the plain pickle of an object holding such a set
differs between two runs, or two MPI ranks, of the same script. Digests of items,
arguments and function state are taken from :func:`stable_dumps` instead: the fast C
pickle when it holds no set, else a pure-Python pickle that writes the elements of
every set and frozenset in the order of their own stable pickles. Only for digests:
the bytes are not meant to be loaded.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

_SET_OPCODES = (pickle.EMPTY_SET, pickle.FROZENSET)  # protocol 4 writes sets with these


# The pure-Python pickler: the C one has no per-type dispatch table to extend.
class _SortedSetPickler(pickle._Pickler):  # noqa: SLF001 - stdlib's own pure-Python pickler
    """The pure-Python pickler, writing the elements of sets in a stable order."""

    dispatch = pickle._Pickler.dispatch.copy()  # noqa: SLF001 - (see above)

    def _save_sorted(self, obj: set[Any] | frozenset[Any]) -> None:
        # save_reduce is undocumented, and typeshed leaves it out
        self.save_reduce(type(obj), (sorted(obj, key=stable_dumps),), obj=obj)  # type: ignore[attr-defined]

    # typeshed types the values of `dispatch` as taking an Unpickler
    dispatch[set] = _save_sorted  # type: ignore[assignment]
    dispatch[frozenset] = _save_sorted  # type: ignore[assignment]


def stable_dumps(value: Any) -> bytes:
    """Pickle ``value`` (protocol 4) so that equal data gives equal bytes in any process."""
    payload = pickle.dumps(value, protocol=4)
    if not any(opcode in payload for opcode in _SET_OPCODES):
        return payload  # no set in it (a match may be data bytes: then the slow way)
    buffer = io.BytesIO()
    _SortedSetPickler(buffer, protocol=4).dump(value)
    return buffer.getvalue()
