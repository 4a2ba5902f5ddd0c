"""Register the "laufband" joblib backend without importing joblib.

``import laufband`` calls :func:`install`: if joblib is already imported the
backend is registered at once; otherwise a finder on ``sys.meta_path`` waits for
the first ``import joblib`` and registers the backend right after joblib has
loaded. Importing joblib costs ~0.3 s, which most laufband scripts never need.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any


def register() -> None:
    """Make ``"laufband"`` known to joblib (imports joblib).

    The backend module registers itself when its import completes; importing it
    here is enough, and harmless when its own ``import joblib`` brought us here.
    """
    import importlib

    importlib.import_module("laufband.joblib_backend")


class _JoblibWatcher:
    """A meta-path finder that only watches for joblib and then steps aside."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "joblib":
            return None
        import importlib.util

        sys.meta_path.remove(self)  # let the real finders locate joblib
        spec = importlib.util.find_spec("joblib")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, load = spec.loader, spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            register()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if joblib is loaded, else when it first is."""
    if "joblib" in sys.modules:
        register()
    elif not any(isinstance(finder, _JoblibWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _JoblibWatcher())
