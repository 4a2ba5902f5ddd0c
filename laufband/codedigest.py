"""What a function computes with: its code and the code it reaches in the user's files.

A workflow's default name carries a digest of these parts (memo.default_name), so
editing any of that code starts afresh::

    func ──► source (bytecode where no file has it), defaults, closure values ──► parts
     │
     └──► names its code loads (co_names, nested code objects included)
            │ looked up in func.__globals__; modules imported inside the function
            ▼
          function, class (bases, methods), module (the attributes the code names),
          instance (its class), list/tuple/dict of those, ``__wrapped__`` functions
            │  in the user's files only: not the standard library, installed
            │  packages (site-packages, dist-packages) or laufband
            └──► walked the same way, each once (cycles, shared helpers)

Values are digested only where the function holds them itself (defaults, closure
cells, ``functools.partial`` arguments, a bound instance): the value of a global or of
a module attribute is not, only the code it leads to.
"""

from __future__ import annotations

import dis
import functools
import importlib
import importlib.util
import linecache
import os
import re
import sys
from collections import deque
from pathlib import Path
from types import CodeType, FunctionType, MethodType, ModuleType
from typing import Any

from laufband.stablepickle import stable_dumps

_IMPORT_NAME = dis.opmap["IMPORT_NAME"]
_CONSTANTS = (int, float, complex, bool, str, bytes, type(None))
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # in default reprs: differs between runs
_MAX_DEPTH = 8  # hops from a name through modules, wrappers and containers
_MAX_SCANNED = 64  # longest list, tuple or dict whose elements are looked at
_Import = tuple[str, int, tuple[str, ...]]  # an import statement: module, level, fromlist
_IMPORT_OPERANDS = 2  # IMPORT_NAME follows the loads of its level and fromlist
_PARTIALS = (functools.partial, functools.partialmethod, functools.cached_property)
_WRAPPERS = (MethodType, staticmethod, classmethod, property, *_PARTIALS)  # tuples: no hashing


def code_parts(func: Any) -> list[bytes]:
    """Return byte strings that change when what ``func`` computes may change.

    They are its code (source, else bytecode), what it binds (defaults, closure values,
    partial arguments, bound instance or callable object state) and, transitively, the
    functions, classes and modules its code reaches in the user's own files.

    Args:
        func: A function, method, ``functools.partial``, class or callable object.

    Returns:
        The parts, in a stable order.
    """
    walk = _Walk()
    walk.start(func)
    while walk.todo:
        item = walk.todo.popleft()
        if isinstance(item, type):
            walk.cls(item)
        else:
            walk.function(item)
    return walk.parts


