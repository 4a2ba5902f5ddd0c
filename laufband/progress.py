"""A worker's progress bar: tqdm, counting the completions of every worker."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class ProgressBar:
    """Show progress in a tqdm bar made when first shown.

    A tqdm bar made when first shown (tqdm's lock costs ~7 ms: a rank that draws
    none never makes one); a new iteration after :meth:`close` draws a new bar.
    """

    def __init__(self, tqdm_kwargs: dict[str, Any]) -> None:
        """Keep the arguments for the tqdm bar; none is made yet."""
        self.tqdm_kwargs = tqdm_kwargs
        self.last: tuple[int, int] | None = None  # (completed, total) last shown
        self._bar: tqdm[Any] | None = None
        self._closed = False

    def bar(self, planned_total: int) -> tqdm[Any]:
        """Return the tqdm bar, made now if need be (``planned_total`` until progress is known)."""
        if self._bar is None:
            completed, total = self.last or (0, planned_total)
            self._bar = tqdm(**{"total": total, "initial": completed, **self.tqdm_kwargs})
        return self._bar

    def show(self, completed: int, total: int) -> None:
        """Move the bar to ``completed`` of ``total``."""
        self.last = completed, total
        if self._bar is None and self.tqdm_kwargs.get("disable"):
            return
        bar = self.bar(total)
        if total != bar.total:
            bar.total = total
        if completed != bar.n:
            bar.update(completed - bar.n)

    def renew(self) -> None:
        """Begin a new iteration: after a closed bar, the next one is new."""
        if self._closed:
            self._bar, self._closed, self.last = None, False, None

    def close(self) -> None:
        """Close the bar (the iteration stopped)."""
        if self._bar is not None:
            self._bar.close()
        self._closed = True

    def wrap(self, items: Any) -> tqdm[Any]:
        """Return a plain tqdm bar over ``items`` (a disabled worker's loop)."""
        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(items, **self.tqdm_kwargs)
        return self._bar
