"""Digests of a Laufband's data, so that a later run with changed data is refused.

Task ids of a positional Laufband are positions in its data: a run whose data has an
item inserted, removed, reordered or changed would silently skip one item and run
another twice. Every item is therefore digested, in chunks of ``CHUNK`` items, and
the digests are stored with the workflow; a later run must match every stored chunk
(it may append items).

A chunk of plain values (None, bool, int, float, complex, str, bytes, paths) is digested in
one go from its ``repr``: C code, ~50 ns an item. Any other item is digested from its
``repr`` when it is built of plain values, lists, tuples and dicts (small ones), and
else from its pickle (protocol 4, sets in sorted order: see stablepickle.py).
The digests are computed before the state lock is taken, as pickling
may run user code; the one digest that may be needed under the lock (the last
stored chunk, cut where the earlier run's data ended) uses only ``repr`` of plain
values or per-item digests already computed.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Sequence
from contextlib import suppress
from itertools import chain
from pathlib import PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any

from laufband.stablepickle import stable_dumps

CHUNK = 64  # items per stored digest: 8 bytes per 64 items
_SIZE = 8
# Values whose repr is all there is to them (paths: PosixPath('a/b')).
_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes,
                    PosixPath, WindowsPath, PurePosixPath, PureWindowsPath})
_NESTED = _ATOMS | {list, tuple, dict}
_INT = {int}
_PLAIN_LIMIT = 1000  # elements of one item digested by repr; bigger ones by pickle
_COVERED = struct.Struct("<q")


def _hash(prefix: bytes, payload: bytes | memoryview) -> bytes:
    digest = hashlib.blake2b(prefix, digest_size=_SIZE)
    digest.update(payload)
    return digest.digest()


def _plain(items: list[Any]) -> bool:
    """Return whether ``items`` are built of plain values, lists, tuples and dicts only.

    Their ``repr`` then says all about them, the same in every run. Looked at level by
    level so that the work is done in C; at most ``_PLAIN_LIMIT`` elements per item.
    """
    level: list[Any] = items
    budget = _PLAIN_LIMIT * max(1, len(items))
    while True:
        types = {*map(type, level)}
        if types <= _ATOMS:
            return True
        budget -= len(level)
        if budget < 0 or not types <= _NESTED:
            return False
        level = list(chain.from_iterable(
            x.items() if type(x) is dict else x for x in level if type(x) not in _ATOMS))


def item_digest(item: Any, index: int) -> bytes:
    """Digest one item: its ``repr`` when built of plain values, else its pickle.

    Args:
        item: The item.
        index: Its position in the data, for the error message.

    Returns:
        An 8-byte digest.

    Raises:
        TypeError: The item cannot be pickled (the message names ``index``).
    """
    if _plain([item]):
        return _hash(b"p", repr(item).encode("utf-8", "surrogatepass"))
    if _is_numeric(item):  # a numpy scalar or array: its kind, shape and bytes
        return _hash(b"n" + _kind(item), item.tobytes())
    try:
        payload = stable_dumps(item)
    except Exception as error:  # noqa: BLE001 - any pickling failure: name the item
        msg = (f"item {index} ({type(item).__name__}) cannot be pickled, so a later run"
               f" cannot tell whether it changed ({error}): pass key= to give items stable ids")
        raise TypeError(msg) from None
    return _hash(b"o", payload)


def _is_numeric(value: Any) -> bool:
    """Return whether ``value`` is a numpy array or scalar (or alike) of numbers.

    Its bytes then say all about it.
    """
    dtype = getattr(value, "dtype", None)
    return (dtype is not None and getattr(dtype, "hasobject", True) is False
            and hasattr(value, "tobytes") and isinstance(getattr(value, "shape", None), tuple))


def _kind(value: Any) -> bytes:
    """Return what the bytes of a numpy value mean: its dtype and shape."""
    return f"{value.dtype.str}{value.shape}".encode()


def _is_array(source: Any) -> bool:
    """Return whether ``source`` is a numpy array (or alike) of numbers with a first axis.

    Its rows are then the items of a Laufband.
    """
    return _is_numeric(source) and len(source.shape) >= 1


def _items(data: Sequence[Any], lo: int, hi: int) -> list[Any]:
    try:
        return list(data[lo:hi])
    except TypeError:  # a sequence without slices
        return [data[index] for index in range(lo, hi)]


class DataDigests:
    """Digests of every chunk of ``data``, computed at once (outside the state lock).

    Args:
        data: The items.
        source: What ``data`` was made from: a numpy array (or alike) is digested from
            its bytes.
    """

    def __init__(self, data: Sequence[Any], source: Any = None) -> None:
        # A sequence of the user's own class may run user code to give an item: read
        # each once, here, so that a cut under the lock reads none.
        self._data = data if type(data) in (list, tuple, range) else list(data)
        self.length = len(self._data)
        # A numpy array (or alike) the data was made from: digested from its bytes.
        self._array = source if _is_array(source) and len(source) == self.length else None
        self._parts: dict[int, list[bytes]] = {}  # per-item digests of chunks of objects
        self.chunks = self._ints() or [self._chunk(i, self._end(i))
                                       for i in range(self._count(self.length))]

    def _ints(self) -> list[bytes] | None:
        """Digest the usual data, ``range(n)`` or a list of ints, in one pass.

        This gives what chunk by chunk digesting gives, in a fifth of the time; None for
        other data.
        """
        if self._array is not None or {*map(type, self._data)} != _INT:
            return None
        try:
            words = memoryview(array("q", self._data).tobytes())
        except OverflowError:
            return None
        step = CHUNK * 8
        return [_hash(b"i", words[lo: lo + step]) for lo in range(0, len(words), step)]

    @staticmethod
    def _count(length: int) -> int:
        return -(-length // CHUNK)

    def _end(self, index: int) -> int:
        return min((index + 1) * CHUNK, self.length)

    def _chunk(self, index: int, end: int) -> bytes:
        """Digest chunk ``index`` up to item ``end``.

        Ints as 8-byte words, plain values by ``repr``, anything else item by item. The
        item digests of a chunk of objects are kept, so that a shorter cut of it (under
        the state lock) pickles nothing.
        """
        lo = index * CHUNK
        if self._array is not None:  # the kind and shape of its items, then their bytes
            return _hash(b"a" + _kind(self._array[0]), self._array[lo:end].tobytes())
        items = _items(self._data, lo, end)
        types = {*map(type, items)}
        if types == _INT:
            with suppress(OverflowError):
                return _hash(b"i", array("q", items).tobytes())
        if len(types) == 1 and _is_numeric(items[0]):  # numpy scalars, small arrays
            kinds = set(map(_kind, items))
            if len(kinds) == 1:
                return _hash(b"n" + kinds.pop(), b"".join(x.tobytes() for x in items))
        if _plain(items):
            return _hash(b"r", repr(items).encode("utf-8", "surrogatepass"))
        parts = self._parts.get(index)
        if parts is None:
            parts = self._parts[index] = [item_digest(x, lo + k) for k, x in enumerate(items)]
        return _hash(b"m", b"".join(parts[: end - lo]))

    def pack(self) -> bytes:
        """Return what the workflow stores: how many items are covered, then the digests."""
        return _COVERED.pack(self.length) + b"".join(self.chunks)

    def first_difference(self, stored: bytes) -> tuple[int, int] | None:
        """Compare with what an earlier run stored; the data may be longer than then.

        Args:
            stored: What :meth:`pack` returned then.

        Returns:
            The item range ``(lo, hi)`` of the first chunk that differs, or None.
        """
        (covered,) = _COVERED.unpack_from(stored)
        digests = stored[_COVERED.size:]
        for index in range(self._count(covered)):
            end = min((index + 1) * CHUNK, covered)
            ours = self.chunks[index] if end == self._end(index) else self._chunk(index, end)
            if digests[index * _SIZE: (index + 1) * _SIZE] != ours:
                return index * CHUNK, end
        return None


def covered(stored: bytes) -> int:
    """Return how many items a stored digest covers."""
    count: int = _COVERED.unpack_from(stored)[0]
    return count
