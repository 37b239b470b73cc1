"""asyncio helpers: run coroutines together and surface the error that matters.

In: coroutines. Out: their results in order; when one raises, the others are cancelled and that exception
itself is raised (personaloom's own first), never an ExceptionGroup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
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
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(a) for a in awaitables]
    except BaseExceptionGroup as exc:
        raise _leaf(exc) from None
    return [t.result() for t in tasks]
