"""Graceful stop of a run: the first Ctrl-C (SIGINT) or SIGTERM stops new LLM calls; the second exits at once.

In: a signal (`StopSignal.install`, in the main thread only, for the span of a run), or a call of `request`
from any thread (the Python API: a notebook's kernel interrupt, a cancelled task, a Stop button). Out:
`requested`, which the
executor reads before it sends a request: after the first signal no new request goes out (a cached answer
is still served), requests already at the server finish and are cached, a request waiting to retry gives up
(uncached), and the stage that needed the skipped ones raises `RunStopped`. The pipeline then writes what
was kept so far, marked `"partial": true` (stats.json and the dataset card), and exits 130; re-running the
same command resumes (every finished call is cached). A second signal exits the process at once with 130
(the command line), or raises KeyboardInterrupt in the main thread (a library caller: its process, a notebook's
kernel say, must live on); the cache is committed per result, so nothing paid for is lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Any

from personaloom.errors import PersonaloomError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(PersonaloomError):
    """The user stopped the run (Ctrl-C, SIGTERM, an interrupted notebook cell, a cancelled task); exit 130.
    Raised by the Python API with `run` set: the partial `personaloom.Run`, which a second call resumes."""

    exit_code = 130
    run: Any = None


class StopSignal:
    """Whether the user asked the run to stop (see the module docstring). `exit_at_once`: a second signal ends
    the process (os._exit(130), the command line); False (the Python API) raises KeyboardInterrupt instead."""

    def __init__(self, exit_at_once: bool = True) -> None:
        self.requested = False
        self.exit_at_once = exit_at_once
        self._installed: list[tuple[signal.Signals, Any]] = []
        # Python runs a handler once however many times its signal came while the main thread was inside one
        # C call, so two quick presses would read as one; the wake-up pipe gets a byte per signal delivered.
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1

    def install(self) -> None:
        """Handle SIGINT/SIGTERM until `uninstall` (main thread only; elsewhere the default handling stays).

        A Python-level handler, not the event loop's `add_signal_handler`: it runs between any two bytecodes
        of the main thread, so a press is answered at once during the synchronous steps too (pairing,
        embedding), not only when the event loop next gets control."""
        for sig in SIGNALS:
            try:
                previous = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                continue
            self._installed.append((sig, previous))
        if self._installed:
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            self._pipe = (read, write)

    def uninstall(self) -> None:
        """Put back the handlers (and the wake-up fd) that `install` replaced."""
        for sig, previous in reversed(self._installed):
            signal.signal(sig, previous)
        self._installed = []
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_fd)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        presses = 1
        if self._pipe is not None:
            with contextlib.suppress(BlockingIOError):
                presses = max(1, len(os.read(self._pipe[0], 256)))
        for _ in range(presses):
            self._on_signal()

    def _on_signal(self) -> None:
        if self.requested:
            sys.stderr.write("personaloom: stopped at once (finished calls are cached; re-run to resume)\n")
            sys.stderr.flush()
            if self.exit_at_once:
                os._exit(130)
            raise KeyboardInterrupt
        self.request("Ctrl-C again to quit at once")

    def request(self, again: str = "interrupt again to quit at once") -> None:
        """Ask the run to stop gracefully (any thread; a second call does nothing more). `again`: how to stop
        at once, for the message."""
        if self.requested:
            return
        self.requested = True
        sys.stderr.write(
            f"\npersonaloom: stopping: no new LLM calls; the ones in flight finish, then what was kept so far is "
            f"written ({again})\n"
        )
        sys.stderr.flush()

    def check(self, where: str) -> None:
        """RunStopped when a stop was requested."""
        if self.requested:
            raise RunStopped(f"stopped by the user during {where}; re-run the same command to resume")
