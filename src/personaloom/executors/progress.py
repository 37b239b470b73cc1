"""Progress of a run's LLM calls, per stage: on a terminal (rich), in a Jupyter notebook, or not at all.

In: events from the executor's clients — `submitted(stage, n)` as requests arrive, `finished(stage, result,
endpoint)` as each one ends — and `stop()` when the run ends. Out: one display per run, shared by every client
of it (one rich live display at a time is all a terminal can show): done/total, ETA, completion tokens/s, cache
hits and the endpoint's current bound on requests at once, per stage.

`make_progress(setting)` picks the display: None (auto) shows the notebook display inside a Jupyter kernel,
the rich one when stderr is a terminal, nothing otherwise; True shows one wherever it runs; False none. The
notebook display is rendered once (IPython's display with a display id) and updated in place at most every
REFRESH_S seconds, as HTML with a plain-text twin and no ANSI escape codes, so a saved notebook holds one
output per run with its final counts.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from personaloom.chat import ChatResult
from personaloom.console import in_notebook, make_console


class Bound(Protocol):
    """What a display shows of an endpoint: its current and its configured bound on requests at once."""

    limit: int
    ceiling: int


class ProgressSink(Protocol):
    """Receives the executor's events (see the module docstring)."""

    def submitted(self, stage: str, n: int) -> None: ...

    def finished(self, stage: str, result: ChatResult, endpoint: Bound) -> None: ...

    def stop(self) -> None: ...


def bound_text(endpoint: Bound) -> str:
    """'16 at once', or '16 at once (cut from 32)' when overload cut the configured bound."""
    text = f"{endpoint.limit} at once"
    if endpoint.limit < endpoint.ceiling:
        text += f" (cut from {endpoint.ceiling})"
    return text


class _TokenRate(ProgressColumn):
    """Completion tokens per second of a stage's paid calls (over its time until done, once done)."""

    def render(self, task: Task) -> Text:
        tokens = float(task.fields.get("tokens", 0))
        elapsed = (task.finished_time if task.finished else task.elapsed) or 0.0
        rate = tokens / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} tok/s", style="progress.data.speed")


class _StageProgress:
    """The terminal display: one rich progress bar per stage; totals grow as callers submit requests."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                _TokenRate(),
                TextColumn("{task.fields[hits]} cached"),
                TextColumn("{task.fields[limit]}"),
                console=make_console(),
                transient=False,
            )
        self._tasks: dict[str, TaskID] = {}

    def _task(self, stage: str) -> TaskID | None:
        if self._progress is None:
            return None
        if not self._tasks:
            self._progress.start()
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=0, tokens=0, hits=0, limit="")
        return self._tasks[stage]

    def submitted(self, stage: str, n: int) -> None:
        task = self._task(stage)
        if self._progress is not None and task is not None:
            # Raised in place: Progress.update(total=...) drops the speed samples, and with requests arriving
            # all the time the ETA never showed.
            state = self._progress.tasks[task]
            state.total = (state.total or 0) + n
            state.finished_time = None

    def finished(self, stage: str, result: ChatResult, endpoint: Bound) -> None:
        task = self._task(stage)
        if self._progress is None or task is None:
            return
        fields = self._progress.tasks[task].fields
        limit = bound_text(endpoint)
        if result.cached:
            self._progress.update(task, advance=1, hits=fields["hits"] + 1, limit=limit)
        else:
            self._progress.update(task, advance=1, tokens=fields["tokens"] + result.usage.completion_tokens,
                                  limit=limit)

    def stop(self) -> None:
        if self._progress is not None and self._tasks:
            self._progress.stop()
        self._tasks = {}


@dataclass
class _Row:
    started: float
    total: int = 0
    done: int = 0
    hits: int = 0
    tokens: int = 0
    ended: float | None = None
    limit: str = ""


class NotebookProgress:
    """The notebook display (see the module docstring). `clock`: seconds, monotonic (a test injects one)."""

    REFRESH_S = 0.5

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rows: dict[str, _Row] = {}
        self._handle: Any = None
        self._shown = -self.REFRESH_S
        # Clients of one run may live in different threads (a worker thread runs the run, the caller's waits).
        self._lock = threading.Lock()

    def _row(self, stage: str) -> _Row:
        row = self._rows.get(stage)
        if row is None:
            row = self._rows[stage] = _Row(started=self._clock())
        return row

    def submitted(self, stage: str, n: int) -> None:
        with self._lock:
            row = self._row(stage)
            row.total += n
            row.ended = None
        self._show()

    def finished(self, stage: str, result: ChatResult, endpoint: Bound) -> None:
        with self._lock:
            row = self._row(stage)
            row.done += 1
            if result.cached:
                row.hits += 1
            else:
                row.tokens += result.usage.completion_tokens
            row.limit = bound_text(endpoint)
            if row.done >= row.total:
                row.ended = self._clock()
        self._show()

    def stop(self) -> None:
        self._show(force=True)

    def _cells(self, stage: str, row: _Row, now: float) -> list[str]:
        elapsed = (row.ended if row.ended is not None else now) - row.started
        rate = row.tokens / elapsed if elapsed > 0 else 0.0
        if row.ended is not None:
            eta = "done"
        elif row.done and elapsed > 0:
            eta = f"{elapsed / row.done * (row.total - row.done):.0f} s left"
        else:
            eta = ""
        return [stage, f"{row.done}/{row.total}", eta, f"{rate:,.0f} tok/s", f"{row.hits} cached", row.limit]

    def bundle(self) -> dict[str, str]:
        """The display's current content: {"text/plain": ..., "text/html": ...}."""
        now = self._clock()
        with self._lock:
            rows = [self._cells(stage, row, now) for stage, row in self._rows.items()]
        text = "\n".join("  ".join(cell for cell in cells if cell) for cells in rows) or "personaloom: starting"
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows)
        table = (f'<table class="personaloom-progress"><thead><tr><th>stage</th><th>calls</th><th>ETA</th>'
                 f"<th>speed</th><th>cache</th><th>bound</th></tr></thead><tbody>{body}</tbody></table>")
        return {"text/plain": text, "text/html": table}

    def _show(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._shown < self.REFRESH_S:
            return
        if not self._rows:
            return
        self._shown = now
        from IPython.display import display

        if self._handle is None:
            self._handle = display(self.bundle(), raw=True, display_id=True)  # type: ignore[no-untyped-call]
        else:
            self._handle.update(self.bundle(), raw=True)


class _NoProgress:
    def submitted(self, stage: str, n: int) -> None:
        pass

    def finished(self, stage: str, result: ChatResult, endpoint: Bound) -> None:
        pass

    def stop(self) -> None:
        pass


def make_progress(setting: bool | None = None) -> ProgressSink:
    """The display for `setting`: None auto, True shown, False none (see the module docstring)."""
    if setting is False:
        return _NoProgress()
    if in_notebook():
        return NotebookProgress()
    if setting is None and not sys.stderr.isatty():
        return _NoProgress()
    return _StageProgress(True)


__all__ = ["Bound", "NotebookProgress", "ProgressSink", "_StageProgress", "_TokenRate", "in_notebook",
           "make_progress"]
