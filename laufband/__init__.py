"""laufband: embarrassingly parallel, embarrassingly simple.

Wrap a for-loop, start it as often as you like, and every item runs once.
"""

from laufband import joblib_hook as _joblib_hook
from laufband.errors import (
    RemoteTraceback,
    StateError,
    TaskFailedError,
    TaskGraphError,
    WorkflowMismatchError,
)
from laufband.graphband import Graphband
from laufband.laufband import Laufband
from laufband.monitor import Monitor
from laufband.pmap import PmapResults, pmap
from laufband.task import Task

__version__ = "0.1.0"

_joblib_hook.install()  # the joblib backend "laufband", without importing joblib

__all__ = [
    "Graphband",
    "Laufband",
    "Monitor",
    "PmapResults",
    "RemoteTraceback",
    "StateError",
    "Task",
    "TaskFailedError",
    "TaskGraphError",
    "WorkflowMismatchError",
    "__version__",
    "pmap",
]
