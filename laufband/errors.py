"""Exceptions laufband raises: each subclasses a builtin and pickles cleanly."""

from __future__ import annotations


class StateError(RuntimeError):
    """The state directory cannot be used: not writable, corrupt, foreign or newer."""


class WorkflowMismatchError(ValueError):
    """The data given no longer matches the tasks stored for a workflow."""


class TaskGraphError(ValueError):
    """Tasks are malformed: duplicate ids, unknown dependencies or a cycle."""


class TaskFailedError(RuntimeError):
    """A task never completed: its worker died on it more often than retries allow."""


class OriginalStateWarning(UserWarning):
    """State files of the original laufband (0.2.x) are here; this version does not read them."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, kept as text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""
