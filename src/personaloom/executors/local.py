"""The local executor's LLM client: cache, continuous scheduling, accounting and progress over a backend.

In: a `Backend`, an optional `ResponseCache`, a `Stats`, and batches of `ChatRequest`s from any number
of concurrent tasks (one per pair, say). Out: one `ChatResult` per request, in order.

Every request is looked up in the cache first; a hit costs no call and comes back with cached=True.
Misses go to the backend one request at a time under one semaphore of `backend.max_concurrency`
shared by all callers, so a server is kept at its concurrency with no per-batch barrier: a pair's
critique can start while other pairs are still generating. Identical requests in flight at the same
time are sent once. Every result, fresh or cached, goes through `replies.normalize` (reasoning removed; an
empty or reasoning-only answer is a failed call, and a cached row that fails it is a miss), is committed to
the cache as it arrives (successes only) and accounted with `stats.record_call`; when the first DEAD_AFTER
calls of an invocation all fail, BackendError stops the run with the last server message.
A rich progress display per stage (done/total, ETA, tokens/s)
shows on stderr when it is a terminal.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
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

from personaloom.backends import gather_all
from personaloom.backends.base import Backend, ChatRequest, ChatResult
from personaloom.backends.cache import ResponseCache
from personaloom.errors import BackendError
from personaloom.replies import normalize
from personaloom.stats import Stats

# Consecutive failed calls, with no success yet in this invocation, after which the server is taken to
# be unusable and the run stops with its message (instead of paying for thousands of doomed calls).
DEAD_AFTER = 24


class _TokenRate(ProgressColumn):
    """Completion tokens per second of a stage's paid calls."""

    def render(self, task: Task) -> Text:
        tokens = float(task.fields.get("tokens", 0))
        elapsed = task.elapsed or 0.0
        rate = tokens / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} tok/s", style="progress.data.speed")


class _StageProgress:
    """One progress bar per stage; totals grow as callers submit requests."""

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
                console=Console(stderr=True),
                transient=False,
            )
        self._tasks: dict[str, TaskID] = {}

    def _task(self, stage: str) -> TaskID | None:
        if self._progress is None:
            return None
        if not self._tasks:
            self._progress.start()
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=0, tokens=0, hits=0)
        return self._tasks[stage]

    def submitted(self, stage: str, n: int) -> None:
        task = self._task(stage)
        if self._progress is not None and task is not None:
            total = self._progress.tasks[task].total or 0
            self._progress.update(task, total=total + n)

    def finished(self, stage: str, result: ChatResult) -> None:
        task = self._task(stage)
        if self._progress is None or task is None:
            return
        fields = self._progress.tasks[task].fields
        if result.cached:
            self._progress.update(task, advance=1, hits=fields["hits"] + 1)
        else:
            self._progress.update(task, advance=1, tokens=fields["tokens"] + result.usage.completion_tokens)

    def stop(self) -> None:
        if self._progress is not None and self._tasks:
            self._progress.stop()
        self._tasks = {}


class LLM:
    """The LLMClient the stages use (see `personaloom.backends.base.LLMClient`)."""

    def __init__(
        self,
        backend: Backend,
        cache: ResponseCache | None = None,
        stats: Stats | None = None,
        progress: bool = True,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.stats = stats if stats is not None else Stats()
        self.in_flight = 0
        self._progress = _StageProgress(progress and sys.stderr.isatty())
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, asyncio.Future[ChatResult]] = {}
        self._succeeded = False
        self._failed_in_a_row = 0

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:
            # One per event loop: `run()` uses a fresh loop per call.
            self._sem = asyncio.Semaphore(max(1, self.backend.max_concurrency))
            self._loop = loop
            self._pending = {}
        return self._sem

    def _key(self, request: ChatRequest) -> str:
        return request.cache_key(self.backend.kind, self.backend.model_id)

    async def _call(self, request: ChatRequest) -> ChatResult:
        sem = self._semaphore()
        async with sem:
            self.in_flight += 1
            start = time.perf_counter()
            try:
                results = await self.backend.agenerate([request])
            except (BackendError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a backend bug must not kill a run: it becomes this request's error
                elapsed = time.perf_counter() - start
                results = [ChatResult(error=f"{type(exc).__name__}: {exc}", latency_s=elapsed)]
            finally:
                self.in_flight -= 1
        if len(results) != 1:
            return ChatResult(error=f"backend returned {len(results)} results for one request")
        return normalize(results[0], request)

    def _account(self, request: ChatRequest, result: ChatResult) -> None:
        """Stats and progress for one result; BackendError when the first DEAD_AFTER calls all failed."""
        self.stats.record_call(request.stage, result, request.metadata.get("id"))
        self._progress.finished(request.stage, result)
        if result.ok:
            self._succeeded = True
            self._failed_in_a_row = 0
            return
        self._failed_in_a_row += 1
        if not self._succeeded and self._failed_in_a_row >= DEAD_AFTER:
            raise BackendError(
                f"{request.stage}: the first {self._failed_in_a_row} LLM calls to {self.backend!r} all failed; "
                f"the last said: {result.error}"
            )

    async def _one(self, request: ChatRequest) -> ChatResult:
        key = self._key(request) if self.cache is not None else None
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                # Read through the same normaliser: a row an older version cached (an empty or
                # reasoning-only reply) is a miss, never an answer.
                hit = normalize(hit, request)
                hit = hit if hit.ok else None
            if hit is None and key in self._pending:
                # The same request is on its way: share its answer instead of paying twice.
                shared = await asyncio.shield(self._pending[key])
                hit = shared.model_copy(update={"cached": True, "retries": 0}) if shared.ok else None
            if hit is not None:
                self._account(request, hit)
                return hit
        future: asyncio.Future[ChatResult] | None = None
        if key is not None:
            future = asyncio.get_running_loop().create_future()
            self._pending[key] = future
        try:
            result = await self._call(request)
            if key is not None and self.cache is not None:
                self.cache.put(key, result)
        except BaseException as exc:
            if future is not None and not future.done():
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                    future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
                else:
                    future.cancel()
            raise
        finally:
            if key is not None and self._pending.get(key) is future:
                del self._pending[key]
        if future is not None and not future.done():
            future.set_result(result)
        self._account(request, result)
        return result

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order; failures are results with `error` set.

        Raises BackendError when the backend cannot be used at all (the other requests of this call
        are cancelled; results already cached stay cached).
        """
        if not requests:
            return []
        stages: dict[str, int] = {}
        for r in requests:
            stages[r.stage] = stages.get(r.stage, 0) + 1
        for stage, n in stages.items():
            self._progress.submitted(stage, n)
        self._semaphore()
        return await gather_all(self._one(r) for r in requests)

    def run(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Synchronous `complete` for scripts and tests (not from inside a running event loop)."""

        async def go() -> list[ChatResult]:
            try:
                return await self.complete(requests)
            finally:
                # Connections opened in this loop must close in it (the loop ends with this call);
                # aclose leaves every backend usable for the next call.
                await self.backend.aclose()

        return asyncio.run(go())

    async def aclose(self) -> None:
        """Stop the progress display and release the backend's connections (the cache is the caller's
        to close)."""
        self._progress.stop()
        await self.backend.aclose()

    def close(self) -> None:
        self._progress.stop()

    def summary(self) -> dict[str, Any]:
        return dict(self.stats.to_dict()["llm"])
