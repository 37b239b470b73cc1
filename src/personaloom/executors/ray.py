"""The Ray executor's LLM client (`--executor ray`): the local client's cache and accounting in the driver,
the backend itself in Ray workers, fed through Ray Data.

In: a `BackendConfig` (the backend is built from it inside the workers, not in this process), an
optional `ResponseCache`, a `Stats`, and batches of `ChatRequest`s from any number of concurrent tasks.
Out: one `ChatResult` per request, in order, the same as the local executor's `LLM` gives for the
same requests (same seeds, same texts; same cache keys, so a run may switch executors and keep its cache).

Path of a request: `LLM._one` in the driver (fitting to the context window, which a worker asks the server
for at start; cache lookup, sharing of identical in-flight requests, stats, progress: all inherited) ->
`_RayBackend.agenerate` -> `_Coalescer`, which gathers the requests of every concurrent caller for up to
`wait_ms` (or `max_batch` requests) into one Ray Dataset
-> `ray.data.from_items(rows).map_batches(_BackendBatch, ...)`: `_BackendBatch` is a callable class
that builds the backend once per worker with `personaloom.backends.create_backend` and answers a batch
(up to the backend's own concurrency at once) -> rows back, put in order by index.

Ray is imported only here, and only when a RayLLM is made. Without `address` (or RAY_ADDRESS) a
local Ray instance starts once per process with `num_cpus` CPUs and no dashboard; its traffic stays on
this machine (Ray 2.60 still opens its gRPC ports on the node's address, with token authentication).

Workers, both Ray Data `map_batches` over the same `_BackendBatch` class:
- `workers="tasks"` (default): plain tasks that keep their `_BackendBatch` in a per-process table;
  Ray reuses its worker processes, so each worker builds the backend (loads the model) once for the run.
- `workers="actors"`: an actor pool of `actors` actors per dataset, Ray Data's standard way to hold a
  model (use it on a GPU cluster, with `remote_args={"num_gpus": 1}`).
Measured on 2 shared cores (fake backend, 40 requests per dataset): ~0.2 s per dataset with tasks,
~4.5 s with actors, because Ray Data starts a fresh actor pool (new processes, a model load each) for
every dataset. The pipeline sends many small dependent waves (a profile's next attribute waits for the
last judgement; a small `run` sent 15 datasets): a full small run took 51 s with tasks, 178 s with
actors, 39 s with the local executor. Actors pay off only when waves are large and models are heavy.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from personaloom.backends.base import Backend
from personaloom.backends.cache import ResponseCache
from personaloom.chat import ChatRequest, ChatResult
from personaloom.config import BackendConfig
from personaloom.errors import BackendError, ConfigError, PersonaloomError
from personaloom.executors.local import LLM
from personaloom.executors.progress import ProgressSink
from personaloom.stats import Stats
from personaloom.stop import StopSignal

BackendFactory = Callable[[BackendConfig], Backend]
Workers = Literal["actors", "tasks"]

_INSTALL_HINT = "--executor ray needs Ray Data: pip install 'personaloom[ray]'"


def import_ray() -> Any:
    """The `ray` module (with `ray.data` loaded), or a ConfigError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(f"{_INSTALL_HINT} ({exc})") from None
    return ray


def init_ray(num_cpus: int | None = None, address: str | None = None) -> Any:
    """Start (or join) Ray once per process and quieten Ray Data; returns the `ray` module.

    `address` (or the RAY_ADDRESS environment variable) joins an existing cluster; otherwise a local
    instance starts with `num_cpus` CPUs (default: all of this machine's).
    """
    ray = import_ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "ignore_reinit_error": True,
        }
        if address is None:
            # (`_node_ip_address="127.0.0.1"` would not help: Ray replaces loopback with the node's IP.)
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "a local instance"
            raise BackendError(f"cannot start Ray ({where}): {exc}") from None
    ctx = ray.data.DataContext.get_current()
    # One dataset per wave of requests: per-dataset progress bars and banners would drown the stage bars.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.execution_options.preserve_order = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


