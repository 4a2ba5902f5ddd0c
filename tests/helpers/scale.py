"""A callable object for tests of workflow names: its class's code and its state
name the workflow."""

from __future__ import annotations


class Scale:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return x * self.factor
