"""Exceptions laufband raises.

Each subclasses a builtin (catch ``RuntimeError`` or ``ValueError`` as before), keeps
what it concerns as attributes (``path``, ``workflow``, ``task``), and pickles with
them: an error raised in a helper process or an MPI rank arrives whole.
"""

from __future__ import annotations

import functools
import os
from typing import Any


class _StructuredError(Exception):
    """Base of our exceptions: the message plus keyword attributes, kept by pickle.

    A plain exception pickles ``args`` only, so the attributes would be lost.
    """

    _fields: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {name: getattr(self, name) for name in self._fields}
        return functools.partial(type(self), **fields), self.args, self.__dict__


class StateError(_StructuredError, RuntimeError):
    """The state directory cannot be used.

    It is not writable, corrupt, foreign or newer, or its workflow was reset while a
    worker ran.

    Attributes:
        path: The state directory (or the file in it) concerned, if known.
    """

    _fields = ("path",)

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class WorkflowMismatchError(_StructuredError, ValueError):
    """The data given no longer matches the tasks stored for a workflow.

    Attributes:
        workflow: The workflow's name.
        path: Its state directory.
    """

    _fields = ("workflow", "path")

    def __init__(self, message: str, *, workflow: str | None = None,
                 path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.path = None if path is None else os.fspath(path)


class TaskGraphError(_StructuredError, ValueError):
    """Tasks are malformed: duplicate ids, unknown dependencies or a cycle.

    Attributes:
        workflow: The workflow's name.
        task: The id of the task at fault (the first, for a cycle).
    """

    _fields = ("workflow", "task")

    def __init__(self, message: str, *, workflow: str | None = None,
                 task: str | None = None) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.task = task


class TaskFailedError(_StructuredError, RuntimeError):
    """A task never completed.

    Its worker died on it more often than retries allow, or its result is gone.

    Attributes:
        workflow: The workflow's name.
        index: The item's position in the data given to ``pmap``, if known.
        state: The task's state (``"killed"``, ``"pending"``, ...).
    """

    _fields = ("workflow", "index", "state")

    def __init__(self, message: str, *, workflow: str | None = None, index: int | None = None,
                 state: str | None = None) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.index = index
        self.state = state


class NoResultError(_StructuredError, LookupError):
    """A task has no saved result (``worker.result_of``): not completed, or none saved.

    Attributes:
        workflow: The workflow's name.
        task: The task's id.
        state: The task's state (``"completed"`` if it finished without saving one).
    """

    _fields = ("workflow", "task", "state")

    def __init__(self, message: str, *, workflow: str | None = None, task: str | None = None,
                 state: str | None = None) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.task = task
        self.state = state


class TaskTimeoutError(_StructuredError, TimeoutError):
    """A task ran longer than its timeout (``timeout=``, ``Task.timeout``).

    Raised in the loop body (or pmap's function) and recorded as the task's failure.

    Attributes:
        task: The task (or item) as the message names it.
        seconds: The timeout it ran past.
    """

    _fields = ("task", "seconds")

    def __init__(self, message: str, *, task: str | None = None,
                 seconds: float | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.seconds = seconds


class OriginalStateWarning(UserWarning):
    """State files of the original laufband (0.2.x) are here; this version does not read them."""


class RemoteTraceback(_StructuredError):  # noqa: N818 - a cause, as in concurrent.futures
    """The traceback of an exception raised in another process, kept as text.

    Headed by the worker that raised it (its rank of size, host and pid).
    """

    _fields = ("header",)

    def __init__(self, text: str = "", *, header: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.header = header

    def __str__(self) -> str:
        head = f"{self.header}\n" if self.header else ""
        return f"\n\"\"\"\n{head}{self.text}\"\"\""
