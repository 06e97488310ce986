"""What a person sees while a flow works: a progress bar or plain log lines.

The flows report from their own process through four module functions,
whatever the front end::

    from flows import progress
    progress.start(total=len(studies), label="ingest leipzig")
    progress.grow(5, "vienna indexed")  # more cases found while the phase runs
    progress.advance("convert")      # one case done; "convert" was its last step
    progress.step("zip")             # say what is running now, without counting
    progress.finish()

By default the reports become INFO log lines on the ``flows.progress`` logger
(what a log file or CI wants).  The CLI installs a :class:`BarProgress`
(a rich progress bar on stderr) when stderr is a terminal, with
:func:`use_reporter`.  Reports from several threads are serialised.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)


class LogProgress:
    """Progress as log lines: one line per phase start, case done and finish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._label = ""
        self._total = 0
        self._done = 0

    def start(self, total: int, label: str) -> None:
        """Begin a phase of ``total`` cases."""
        with self._lock:
            self._label, self._total, self._done = label, max(0, int(total)), 0
        logger.info("%s: %d cases to do", label, self._total)

    def grow(self, more: int, why: str) -> None:
        """Add ``more`` cases to the current phase (``why``: what found them)."""
        with self._lock:
            self._total += max(0, int(more))
            total = self._total
        logger.info("%s: %s, %d cases to do in all", self._label, why, total)

    def step(self, step: str) -> None:
        """Report a step of the current phase."""
        logger.info("%s: %s", self._label, step)

    def advance(self, step: str = "") -> None:
        """Count one case of the current phase as done."""
        with self._lock:
            self._done += 1
            done, total = self._done, self._total
        suffix = f" ({step})" if step else ""
        logger.info("%s: %d/%d cases done%s", self._label, done, total, suffix)

    def finish(self) -> None:
        """End the current phase."""
        with self._lock:
            done, total = self._done, self._total
        logger.info("%s: finished, %d/%d cases done", self._label, done, total)


class BarProgress:
    """Progress as a rich bar on a terminal: cases done / total and the current step."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._lock = threading.Lock()
        self._console = Console(file=stream or sys.stderr)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("cases"),
            TextColumn("[dim]{task.fields[step]}"),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
        )
        self._task: int | None = None
        self._running = False

    def start(self, total: int, label: str) -> None:
        """Begin a phase of ``total`` cases."""
        with self._lock:
            if not self._running:
                self._bar.start()
                self._running = True
            self._task = self._bar.add_task(label, total=max(0, int(total)), step="")

    def grow(self, more: int, why: str) -> None:
        """Add ``more`` cases to the current phase (``why``: what found them)."""
        with self._lock:
            if self._task is not None:
                total = next(t.total for t in self._bar.tasks if t.id == self._task) or 0
                self._bar.update(self._task, total=total + max(0, int(more)), step=why)

    def step(self, step: str) -> None:
        """Report a step of the current phase."""
        with self._lock:
            if self._task is not None:
                self._bar.update(self._task, step=step)

    def advance(self, step: str = "") -> None:
        """Count one case of the current phase as done."""
        with self._lock:
            if self._task is not None:
                self._bar.update(self._task, advance=1, step=step)

    def finish(self) -> None:
        """End the current phase."""
        # The finished phase stays current: a step reported after it (packaging
        # after the last case) is shown on its line.
        with self._lock:
            if self._task is not None:
                self._bar.update(self._task, step="done")

    def close(self) -> None:
        """Stop redrawing (the finished bars stay on screen)."""
        with self._lock:
            if self._running:
                self._bar.stop()
                self._running = False

    @property
    def console(self) -> Console:
        """The rich console drawing the bar (log lines should go through it)."""
        return self._console


_reporter: LogProgress | BarProgress = LogProgress()
_reporter_guard = threading.Lock()


def reporter() -> LogProgress | BarProgress:
    """The reporter in use."""
    return _reporter


@contextlib.contextmanager
def use_reporter(new: LogProgress | BarProgress) -> Iterator[LogProgress | BarProgress]:
    """Route progress reports to ``new`` for the duration of the block."""
    global _reporter
    with _reporter_guard:
        old, _reporter = _reporter, new
    try:
        yield new
    finally:
        if isinstance(new, BarProgress):
            new.close()
        with _reporter_guard:
            _reporter = old


def start(total: int, label: str) -> None:
    """Begin a phase of ``total`` cases called ``label`` (e.g. ``"ingest leipzig"``)."""
    _reporter.start(total, label)


def grow(more: int, why: str) -> None:
    """Add ``more`` cases to the current phase, found while it runs (``why``: ``"leipzig indexed"``)."""
    _reporter.grow(more, why)


def step(step: str) -> None:
    """Say what is running now (``"zip"``, ``"verify"``) without counting a case."""
    _reporter.step(step)


def advance(step: str = "") -> None:
    """Count one case done; ``step`` names its last step."""
    _reporter.advance(step)


def finish() -> None:
    """End the current phase."""
    _reporter.finish()


def close() -> None:
    """Stop drawing a progress bar (before a command prints its result)."""
    if isinstance(_reporter, BarProgress):
        _reporter.close()
