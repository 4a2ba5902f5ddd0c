"""Task keys and workflow names for memoized calls (pmap and the joblib backend).

An item's key is the item itself when it is an int or a short str, else a digest of
its pickle; a function's workflow name is its qualified name plus a digest of its
source, defaults and closure values, so editing the function starts afresh.
"""

from __future__ import annotations

import hashlib
import linecache
import pickle
from collections.abc import Callable, Iterable
from types import CodeType
from typing import Any


def first_indices(keys: list[Any]) -> dict[Any, int]:
    """Key -> index of its first item, in input order."""
    seen = dict(zip(keys, range(len(keys)), strict=True))  # in order of first appearance
    if len(seen) == len(keys):  # no duplicates: these are the indices
        return seen
    first = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1), strict=True))
    return {k: first[k] for k in seen}


def item_keys(items: list[Any], key: Callable[[Any], str] | None) -> list[Any]:
    """Each item's task key: ``key(item)``, the item itself if it is an int or a
    short str (of those types exactly: ``True`` and ``1.0`` are not ``1``), or a 16-byte
    digest (bytes) of the pickled item. The kinds never compare equal to each other."""
    if key is not None:
        keys = [key(item) for item in items]
        for index, value in enumerate(keys):
            if not isinstance(value, str):
                msg = f"key() must return a string, got {value!r} for item {index}"
                raise TypeError(msg)
        return keys
    blake2b, dumps = hashlib.blake2b, pickle.dumps
    try:  # small ints and strings are their own keys: no pickling, no hashing
        return [item if type(item) is int or (type(item) is str and len(item) <= 64)
                else blake2b(dumps(item, protocol=4), digest_size=16).digest()
                for item in items]
    except Exception:  # noqa: BLE001 - find the item to name it
        for index, item in enumerate(items):
            try:
                dumps(item, protocol=4)
            except Exception as error:  # noqa: BLE001
                msg = (f"item {index} ({type(item).__name__}) cannot be pickled to compute its"
                       f" key ({error}): pass key= to name items")
                raise ValueError(msg) from None
        raise


def default_name(func: Callable[..., Any]) -> str:
    """The function's qualified name plus a digest of its code, defaults and closure."""
    target = getattr(func, "func", func)  # functools.partial
    qualname = getattr(target, "__qualname__", type(target).__qualname__)
    digest = hashlib.blake2b(digest_size=6)
    for part in _code_parts(func):
        digest.update(part)
    return f"pmap-{qualname}-{digest.hexdigest()}"


def _code_parts(func: Any) -> Iterable[bytes]:
    target = getattr(func, "func", func)  # functools.partial
    yield repr(getattr(func, "args", ())).encode() + repr(getattr(func, "keywords", {})).encode()
    yield str(getattr(target, "__module__", "")).encode()
    captured: list[Any] = []
    code = getattr(target, "__code__", None)
    call = next((vars(cls)["__call__"] for cls in type(target).__mro__
                 if "__call__" in vars(cls)), None)  # what calling target runs
    call = getattr(call, "__code__", None)  # None unless written in Python
    if code is None and call is not None:
        # A callable object: the code of its class's __call__ and the object's state.
        code = call
        captured.append(target)
    if code is None:  # a builtin or C function: its repr names it
        yield repr(target).encode()
    else:
        source = _source(code)
        yield source
        if not source or code.co_name == "<lambda>":  # no file; a line of many lambdas
            yield code.co_code
    captured += [getattr(target, "__defaults__", None), getattr(target, "__kwdefaults__", None)]
    captured += [cell.cell_contents for cell in getattr(target, "__closure__", None) or ()
                 if _has_contents(cell)]
    for value in captured:
        try:
            yield pickle.dumps(value, protocol=4)
        except Exception:  # noqa: BLE001 - unpicklable captures: their repr is the best we have
            yield repr(value).encode()


def _source(code: CodeType) -> bytes:
    """The source lines of ``code``, from its first line to its last (nested functions
    included); empty if the file is gone. Not inspect.getsource: its first call costs
    ~4 ms compiling tokenizer patterns."""
    lines = linecache.getlines(code.co_filename)
    return "".join(lines[code.co_firstlineno - 1:_last_line(code)]).encode()


def _last_line(code: CodeType) -> int:
    lines = [line for *_, line in code.co_lines() if line is not None]
    lines += [_last_line(const) for const in code.co_consts if isinstance(const, CodeType)]
    return max(lines, default=code.co_firstlineno)


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True
