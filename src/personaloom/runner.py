"""Run one of personaloom's coroutines to its end from wherever the caller is: a script, a notebook cell, inside
a running event loop, a worker thread — without patching or re-entering anyone's loop (no nest_asyncio).

In: a factory of the coroutine (a run, a calibration, an evaluation) and the run's StopSignal. Out: the
coroutine's result, or its exception (personaloom's own types).

- `run_sync` (synchronous callers). No event loop running in the calling thread (a script, the command line,
  a thread pool's worker): the coroutine runs right there (asyncio.run), with the StopSignal's Ctrl-C/SIGTERM
  handlers installed for its span when that is the main thread (only there: Python allows signal handlers
  nowhere else) and put back afterwards. A loop running in the calling thread (every Jupyter cell, an async
  web handler calling sync code): the coroutine runs in a worker thread with a loop of its own while the
  caller waits; a KeyboardInterrupt in the caller (a kernel interrupt) asks the run to stop gracefully and
  the wait goes on, a second one cancels the run at once and is raised.
- `run_async` (async callers). Always in a worker thread, so that the pipeline's synchronous steps
  (embedding, pairing) never hold the caller's loop; cancelling the caller's task asks the run to stop
  gracefully, waits for it to end, then raises CancelledError; a second cancel cancels the run at once.
A graceful stop: no new LLM call, the calls in flight finish and are cached, what was kept is written
(`"partial": true`), and the run raises RunStopped (personaloom.stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from personaloom.stop import StopSignal

T = TypeVar("T")
Factory = Callable[[], Coroutine[Any, Any, T]]
# How often a waiting caller wakes (a signal interrupts the wait anyway; this bounds a missed wake-up).
_WAIT_S = 0.5


class _Worker(Generic[T]):
    """The coroutine in a thread of its own, with its own event loop; `done` is set when it has ended."""

    def __init__(self, factory: Factory[T], on_done: Callable[[], None] | None = None) -> None:
        self._factory = factory
        self._on_done = on_done
        self.done = threading.Event()
        self._outcome: tuple[bool, Any] = (False, None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._thread = threading.Thread(target=self._main, name="personaloom-run", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def _body(self) -> T:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        return await self._factory()

    def _main(self) -> None:
        try:
            self._outcome = (True, asyncio.run(self._body()))
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self._outcome = (False, exc)
        finally:
            self.done.set()
            if self._on_done is not None:
                self._on_done()

    def cancel_now(self) -> None:
        """Cancel the coroutine (the second interrupt): calls in flight are dropped, uncached."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop has just closed
                loop.call_soon_threadsafe(task.cancel)

    def result(self) -> T:
        ok, value = self._outcome
        if ok:
            return value  # type: ignore[no-any-return]
        raise value


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(factory: Factory[T], stop: StopSignal | None = None) -> T:
    """The coroutine `factory()` makes, run to its end from synchronous code (see the module docstring)."""
    stop = stop if stop is not None else StopSignal(exit_at_once=False)
    if not _loop_running():
        stop.install()
        try:
            return asyncio.run(factory())
        finally:
            stop.uninstall()
    worker = _Worker(factory)
    worker.start()
    while not worker.done.is_set():
        try:
            worker.done.wait(_WAIT_S)
        except KeyboardInterrupt:
            if stop.requested:
                worker.cancel_now()
                raise
            stop.request()
    return worker.result()


async def run_async(factory: Factory[T], stop: StopSignal | None = None) -> T:
    """The coroutine `factory()` makes, awaited from async code without blocking the caller's loop (see the
    module docstring)."""
    stop = stop if stop is not None else StopSignal(exit_at_once=False)
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        def settle() -> None:
            if not ended.done():
                ended.set_result(None)

        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle)

    worker = _Worker(factory, on_done=wake)
    worker.start()
    try:
        await asyncio.shield(ended)
    except asyncio.CancelledError:
        stop.request("cancel again to quit at once")
        try:
            await ended
        except asyncio.CancelledError:
            worker.cancel_now()
            raise
        with contextlib.suppress(BaseException):
            worker.result()  # RunStopped, most likely: the cancellation is what the caller asked for
        raise
    return worker.result()


__all__ = ["run_async", "run_sync"]
