"""asyncio helpers: run coroutines together and surface the error that matters.

In: coroutines (gather_all), or a function over 0..n-1 and a window (map_window). Out: their results in
order; when one raises, that exception itself is raised (personaloom's own first), never an ExceptionGroup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from personaloom.errors import PersonaloomError

T = TypeVar("T")


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to re-raise from a group: personaloom's own first (BackendError), else the first."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    ours = [e for e in leaves if isinstance(e, PersonaloomError)]
    return (ours or leaves)[0]


async def gather_all(awaitables: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; results in order. When one raises, the others are cancelled and
    that exception itself is raised (not an ExceptionGroup), so callers can catch BackendError."""
    coros = list(awaitables)
    if len(coros) == 1:  # nothing to run alongside: no task, no group (most steps send one request)
        return [await coros[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(a) for a in coros]
    except BaseExceptionGroup as exc:
        raise _leaf(exc) from None
    return [t.result() for t in tasks]


async def map_window(fn: Callable[[int], Awaitable[T]], n: int, window: int) -> list[T]:
    """[fn(0), ..., fn(n - 1)], at most `window` running at once (memory holds the window, not n pending
    coroutines). After the first exception no new item starts; the started ones end, then that exception
    is raised (a stopped run lets its calls in flight finish)."""
    slots: dict[int, T] = {}
    items = iter(range(n))
    errors: list[Exception] = []

    async def worker() -> None:
        for k in items:
            if errors:
                return
            try:
                slots[k] = await fn(k)
            except Exception as exc:  # cancellation propagates; an error stops the other workers' next items
                errors.append(exc)
                return

    await asyncio.gather(*(worker() for _ in range(max(1, min(window, n)))))
    if errors:
        raise errors[0]
    return [slots[k] for k in range(n)]
