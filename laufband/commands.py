"""Commands laufband suggests: each argument quoted for a POSIX shell, safe to print.

A workflow name or path may hold spaces, ``<``, ``$`` or a newline: a suggested
``laufband retry -w NAME`` must run as printed when pasted. Printable text is quoted
as ``shlex.quote`` does; text a terminal would act on (newlines, escape sequences) is
written as bash's ``$'...'`` with those characters escaped, so printing it neither
splits the line nor restyles the terminal.
"""

from __future__ import annotations

import os
import shlex

_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quoted(text: str | os.PathLike[str]) -> str:
    r"""Return ``text`` as one shell word: ``main``, ``'with space'``, ``$'a\nb'``."""
    text = os.fspath(text)
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + "".join(_ESCAPES.get(c) or (c if c.isprintable() else _code(c))
                          for c in text) + "'"


def command(*words: str | os.PathLike[str]) -> str:
    """Return ``laufband WORDS...``, each word quoted (see :func:`quoted`)."""
    return " ".join(["laufband", *map(quoted, words)])


def _code(char: str) -> str:
    point = ord(char)
    if point < 0x100:  # noqa: PLR2004 - \xHH covers one byte
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"  # noqa: PLR2004
