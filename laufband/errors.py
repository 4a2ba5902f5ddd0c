"""Exceptions laufband raises: each subclasses a builtin and pickles cleanly."""

from __future__ import annotations


class StateError(RuntimeError):
    """The state directory cannot be used: not writable, corrupt, foreign or newer."""


class WorkflowMismatchError(ValueError):
    """The data given no longer matches the tasks stored for a workflow."""


class TaskGraphError(ValueError):
    """Tasks are malformed: duplicate ids, unknown dependencies or a cycle."""
