"""Write stored results as JSON, CSV or pickle (``laufband results``).

JSON is the result list itself, strict JSON: NaN and infinities (which JSON cannot
hold) are written as null; CSV has one row per result, with a column per key
when every result is a dict (else one ``result`` column; values that are not str,
int, float or bool are written as JSON); pickle is the list, exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
from typing import Any

FORMATS = ("json", "csv", "pickle")


def unloadable(workflow: str, error: Exception) -> str:
    """Say why the results of ``workflow`` cannot be loaded here, and what to do."""
    if isinstance(error, ImportError) and error.name:
        return (f"the results of workflow {workflow!r} hold objects of module {error.name!r},"
                f" which cannot be imported here ({error}): run laufband results in the"
                " directory that holds it, or put it on PYTHONPATH")
    if isinstance(error, AttributeError) and "__main__" in str(error):
        return (f"the results of workflow {workflow!r} hold objects of a class defined in"
                " the script that ran pmap (__main__), which only that script can load:"
                f" read them there with laufband.Monitor(path).results({workflow!r}), or"
                " move the class into a module")
    return (f"cannot load the results of workflow {workflow!r} here"
            f" ({type(error).__name__}: {error}): read them in Python with"
            f" laufband.Monitor(path).results({workflow!r}) where their classes import")


def export(results: list[Any], fmt: str) -> bytes:
    """Return ``results`` in format ``fmt``.

    Raises:
        ValueError: An unknown format, or results JSON cannot hold.
    """
    if fmt == "pickle":
        return pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
    # A lone surrogate (a task id from a file name that is not UTF-8) is written as its
    # escape, \udce9: in JSON, one that reads back as the same string.
    if fmt == "json":
        try:
            text = json.dumps(_finite(results), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as error:
            msg = f"the results are not JSON ({error}): use --format pickle"
            raise ValueError(msg) from None
        return (text + "\n").encode("utf-8", "backslashreplace")
    if fmt == "csv":
        return _csv(results).encode("utf-8", "backslashreplace")
    msg = f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}"
    raise ValueError(msg)


def _finite(value: Any) -> Any:
    """Return ``value`` with NaN and infinities (in lists, tuples, dicts) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _csv(results: list[Any]) -> str:
    out = io.StringIO()
    if results and all(isinstance(r, dict) for r in results):
        columns = list(dict.fromkeys(key for r in results for key in r))
        writer = csv.DictWriter(out, fieldnames=[str(c) for c in columns], lineterminator="\n")
        writer.writeheader()
        for r in results:
            writer.writerow({str(key): _cell(value) for key, value in r.items()})
    else:
        writer_ = csv.writer(out, lineterminator="\n")
        writer_.writerow(["result"])
        writer_.writerows([_cell(r)] for r in results)
    return out.getvalue()


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
