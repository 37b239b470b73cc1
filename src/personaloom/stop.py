"""Graceful stop of a run: the first Ctrl-C (SIGINT) or SIGTERM stops new LLM calls; the second exits at once.

In: the event loop of a run (`StopSignal.install`). Out: `requested`, which the executor reads before it
sends a request: after the first signal no new request goes out (a cached answer is still served),
requests already at the server finish and are cached, and the stage that needed the skipped ones raises
`RunStopped`. The pipeline then writes what was kept so far, marked `"partial": true` (stats.json and the
dataset card), and exits 130; re-running the same command resumes (every finished call is cached). A
second signal exits the process at once with 130 (the cache is committed per result, so nothing paid for
is lost).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from personaloom.errors import PersonaloomError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(PersonaloomError):
    """The user stopped the run (Ctrl-C or SIGTERM); exit 130."""

    exit_code = 130


class StopSignal:
    """Whether the user asked the run to stop (see the module docstring)."""

    def __init__(self) -> None:
        self.requested = False
        self._installed: list[signal.Signals] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle SIGINT/SIGTERM in `loop` (main thread only; elsewhere the default handling stays)."""
        for sig in SIGNALS:
            try:
                loop.add_signal_handler(sig, self._on_signal)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no support
                continue
            self._installed.append(sig)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed = []

    def _on_signal(self) -> None:
        if self.requested:
            sys.stderr.write("personaloom: stopped at once (finished calls are cached; re-run to resume)\n")
            sys.stderr.flush()
            os._exit(130)
        self.requested = True
        sys.stderr.write(
            "\npersonaloom: stopping: no new LLM calls; the ones in flight finish, then what was kept so far is "
            "written (Ctrl-C again to quit at once)\n"
        )
        sys.stderr.flush()

    def check(self, where: str) -> None:
        """RunStopped when a stop was requested."""
        if self.requested:
            raise RunStopped(f"stopped by the user during {where}; re-run the same command to resume")
