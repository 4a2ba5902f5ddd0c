"""Task keys and workflow names for memoized calls (pmap and the joblib backend).

An item's key is the item itself when it is an int or a short str, else a digest of
its pickle; a function's workflow name is its qualified name plus a digest of its
source, defaults and closure values, so editing the function starts afresh.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
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
    """The function's qualified name plus a digest of what it computes with: its source
    (or code), defaults, closure values, and the arguments of a ``functools.partial``,
    the instance of a bound method or the state of a callable object."""
    target, _ = _unwrapped(func)
    qualname = getattr(target, "__qualname__", type(target).__qualname__)
    digest = hashlib.blake2b(digest_size=6)
    for part in _parts(func, set()):
        digest.update(part)
    return f"pmap-{qualname}-{digest.hexdigest()}"


def _unwrapped(func: Any) -> tuple[Any, list[Any]]:
    """The function a ``functools.partial`` or bound method calls, and what it binds."""
    bound: list[Any] = []
    while isinstance(func, functools.partial):
        bound += [func.args, func.keywords]
        func = func.func
    if inspect.ismethod(func):
        bound.append(func.__self__)
        func = func.__func__
    return func, bound


def _parts(func: Any, seen: set[int]) -> Iterable[bytes]:
    """Byte strings that change when what ``func`` computes may change."""
    if id(func) in seen:  # a function that captures itself
        return
    seen.add(id(func))
    func, captured = _unwrapped(func)
    code = getattr(func, "__code__", None)
    yield str(getattr(func, "__module__", "")).encode()
    if isinstance(code, CodeType):  # a Python function
        source = _source(code)
        yield source
        if not source or code.co_name == "<lambda>":  # no file; a line of many lambdas
            yield _code_bytes(code)
        captured += [func.__defaults__, func.__kwdefaults__]
        captured += [cell.cell_contents for cell in func.__closure__ or ()
                     if _has_contents(cell)]
    elif isinstance(func, type) or _python_call(func):
        # A class, or a callable object: its class's source (every method), its state.
        cls = func if isinstance(func, type) else type(func)
        try:
            yield inspect.getsource(cls).encode()
        except (OSError, TypeError):  # defined where no source is kept
            yield cls.__qualname__.encode()
        if cls is not func:
            captured.append(func)
    else:  # a builtin or C function: its repr names it
        yield repr(func).encode()
    for value in captured:
        if inspect.isfunction(value) or inspect.ismethod(value):  # decorators, helpers
            yield from _parts(value, seen)
            continue
        try:
            yield _stable_dumps(value)
        except Exception:  # noqa: BLE001 - unpicklable: its repr is the best we have
            yield repr(value).encode()


def _python_call(obj: Any) -> bool:
    """Whether calling ``obj`` runs a ``__call__`` written in Python."""
    call = next((vars(cls)["__call__"] for cls in type(obj).__mro__
                 if "__call__" in vars(cls)), None)
    return isinstance(getattr(call, "__code__", None), CodeType)


def _source(code: CodeType) -> bytes:
    """The source lines of ``code``, from its first line to its last (nested functions
    included); empty if the file is gone. Not inspect.getsource: its first call costs
    ~4 ms compiling tokenizer patterns."""
    linecache.checkcache(code.co_filename)  # the file may have been edited and reloaded
    lines = linecache.getlines(code.co_filename)
    return "".join(lines[code.co_firstlineno - 1:_last_line(code)]).encode()


def _last_line(code: CodeType) -> int:
    positions = getattr(code, "co_positions", None)  # Python >= 3.11: where each ends
    if positions is not None:
        lines = [end for _, end, *_ in positions() if end is not None]
    else:
        lines = [line for *_, line in code.co_lines() if line is not None]
    lines += [_last_line(const) for const in code.co_consts if isinstance(const, CodeType)]
    return max(lines, default=code.co_firstlineno)


def _code_bytes(code: CodeType) -> bytes:
    """The bytecode, names and constants of ``code`` and the code nested in it."""
    consts = [_code_bytes(c) if isinstance(c, CodeType) else _stable_dumps(c)
              for c in code.co_consts]
    return b"\0".join([code.co_code, repr(code.co_names).encode(), *consts])


def _stable_dumps(value: Any) -> bytes:
    """Pickle ``value`` with its sets sorted: their order changes with the hash seed,
    which differs between processes (MPI ranks would name different workflows)."""
    return pickle.dumps(_sorted_sets(value), protocol=4)


def _sorted_sets(value: Any) -> Any:
    kind = type(value)
    if kind in (set, frozenset):
        items = [_sorted_sets(item) for item in value]
        try:
            items.sort()
        except TypeError:  # mixed types
            items.sort(key=repr)
        return kind.__name__, items
    if kind in (list, tuple):
        return kind(map(_sorted_sets, value))
    if kind is dict:
        return {key: _sorted_sets(item) for key, item in value.items()}
    return value


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True