# -- inside the workers ------------------------------------------------------------------------------


async def _guarded(backend: Backend, request: ChatRequest, sem: asyncio.Semaphore) -> ChatResult:
    """One request, with the local executor's policy: a backend bug becomes this request's error;
    BackendError (backend unusable) propagates."""
    async with sem:
        start = time.perf_counter()
        try:
            results = await backend.agenerate([request])
        except (BackendError, asyncio.CancelledError):
            raise
        except Exception as exc:
            return ChatResult(error=f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - start)
    if len(results) != 1:
        return ChatResult(error=f"backend returned {len(results)} results for one request")
    return results[0]


class _BackendBatch:
    """Ray Data callable class: holds one backend (built from the config where it runs) and answers a
    batch of rows {"index", "request" (JSON)} with rows {"index", "result" (JSON), "fatal"}.

    "fatal" is non-empty when the backend cannot be used at all (model missing, server down); the driver
    raises it as a BackendError, as the local executor would.
    """

    def __init__(self, config_json: str, factory: BackendFactory | None = None) -> None:
        from personaloom.backends import create_backend

        # One loop for the worker's life: a server backend's connections belong to the loop that opened them.
        self._loop = asyncio.new_event_loop()
        self._backend: Backend | None = None
        self._fatal = ""
        try:
            self._backend = (factory or create_backend)(BackendConfig.model_validate_json(config_json))
        except PersonaloomError as exc:
            self._fatal = str(exc)

    def describe(self) -> tuple[str, str, int, tuple[int, str] | None]:
        """(kind, model_id, max_concurrency, the context window the server states or None), or BackendError
        when the backend could not be built."""
        if self._backend is None:
            raise BackendError(self._fatal)
        from personaloom.executors.local import optional

        window = self._loop.run_until_complete(optional(self._backend, "context_window"))
        return self._backend.kind, self._backend.model_id, self._backend.max_concurrency, window

    async def _answer(self, requests: list[ChatRequest]) -> list[ChatResult]:
        from personaloom.aio import gather_all

        assert self._backend is not None
        sem = asyncio.Semaphore(max(1, self._backend.max_concurrency))
        return await gather_all(_guarded(self._backend, r, sem) for r in requests)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        index = [int(i) for i in batch["index"]]
        results = [""] * len(index)
        fatal = self._fatal
        if not fatal:
            try:
                requests = [ChatRequest.model_validate_json(str(r)) for r in batch["request"]]
                answered = self._loop.run_until_complete(self._answer(requests))
                results = [r.model_dump_json() for r in answered]
            except PersonaloomError as exc:
                fatal = str(exc) or type(exc).__name__
        return {
            "index": np.asarray(index, dtype=np.int64),
            "result": np.asarray(results, dtype=object),
            "fatal": np.asarray([fatal] * len(index), dtype=object),
        }


# Task workers keep their backends here between tasks (Ray reuses worker processes), keyed by config.
_HELD: dict[tuple[str, str], _BackendBatch] = {}


def _held(config_json: str, factory: BackendFactory | None) -> _BackendBatch:
    name = f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', '')}" if factory else ""
    key = (config_json, name)
    if key not in _HELD:
        _HELD[key] = _BackendBatch(config_json, factory)
    return _HELD[key]


def _answer_held(batch: dict[str, Any], config_json: str, factory: BackendFactory | None) -> dict[str, Any]:
    return _held(config_json, factory)(batch)


def _describe_held(config_json: str, factory: BackendFactory | None) -> tuple[str, str, int, tuple[int, str] | None]:
    return _held(config_json, factory).describe()


# -- in the driver -----------------------------------------------------------------------------------


@dataclass
class _Waiting:
    request: ChatRequest
    future: asyncio.Future[ChatResult]


