"""The local executor's LLM client: cache, continuous scheduling, accounting and progress over a backend.

In: a `Backend`, an optional `ResponseCache`, a `Stats`, and batches of `ChatRequest`s from any number
of concurrent tasks (one per pair, say). Out: one `ChatResult` per request, in order.

Every request is looked up in the cache first; a hit costs no call and comes back with cached=True.
Misses go to the backend one request at a time under the bound of its `Endpoint` (one per server URL +
model, or per GGUF, shared by every client of it: experts on the same server share it too), so a server
is kept at its concurrency with no per-batch barrier: a pair's critique can start while other pairs are
still generating. Backends hold no bound of their own; `backend.max_concurrency` declares what a backend
can take at once (an in-process model: 1). Identical requests in flight at the same time are sent once.
Every result, fresh or cached, goes through `replies.normalize` (reasoning removed; an empty or
reasoning-only answer is a failed call, and a cached row that fails it is a miss), is committed to the
cache as it arrives (successes only; before its endpoint slot is free) and accounted with
`stats.record_call`; when the first DEAD_AFTER calls of an invocation all fail, BackendError stops the run
with the last server message. A progress display per stage (done/total, ETA, tokens/s: executors/progress.py)
shows on a terminal or in a notebook.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from personaloom.aio import gather_all
from personaloom.backends.base import MAX_RETRY_AFTER_S, STOP_POLL_S, Backend
from personaloom.backends.cache import ResponseCache
from personaloom.chat import ChatRequest, ChatResult
from personaloom.console import console
from personaloom.errors import BackendError
from personaloom.executors.progress import ProgressSink, _StageProgress, _TokenRate, make_progress  # noqa: F401
from personaloom.executors.window import Window, corrected, counted_ratio, cut, fit, needed, refusal, too_long
from personaloom.replies import normalize
from personaloom.stats import Stats
from personaloom.stop import RunStopped, StopSignal

# What a request that was not sent after a stop request comes back as (never accounted or cached).
_SKIPPED = ChatResult(error="not sent: the run is stopping")
# Not sent: while it waited for a slot, the endpoint's context window became known and it does not fit.
_REFIT = ChatResult(error="not sent: to be fitted to the context window")
# Consecutive failed calls, with no success yet in this invocation, after which the server is taken to
# be unusable and the run stops with its message (instead of paying for thousands of doomed calls).
DEAD_AFTER = 24


async def optional(backend: Backend, name: str, *args: Any) -> Any:
    """`backend.name(*args)` where the backend has it (a scripted test backend may not), else None."""
    method = getattr(backend, name, None)
    return await method(*args) if method is not None else None


class Endpoint:
    """The one concurrency bound of a server (URL + model) or an in-process model, shared by every client
    that talks to it, adapted to what the server takes (AIMD).

    `ceiling` is the configured concurrency (the lowest of the clients' settings); `limit` starts there.
    When a request meets a 429, a 503 or a timeout (`overloaded`), the limit halves — once per episode:
    only while no more requests are in flight than the limit allows, since those admitted under a higher
    limit report the same overload — and no request starts, new or already waiting for a slot, before the
    server's Retry-After (at most MAX_RETRY_AFTER_S) has passed, unless the user asks the run to stop: then
    the waiting requests go on at once, to be skipped. Every `limit` successes add one back, never above
    the ceiling.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.ceiling = self.limit = self.lowest = max(1, limit)
        self.in_flight = 0
        self.cuts = 0
        self._successes = 0
        self._resume_at = 0.0
        # Requests waiting for a slot, first come first served; a release wakes only as many as there are
        # free slots (a Condition's notify_all woke every waiter per release: ~800 wake-ups per request at
        # concurrency 256, milliseconds of CPU each).
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Wakes the waiters when a Retry-After window ends (or the user asks to stop during one).
        self._timer: asyncio.TimerHandle | None = None
        self.stop: StopSignal | None = None
        # Its model's context window, when known (executors/window.py); `on_window` is told each one learned.
        self.window: Window | None = None
        self.on_window: Callable[[str, Window], None] | None = None
        self._said_fitted = False
        self._asked: asyncio.Task[None] | None = None

    async def ask_window(self, backend: Backend) -> None:
        """Ask the server for its context window once (every request waits for that one answer)."""
        if self.window is not None:
            return
        task = self._asked
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = self._asked = asyncio.ensure_future(self._ask(backend))
        if not task.done():
            await asyncio.shield(task)

    async def _ask(self, backend: Backend) -> None:
        found = await optional(backend, "context_window")
        if found is not None and self.window is None:
            self.window = Window(found[0], found[1])

    def learn(self, window: Window) -> None:
        """A refusal named the window: fit every later request to it (said once per window on stderr)."""
        if self.window is not None and self.window.tokens == window.tokens:
            window = Window(window.tokens, self.window.source, min(window.chars_per_token,
                                                                   self.window.chars_per_token))
        else:
            console.print(f"[yellow]{self.name}: the model's context window is {window.tokens} tokens "
                          f"({window.source}): later requests are fitted to it (fewer few-shot examples where "
                          "needed)[/yellow]")
        self.window = window
        if self.on_window is not None:
            self.on_window(self.name, window)

    def fitted(self, dropped: int) -> None:
        """A request was fitted to the window by dropping `dropped` few-shot examples (said once)."""
        if not self._said_fitted and self.window is not None:
            self._said_fitted = True
            console.print(f"[yellow]{self.name}: prompts are fitted to its {self.window.tokens}-token context window "
                          f"({self.window.source}): "
                          + (f"{dropped} few-shot example(s) fewer" if dropped else "a few-shot example cut to "
                             "fewer turns") + " in the Generator's requests (stats.json: refitted, examples_dropped, "
                          "turns_capped)[/yellow]")

    def join(self, limit: int) -> None:
        """Another client of this endpoint, configured for at most `limit` requests at once."""
        self.ceiling = min(self.ceiling, max(1, limit))
        self.limit = min(self.limit, self.ceiling)
        self.lowest = min(self.lowest, self.limit)

    def _bind(self, running: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
        # The caller's loop when it knows it: get_running_loop() is a system call (getpid) on Python 3.11.
        loop = running or asyncio.get_running_loop()
        if self._loop is not loop:
            # State is per event loop: `LLM.run()` uses a fresh loop per call.
            self._loop, self.in_flight, self._resume_at = loop, 0, 0.0
            self._waiters.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        return loop

    def _holding(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether requests wait for the server's Retry-After now (not once the user asked to stop)."""
        return loop.time() < self._resume_at and not (self.stop is not None and self.stop.requested)

    def _tick(self) -> None:
        self._timer = None
        self._wake()

    def _wake(self) -> None:
        """Hand the free slots to the longest waiting requests (none during a Retry-After window: a timer
        wakes them when it ends, looking every 0.25 s whether the user asked to stop)."""
        loop = self._loop
        if loop is not None and self._waiters and self._holding(loop):
            if self._timer is None:
                self._timer = loop.call_later(min(self._resume_at - loop.time(), STOP_POLL_S), self._tick)
            return
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1  # taken on the waiter's behalf
                waiter.set_result(None)

    def overloaded(self, retry_after: float | None) -> None:
        """The server said it has too much (429/503/timeout): multiplicative decrease."""
        if self.in_flight <= self.limit and self.limit > 1:
            self.limit = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            self.cuts += 1
            self._successes = 0
        if retry_after and self._loop is not None:
            self._resume_at = max(self._resume_at, self._loop.time() + min(retry_after, MAX_RETRY_AFTER_S))

    def succeeded(self) -> None:
        """A request went through at the first try: additive increase."""
        self._successes += 1
        if self.limit < self.ceiling and self._successes >= self.limit:
            self.limit += 1  # additive increase
            self._successes = 0
            self._wake()

    @contextlib.asynccontextmanager
    async def slot(self, running: asyncio.AbstractEventLoop | None = None) -> AsyncIterator[None]:
        """Hold one of the endpoint's `limit` slots (after the server's Retry-After, if it gave one).
        `running`: the running event loop, when the caller has it at hand."""
        loop = self._bind(running)
        if self.in_flight < self.limit and not self._waiters and not self._holding(loop):
            self.in_flight += 1
        else:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            self._wake()  # during a Retry-After window: arms the timer that ends it
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # granted, then cancelled: pass the slot on
                    self.in_flight -= 1
                    self._wake()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
        try:
            yield
        finally:
            self.in_flight -= 1
            self._wake()


class LLM:
    """The LLMClient the stages' steps run through (see `personaloom.chat.LLMClient`).

    `endpoint`: the bound shared with other clients of the same server (default: one of this client's own,
    at `backend.max_concurrency`)."""

    def __init__(
        self,
        backend: Backend,
        cache: ResponseCache | None = None,
        stats: Stats | None = None,
        progress: bool | ProgressSink = True,
        endpoint: Endpoint | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.stats = stats if stats is not None else Stats()
        self.in_flight = 0
        # True: shown where it can be (a terminal, a notebook); a display shared with the run's other clients.
        self._progress: ProgressSink = make_progress(None if progress else False) if isinstance(progress, bool) \
            else progress
        self.endpoint = endpoint if endpoint is not None else Endpoint(repr(backend), backend.max_concurrency)
        self.endpoint.join(backend.max_concurrency)
        backend.on_overload = self.endpoint.overloaded
        self.stop = stop
        if stop is not None:
            self.endpoint.stop = stop
            backend.stopping = lambda: stop.requested
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, asyncio.Future[ChatResult]] = {}
        self._succeeded = False
        self._failed_in_a_row = 0

    def _fresh_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._pending = loop, {}

    def _key(self, request: ChatRequest) -> str:
        return request.cache_key(self.backend.kind, self.backend.model_id)

    async def _call(self, request: ChatRequest, key: str, fitted_to: Window | None) -> ChatResult:
        async with self.endpoint.slot(self._loop):
            if self.stop is not None and self.stop.requested:
                return _SKIPPED  # not sent: the user asked the run to stop
            window = self.endpoint.window
            if window != fitted_to and window is not None and needed(request, window.chars_per_token) \
                    > window.tokens:
                return _REFIT
            self.in_flight += 1
            start = time.perf_counter()
            try:
                results = await self.backend.agenerate([request])
            except BackendError as exc:
                # The run stops on it; the call still counts as failed (stats.json, failures.jsonl).
                failed = ChatResult(error=str(exc))
                self.stats.record_call(request.stage, failed, request.metadata.get("id"), echo=False)
                raise
            except Exception as exc:  # a backend bug must not kill a run: it becomes this request's error
                elapsed = time.perf_counter() - start
                results = [ChatResult(error=f"{type(exc).__name__}: {exc}", latency_s=elapsed)]
            finally:
                self.in_flight -= 1
            if len(results) == 1 and results[0].error is None and results[0].retries == 0:
                self.endpoint.succeeded()
            if len(results) != 1:
                return ChatResult(error=f"backend returned {len(results)} results for one request")
            if results[0].error is not None and self.stop is not None and self.stop.requested:
                return _SKIPPED  # e.g. a retry given up for the stop: a re-run sends it again
            result = normalize(results[0], request)
            said = cut(result, request, window, self.backend.silent_cut)
            if said is None and window is not None and result.ok and result.usage.reported:
                lower = corrected(window, request, result.usage.prompt_tokens)
                if lower is not None:  # the estimate was short for this text: estimate longer from now on
                    self.endpoint.learn(lower)
            if said is not None:  # never cached: a re-run, or the refit below, sends it again
                result = ChatResult(error=said, error_reason="prompt_cut", usage=result.usage,
                                    latency_s=result.latency_s)
            # Committed before the slot is free: requests sent and not yet cached never exceed the bound, so
            # a killed run pays again for at most `concurrency` calls.
            if self.cache is not None:
                await self.cache.aput(key, result)
        return result

    def _account(self, request: ChatRequest, result: ChatResult) -> None:
        """Stats and progress for one result; BackendError when the first DEAD_AFTER calls all failed."""
        self.stats.record_call(request.stage, result, request.metadata.get("id"))
        self._progress.finished(request.stage, result, self.endpoint)
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

    async def _fit(self, request: ChatRequest) -> ChatRequest | ChatResult:
        """`request` fitted to the endpoint's window (executors/window.py), or the failure of one that cannot
        fit: never sent, reason "context_window". Where the estimate says it does not fit whole and the server
        can count its tokens, it is fitted on that count."""
        window = self.endpoint.window
        if window is None:
            return request
        ratio = None
        if needed(request, window.chars_per_token) > window.tokens:
            tokens = await optional(self.backend, "count_tokens", request)
            ratio = counted_ratio(request, tokens) if tokens else None
        fitted, dropped, capped = fit(request, window, ratio)
        if fitted is None:
            failed = ChatResult(error=too_long(request, window, self.endpoint.name), error_reason="context_window")
            self.stats.add(request.stage, "context_window")
            self._progress.finished(request.stage, failed, self.endpoint)
            return failed
        if dropped or capped:
            self.stats.add(request.stage, "refitted")
            self.endpoint.fitted(dropped)
        if dropped:
            self.stats.add(request.stage, "examples_dropped", dropped)
        if capped:
            self.stats.add(request.stage, "turns_capped")
        return fitted

    async def _one(self, request: ChatRequest) -> ChatResult:
        """One request, fitted to the endpoint's context window; refused for its length by the server (or cut by
        it), the window it names is learned and the request is fitted to it and sent again, once."""
        await self.endpoint.ask_window(self.backend)
        learn = True
        while True:
            fitted_to = self.endpoint.window
            sent = await self._fit(request)
            if isinstance(sent, ChatResult):
                return sent
            result, learned = await self._send(sent, learn, fitted_to)
            if result is _REFIT:
                continue  # the window became known while it waited for a slot
            if learned is None:
                return result
            self.stats.add(request.stage, "context_refused")
            if self.endpoint.window is None and result.error_reason == "prompt_cut":
                # Guessed from the reply; the server may say it now (Ollama's /api/ps, once the model is loaded).
                # The guess holds meanwhile, so that requests waiting for a slot are fitted to it.
                guess = self.endpoint.window = learned
                found = await optional(self.backend, "context_window")
                learned = Window(found[0], found[1]) if found is not None else learned
                if self.endpoint.window is guess:  # no other reply learned one meanwhile
                    self.endpoint.window = None  # learned below, and said
            self.endpoint.learn(learned)
            learn = False

    async def _send(self, request: ChatRequest, learn: bool, fitted_to: Window | None) -> tuple[
            ChatResult, Window | None]:
        """The result of `request` (cache, the same request in flight, or the backend), accounted; with `learn`,
        a refusal naming a context window is returned unaccounted with that window."""
        key = self._key(request)
        hit = self.cache.get(key, self._loop) if self.cache is not None else None
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
            return hit, None
        assert self._loop is not None  # set by complete(), the only caller
        future: asyncio.Future[ChatResult] = self._loop.create_future()
        self._pending[key] = future
        try:
            result = await self._call(request, key, fitted_to)
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                    future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
                else:
                    future.cancel()
            raise
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
        if not future.done():
            future.set_result(result)
        if result is _SKIPPED or result is _REFIT:
            return result, None
        window = refusal(result.error, request) if learn and result.error is not None else None
        if window is None:
            self._account(request, result)
        return result, window

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
            self.stats.began(stage)
        self._fresh_loop()
        results = await gather_all(self._one(r) for r in requests)
        if any(r is _SKIPPED for r in results):
            # The requests already at the server finished (and are cached); the stage cannot go on.
            raise RunStopped(f"stopped by the user during {requests[0].stage}; re-run the same command to resume")
        return results

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
