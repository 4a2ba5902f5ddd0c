"""laufband: embarrassingly parallel, embarrassingly simple.

Wrap a for-loop, start it as often as you like, and every item runs once.
"""

from laufband import joblib_hook as _joblib_hook
from laufband.errors import (
    NoResultError,
    OriginalStateWarning,
    RemoteTraceback,
    StateError,
    TaskFailedError,
    TaskGraphError,
    TaskTimeoutError,
    WorkflowMismatchError,
)
from laufband.graphband import Graphband
from laufband.laufband import Laufband
from laufband.monitor import Monitor
from laufband.pmap import PmapResults, pmap
from laufband.task import GraphTraversalProtocol, Task

# The one place the version is written: pyproject.toml reads it from here (the name
# "laufband" is shared with another project, so importlib.metadata cannot be trusted).
__version__ = "0.3.0"

_joblib_hook.install()  # the joblib backend "laufband", without importing joblib

__all__ = [
    "GraphTraversalProtocol",
    "Graphband",
    "Laufband",
    "Monitor",
    "NoResultError",
    "OriginalStateWarning",
    "PmapResults",
    "RemoteTraceback",
    "StateError",
    "Task",
    "TaskFailedError",
    "TaskGraphError",
    "TaskTimeoutError",
    "WorkflowMismatchError",
    "__version__",
    "pmap",
]