class _Coalescer:
    """Gathers concurrent single requests into batches: a batch leaves when `max_batch` requests wait or
    `wait_s` after the first one arrived. One batch runs at a time (one Ray Dataset); requests that
    arrive meanwhile make up the next, so Ray sees few large datasets instead of many tiny ones."""

    def __init__(self, run_batch: Callable[[list[ChatRequest]], list[ChatResult]], max_batch: int, wait_s: float):
        self._run_batch = run_batch
        self._max_batch = max(1, max_batch)
        self._wait_s = max(0.0, wait_s)
        self._queue: list[_Waiting] = []
        self._arrived = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of the batches sent, for tests and tuning

    async def submit(self, request: ChatRequest) -> ChatResult:
        future: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(request, future))
        self._arrived.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while True:
            self._queue = [w for w in self._queue if not w.future.done()]  # callers cancelled meanwhile
            if not self._queue:
                return
            deadline = time.monotonic() + self._wait_s
            while len(self._queue) < self._max_batch and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = [w for w in self._queue[: self._max_batch] if not w.future.done()]
            del self._queue[: self._max_batch]
            if not batch:
                continue
            self.batches.append(len(batch))
            try:
                results = await asyncio.to_thread(self._run_batch, [w.request for w in batch])
            except Exception as exc:
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                        w.future.exception()  # retrieved here: each caller re-raises it itself
                continue
            for w, result in zip(batch, results, strict=True):
                if not w.future.done():
                    w.future.set_result(result)


