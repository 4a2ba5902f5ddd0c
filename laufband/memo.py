"""Task keys and workflow names for memoized calls (pmap and the joblib backend).

An item's key is the item itself when it is an int or a short str, else a digest of
its pickle; a function's workflow name is its qualified name plus a digest of its
source, defaults and closure values and of the code it reaches in the user's files
(codedigest.py), so editing the function or what it calls starts afresh.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from typing import Any

from laufband.codedigest import code_parts
from laufband.stablepickle import stable_dumps

_SHORT = 64  # characters: a str up to this long is its own key


def first_indices(keys: list[Any]) -> dict[Any, int]:
    """Map each key to the index of its first item, in input order."""
    seen = dict(zip(keys, range(len(keys)), strict=True))  # in order of first appearance
    if len(seen) == len(keys):  # no duplicates: these are the indices
        return seen
    first = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1), strict=True))
    return {k: first[k] for k in seen}


def item_keys(items: list[Any], key: Callable[[Any], str] | None) -> list[Any]:
    """Return each item's task key.

    That is ``key(item)``, the item itself if it is an int or a short str (of those
    types exactly: ``True`` and ``1.0`` are not ``1``), or a 16-byte digest (bytes) of
    the pickled item. The kinds never compare equal to each other.

    Args:
        items: The items, in input order.
        key: The user's key function, if any.

    Returns:
        One key per item.

    Raises:
        TypeError: ``key`` returned something other than a string.
        ValueError: An item cannot be pickled (the message names it).
    """
    if key is not None:
        keys = [key(item) for item in items]
        for index, value in enumerate(keys):
            if not isinstance(value, str):
                msg = f"key() must return a string, got {value!r} for item {index}"
                raise TypeError(msg)
        return keys
    blake2b, dumps = hashlib.blake2b, stable_dumps
    try:  # small ints and strings are their own keys: no pickling, no hashing
        return [item if type(item) is int or (type(item) is str and len(item) <= _SHORT)
                else blake2b(dumps(item), digest_size=16).digest()
                for item in items]
    except Exception:  # find the item to name it (else re-raised below)
        for index, item in enumerate(items):
            try:
                dumps(item)
            except Exception as error:  # noqa: BLE001
                msg = (f"item {index} ({type(item).__name__}) cannot be pickled to compute its"
                       f" key ({error}): pass key= to name items")
                raise ValueError(msg) from None
        raise


def default_name(func: Callable[..., Any]) -> str:
    """Name a function's workflow: its qualified name plus a digest of what it computes with.

    That is its source (or code), defaults, closure values, the arguments of a
    ``functools.partial``, the instance of a bound method or the state of a callable
    object, and the functions, classes and modules it reaches in the user's own files,
    transitively (see codedigest.py). Not covered: the values of globals it reads, and
    code in the standard library or installed packages.

    Args:
        func: The function ``pmap`` or the joblib backend calls.

    Returns:
        ``pmap-<qualname>-<12 hex digits>``.
    """
    target, _ = _unwrapped(func)
    qualname = getattr(target, "__qualname__", type(target).__qualname__)
    digest = hashlib.blake2b(digest_size=6)
    for part in code_parts(func):
        digest.update(len(part).to_bytes(8, "little"))  # b"ab", b"c" is not b"a", b"bc"
        digest.update(part)
    return f"pmap-{qualname}-{digest.hexdigest()}"


def _unwrapped(func: Any) -> tuple[Any, list[Any]]:
    """Return the function a ``functools.partial`` or bound method calls, and what it binds."""
    bound: list[Any] = []
    while isinstance(func, functools.partial):
        bound += [func.args, func.keywords]
        func = func.func
    if inspect.ismethod(func):
        bound.append(func.__self__)
        func = func.__func__
    return func, bound