class _Walk:
    """One digest's traversal: the parts so far and what was already reached."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.todo: deque[Any] = deque()
        self.seen: set[Any] = set()  # ids (objects kept alive in `alive`), module keys
        self.alive: list[Any] = []  # an id stays unique while its object lives
        self.checked: set[str] = set()  # files whose cached lines were checked

    def visit(self, obj: Any) -> bool:
        """Whether ``obj`` is new to this walk (and mark it)."""
        if id(obj) in self.seen:
            return False
        self.seen.add(id(obj))
        self.alive.append(obj)
        return True

    def start(self, func: Any) -> None:
        """Start at the callable itself: followed wherever it lives, its bound values digested."""
        while isinstance(func, functools.partial):
            self.capture(func.args)
            self.capture(func.keywords)
            func = func.func
        if isinstance(func, MethodType):
            self.capture(func.__self__)
            func = func.__func__
        self.visit(func)
        if isinstance(func, FunctionType):
            self.function(func)
        elif isinstance(func, type):
            self.cls(func)
        elif _python_call(func):  # a callable object: its class's code, its state
            if self.visit(type(func)):
                self.cls(type(func))
            self.capture(func)
        else:  # a builtin or C function: its repr names it
            self.parts.append(_stable_repr(func))

    def function(self, func: FunctionType) -> None:
        code = func.__code__
        names, imports, last = _code_info(code)
        self.parts += [b"def", str(func.__module__).encode(), func.__qualname__.encode()]
        source = self.source(code, last)
        self.parts.append(source)
        if not source or code.co_name == "<lambda>":  # no file; a line of many lambdas
            self.parts.append(_code_bytes(code))
        self.capture(func.__defaults__)
        self.capture(func.__kwdefaults__)
        for cell in func.__closure__ or ():
            try:
                self.capture(cell.cell_contents)
            except ValueError:  # an empty cell: a name not yet bound
                self.parts.append(b"<empty>")
        scope = func.__globals__
        for name in names:
            if name in scope:
                self.reach(scope[name], names)
        for spec in imports:
            for module in _imported(*spec, scope.get("__package__")):
                self.reach(module, names)

    def cls(self, cls: type) -> None:
        """Digest a class: its bases, methods (what they reach) and constant attributes."""
        self.parts += [b"class", str(cls.__module__).encode(), cls.__qualname__.encode()]
        for base in cls.__mro__[1:]:
            self.reach(base)
        for name, value in list(vars(cls).items()):
            if type(value) in _CONSTANTS or (type(value) is tuple and all(
                    type(item) in _CONSTANTS for item in value)):
                if not name.startswith("__"):  # __module__, __qualname__, __doc__
                    self.parts += [name.encode(), stable_dumps(value)]
            else:
                self.reach(value)

    def source(self, code: CodeType, last: int) -> bytes:
        """Return the source lines of ``code`` (nested functions included).

        Empty without a file. Not inspect.getsource: its first call costs ~4 ms
        compiling patterns.
        """
        filename = code.co_filename
        if filename not in self.checked:  # the file may have been edited and reloaded
            self.checked.add(filename)
            linecache.checkcache(filename)
        lines = linecache.getlines(filename)
        return "".join(lines[code.co_firstlineno - 1:last]).encode()

    def capture(self, value: Any) -> None:
        """Digest a value the function holds, and follow its code."""
        if isinstance(value, FunctionType | MethodType | type | ModuleType):
            name = getattr(value, "__qualname__", getattr(value, "__name__", ""))
            self.parts += [b"code", str(getattr(value, "__module__", "")).encode(),
                           str(name).encode()]
            if isinstance(value, MethodType):
                self.capture(value.__self__)
            self.reach(value)
            return
        try:
            self.parts.append(stable_dumps(value))
        except Exception:  # noqa: BLE001 - unpicklable: its repr is the best we have
            self.parts.append(_stable_repr(value))
        self.reach(value)

    def reach(self, obj: Any, names: tuple[str, ...] = (), depth: int = 0, *,
              scan: bool = True) -> None:
        """Follow ``obj`` to the code it leads to in the user's files, never its value.

        ``names`` are those loaded by the code that reached it (a module's attributes),
        ``scan`` whether a list, tuple or dict is looked into (not one inside another).
        """
        if depth > _MAX_DEPTH or obj is None:
            return
        kind, deeper = type(obj), depth + 1
        if kind is FunctionType:
            if _user_function(obj) and self.visit(obj):
                self.todo.append(obj)
            self.reach(obj.__dict__.get("__wrapped__"), names, deeper)  # decorated
        elif kind is ModuleType:
            self.module(obj, names, deeper)
        elif isinstance(obj, type):
            self.class_of(obj)
        elif kind in _WRAPPERS:
            for part in _wrapped_parts(obj, kind):
                self.reach(part, names, deeper)
        elif kind in (list, tuple, dict):
            if scan and len(obj) <= _MAX_SCANNED:  # a table of functions
                for item in (obj.values() if kind is dict else obj):
                    self.reach(item, names, deeper, scan=False)
        else:
            self.reach(_wrapped(obj), names, deeper)  # lru_cache, jit wrappers
            self.class_of(kind)  # an instance: its class's code

    def module(self, module: ModuleType, names: tuple[str, ...], depth: int) -> None:
        """Follow the attributes ``names`` of a user's module (once per set of names)."""
        if (id(module), names) not in self.seen and _user_module(module):
            self.seen.add((id(module), names))
            self.alive.append(module)
            for name in names:  # never getattr: a module __getattr__ may import
                self.reach(module.__dict__.get(name), names, depth)

    def class_of(self, cls: type) -> None:
        """Queue a user's class, once."""
        if _user_class(cls) and self.visit(cls):
            self.todo.append(cls)


def _wrapped_parts(obj: Any, kind: type) -> tuple[Any, ...]:
    """Return what a method, property or partial wraps, to be followed in its place."""
    if kind is property:
        return obj.fget, obj.fset, obj.fdel
    if kind in _PARTIALS:
        return (obj.func, *getattr(obj, "args", ()),
                *(getattr(obj, "keywords", None) or {}).values())
    return obj.__func__, getattr(obj, "__self__", None)  # a (static or class) method


@functools.lru_cache(maxsize=4096)
def _code_info(code: CodeType) -> tuple[tuple[str, ...], tuple[_Import, ...], int]:
    """Return the names ``code`` and the code nested in it load, their imports, last line.

    The imports are ``(module, level, fromlist)``; the last line is the last they span.
    """
    names: dict[str, None] = {}
    imports: list[_Import] = []
    stack = [code]
    while stack:
        current = stack.pop()
        names.update(dict.fromkeys(current.co_names))
        if _IMPORT_NAME in current.co_code[::2]:  # opcodes sit at even offsets
            imports += _imports_of(current)
        stack += [const for const in reversed(current.co_consts)
                  if isinstance(const, CodeType)]
    return tuple(names), tuple(imports), _last_line(code)


def _imports_of(code: CodeType) -> list[_Import]:
    """Return ``(module, level, fromlist)`` of each import statement directly in ``code``."""
    found = []
    instructions = list(dis.get_instructions(code))
    for index, instruction in enumerate(instructions):
        if instruction.opcode == _IMPORT_NAME and index >= _IMPORT_OPERANDS:
            level, fromlist = (instructions[index - 2].argval,
                               instructions[index - 1].argval)
            found.append((instruction.argval, level if type(level) is int else 0,
                          fromlist if type(fromlist) is tuple else ()))
    return found


def _imported(name: str, level: int, fromlist: tuple[str, ...],
              package: str | None) -> list[ModuleType]:
    """Return the user modules an import statement inside a function binds.

    They are imported now if they are not yet, so that the digest does not depend on
    whether the function ran.
    """
    if level:
        try:
            name = importlib.util.resolve_name("." * level + name, package)
        except (ImportError, ValueError):
            return []
    module = _load(name)
    if module is None:
        return []
    found = [module]
    for attr in fromlist:  # `from package import submodule`
        if attr != "*" and attr not in module.__dict__ and hasattr(module, "__path__"):
            found += filter(None, [_load(f"{name}.{attr}")])
    return found


def _load(name: str) -> ModuleType | None:
    """Return module ``name`` if it is loaded or is the user's (then imported), else None."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    top = name.partition(".")[0]
    try:  # find_spec("package.sub") would import the package: look at the top only
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    origin = spec and (spec.origin or next(iter(spec.submodule_search_locations or ()), ""))
    if not origin or not Path(origin).is_absolute() or not _user_file(origin):
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the function would fail here too; nothing to add
        return None


def _wrapped(obj: Any) -> Any:
    """Return ``obj.__wrapped__`` of a callable wrapper, else None."""
    if not callable(obj):
        return None
    try:
        return getattr(obj, "__wrapped__", None)
    except Exception:  # noqa: BLE001 - a proxy's __getattr__ may raise anything
        return None


def _user_function(func: FunctionType) -> bool:
    """Return whether ``func`` was written by the user (see _user_file)."""
    filename = func.__code__.co_filename
    if not filename.startswith("<"):
        return _user_file(filename)
    module = sys.modules.get(func.__module__) if isinstance(func.__module__, str) else None
    # <string>, <stdin>: code made by exec (-c, namedtuple) counts as its module's;
    # a function cloudpickled from __main__ is the user's even where __main__ differs.
    return module is None or _user_module(module)


def _user_class(cls: type) -> bool:
    name = getattr(cls, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    return module is not None and _user_module(module)


def _user_module(module: ModuleType) -> bool:
    filename = getattr(module, "__file__", None)
    if isinstance(filename, str):
        return _user_file(filename)
    paths = list(getattr(module, "__path__", None) or ())  # a namespace package
    if paths:
        return _user_file(str(Path(paths[0]) / "__init__.py"))
    return module.__name__ == "__main__"  # python -c, the REPL


@functools.cache
def _user_file(filename: str) -> bool:
    """Return whether the user wrote ``filename``.

    Not the user's: the standard library, installed packages and laufband.
    """
    path = os.path.normcase(os.path.realpath(filename))
    if {"site-packages", "dist-packages"} & set(Path(path).parts):
        return False
    return not any(path.startswith(root) for root in _foreign_roots())


@functools.cache
def _foreign_roots() -> tuple[str, ...]:
    """Return the directories of code that is not the user's, each ending in a separator.

    They are the standard library's (os.py's) and laufband's; installed packages are
    recognised by their site-packages or dist-packages directory.
    """
    dirs = (Path(os.__file__).parent, Path(__file__).absolute().parent)
    return tuple(_with_sep(os.path.normcase(os.path.realpath(d))) for d in dirs)


def _with_sep(directory: str) -> str:
    """Return ``directory`` ending in a separator, so that it prefixes only its files."""
    return directory if directory.endswith(os.sep) else directory + os.sep


def _python_call(obj: Any) -> bool:
    """Return whether calling ``obj`` runs a ``__call__`` written in Python."""
    call = next((vars(cls)["__call__"] for cls in type(obj).__mro__
                 if "__call__" in vars(cls)), None)
    return isinstance(getattr(call, "__code__", None), CodeType)


def _last_line(code: CodeType) -> int:
    positions = getattr(code, "co_positions", None)  # Python >= 3.11: where each ends
    if positions is not None:
        lines = [end for _, end, *_ in positions() if end is not None]
    else:
        lines = [line for *_, line in code.co_lines() if line is not None]
    lines += [_last_line(const) for const in code.co_consts if isinstance(const, CodeType)]
    return max(lines, default=code.co_firstlineno)


def _code_bytes(code: CodeType) -> bytes:
    """Return the bytecode, names and constants of ``code`` and the code nested in it."""
    consts = [_code_bytes(c) if isinstance(c, CodeType) else stable_dumps(c)
              for c in code.co_consts]
    return b"\0".join([code.co_code, repr(code.co_names).encode(), *consts])


def _stable_repr(value: Any) -> bytes:
    """``repr(value)`` without memory addresses (they differ between processes)."""
    try:
        return _ADDRESS.sub("", repr(value)).encode()
    except Exception:  # noqa: BLE001 - a broken __repr__
        return type(value).__qualname__.encode()