class _RayBackend(Backend):
    """The driver's stand-in for the backend living in Ray workers: LLM's code paths see a Backend
    whose `agenerate` goes through the coalescer and Ray Data."""

    def __init__(
        self,
        config: BackendConfig,
        factory: BackendFactory | None,
        *,
        workers: Workers,
        actors: int,
        batch_size: int | None,
        max_batch: int,
        wait_s: float,
        remote_args: dict[str, Any],
    ) -> None:
        self.config = config
        self._config_json = config.model_dump_json()
        self._factory = factory
        self.workers = workers
        self.actors = max(1, actors)
        self.batch_size = batch_size
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._remote_args = remote_args
        self.kind = config.kind  # type: ignore[misc]  # replaced by the built backend's own below
        self.silent_cut = "maybe" if config.kind == "openai" else "never"
        self._model_id = ""
        self._window: tuple[int, str] | None = None
        # LLM's semaphore: enough requests in flight to fill one batch while the previous one runs.
        self.max_concurrency = 2 * max_batch
        self._coalescers: dict[asyncio.AbstractEventLoop, _Coalescer] = {}
        self._probe()

    def _probe(self) -> None:
        """Build the backend once in a worker to learn its identity (for cache keys identical to the local
        executor's) and to fail early, with the backend's own message, when it cannot be built."""
        ray = import_ray()
        # Same environment as the workers (e.g. runtime_env env_vars carrying a server's API key).
        env = {"runtime_env": self._remote_args["runtime_env"]} if "runtime_env" in self._remote_args else {}
        describe = ray.remote(num_cpus=0, **env)(_describe_held)
        try:
            kind, model_id, _, self._window = ray.get(describe.remote(self._config_json, self._factory))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, PersonaloomError):
                raise BackendError(str(cause)) from None
            raise BackendError(f"Ray worker could not build the {self.config.kind} backend: {exc}") from None
        self.kind = kind  # type: ignore[misc]
        self._model_id = model_id

    @property
    def model_id(self) -> str:
        return self._model_id

    async def context_window(self) -> tuple[int, str] | None:
        """The window the server stated to the worker that was asked at start (None: learned from a refusal)."""
        return self._window

    def _run_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One Ray Dataset for these requests; blocks (runs in a thread)."""
        ray = import_ray()
        rows = [{"index": i, "request": r.model_dump_json()} for i, r in enumerate(requests)]
        size = self.batch_size or max(1, math.ceil(len(rows) / self.actors))
        blocks = max(1, math.ceil(len(rows) / size))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        pool = min(self.actors, blocks)  # no idle actors (or Ray warnings) for a small wave
        if self.workers == "actors":
            ds = ds.map_batches(
                _BackendBatch,
                fn_constructor_kwargs={"config_json": self._config_json, "factory": self._factory},
                compute=ray.data.ActorPoolStrategy(size=pool),
                batch_size=size,
                **self._remote_args,
            )
        else:
            ds = ds.map_batches(
                _answer_held,
                fn_kwargs={"config_json": self._config_json, "factory": self._factory},
                compute=ray.data.TaskPoolStrategy(size=pool),
                batch_size=size,
                **self._remote_args,
            )
        out: list[ChatResult | None] = [None] * len(requests)
        try:
            for row in ds.iter_rows():
                if row["fatal"]:
                    raise BackendError(str(row["fatal"]))
                out[int(row["index"])] = ChatResult.model_validate_json(str(row["result"]))
        except ray.exceptions.RayError as exc:
            # Ray has already retried the failed tasks: the workers cannot run the backend.
            raise BackendError(f"Ray could not run the {self.config.kind} backend: {exc}") from None
        return [r if r is not None else ChatResult(error="Ray returned no result for this request") for r in out]

    def _coalescer(self) -> _Coalescer:
        loop = asyncio.get_running_loop()
        if loop not in self._coalescers:
            # One per event loop, like LLM's semaphore (`LLM.run` makes a new loop per call).
            self._coalescers = {loop: _Coalescer(self._run_batch, self._max_batch, self._wait_s)}
        return self._coalescers[loop]

    @property
    def batches(self) -> list[int]:
        """Sizes of the Ray Datasets sent from the current event loop."""
        return [n for c in self._coalescers.values() for n in c.batches]

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        coalescer = self._coalescer()
        return list(await asyncio.gather(*(coalescer.submit(r) for r in requests)))


class RayLLM(LLM):
    """The LLMClient of `--executor ray` (see the module docstring); the same interface as `LLM`."""

    def __init__(
        self,
        backend: BackendConfig,
        cache: ResponseCache | None = None,
        stats: Stats | None = None,
        progress: bool | ProgressSink = True,
        *,
        actors: int = 2,
        workers: Workers = "tasks",
        batch_size: int | None = None,
        max_batch: int = 256,
        wait_ms: float = 50.0,
        num_cpus: int | None = None,
        address: str | None = None,
        remote_args: dict[str, Any] | None = None,
        backend_factory: BackendFactory | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        """`backend`: the backend to build in each worker. `actors`: actors (or concurrent tasks) per
        dataset. `workers`: "actors" or "tasks" (module docstring). `batch_size`: rows per map_batches call
        (default: a wave split evenly over the actors). `max_batch` / `wait_ms`: when a wave leaves.
        `num_cpus` / `address`: the local instance's CPUs, or a cluster to join. `remote_args`: Ray
        resources per actor, e.g. {"num_gpus": 1}. `backend_factory`: builds the backend in the workers
        (default: `personaloom.backends.create_backend` as this process sees it; it must pickle). `stop`: the
        run's graceful stop (no request leaves the driver once it is requested)."""
        if workers not in ("actors", "tasks"):
            raise ConfigError(f"ray workers {workers!r}: expected 'actors' or 'tasks'")
        init_ray(num_cpus=num_cpus, address=address)
        if backend_factory is None:
            import personaloom.backends

            # Resolved here, in the driver, and shipped to the workers with every dataset.
            backend_factory = personaloom.backends.create_backend
        proxy = _RayBackend(
            backend,
            backend_factory,
            workers=workers,
            actors=actors,
            batch_size=batch_size,
            max_batch=max_batch,
            wait_s=wait_ms / 1000.0,
            remote_args=dict(remote_args or {}),
        )
        super().__init__(proxy, cache, stats, progress, stop=stop)
        self.ray_backend = proxy


__all__ = ["RayLLM", "import_ray", "init_ray"]
