"""One executor client per backend configuration of a run, sharing the response cache, the stats and one
concurrency bound per endpoint.

In: a RunConfig, the run directory (for cache.sqlite) and the run's Stats. Out: `main` (the run's backend)
and `role(name)` (an expert's own backend where it has one, else the main one) — a `Router` for
`run_step`. Two configurations of the same endpoint (kind, server URL, model) — e.g. two experts on one
server with different timeouts — get two clients but one bound: the lowest `concurrency` configured for
it. An in-process model takes one request at a time whatever `backend.concurrency` says; a setting
above that is reported once, not silently overridden. Each endpoint's context window, when known
(backend.context_window, the embedded model's n_ctx, or learned from a refusal and kept in the run directory's
context_windows.json), is what the clients fit requests to (executors/window.py).
"""

from __future__ import annotations

from pathlib import Path

from personaloom.backends import create_backend
from personaloom.backends.auth import resolve_auth
from personaloom.backends.cache import ResponseCache
from personaloom.chat import LLMClient
from personaloom.config import BackendConfig, RunConfig
from personaloom.console import console
from personaloom.executors import window
from personaloom.executors.local import LLM, Endpoint
from personaloom.executors.progress import make_progress
from personaloom.executors.window import Window
from personaloom.redact import redact_url
from personaloom.stats import Stats
from personaloom.stop import StopSignal

# The context windows learned from servers' refusals, by endpoint (executors/window.py).
WINDOWS = "context_windows.json"


def endpoint_key(cfg: BackendConfig) -> tuple[str, str | None, str | None]:
    """(kind, base URL, model): one concurrency bound each; the URL redacted, as it names the endpoint in stats."""
    return cfg.kind, None if cfg.base_url is None else redact_url(cfg.base_url), cfg.model


class Clients:
    """The run's clients (see the module docstring)."""

    def __init__(self, config: RunConfig, out: Path, stats: Stats, stop: StopSignal | None = None,
                 progress: bool | None = None) -> None:
        self.config = config
        self.out = out
        self.stats = stats
        self.stop = stop
        # One display for every client of the run (a terminal shows one live display at a time); None: auto.
        self.progress = make_progress(progress)
        self._cache: ResponseCache | None = None
        self._clients: dict[str, LLMClient] = {}
        self._roles: dict[str, LLMClient] = {}
        self._endpoints: dict[tuple[str, str | None, str | None], Endpoint] = {}
        configs = [config.backend, *(e.backend for e in config.critic.experts.values() if e.backend is not None)]
        for bcfg in configs:
            if bcfg.kind == "openai":
                resolve_auth(bcfg)  # a bad URL or an unset variable fails here, before any stage pays
            key = endpoint_key(bcfg)
            if key in self._endpoints:
                self._endpoints[key].join(bcfg.concurrency)
            else:
                self._endpoints[key] = Endpoint(":".join(str(k or "") for k in key), bcfg.concurrency)

    def _cache_obj(self) -> ResponseCache | None:
        if self._cache is None and self.config.cache:
            self._cache = ResponseCache(self.out / "cache.sqlite")
        return self._cache

    def for_backend(self, bcfg: BackendConfig) -> LLMClient:
        key = bcfg.model_dump_json()
        if key not in self._clients:
            if self.config.executor == "ray":
                from personaloom.executors.ray import RayLLM

                r = self.config.ray
                self._clients[key] = RayLLM(
                    bcfg, self._cache_obj(), self.stats, progress=self.progress, address=r.address, workers=r.workers,
                    actors=r.actors, num_cpus=r.num_cpus, max_batch=r.max_batch, wait_ms=r.wait_ms,
                    remote_args={"num_gpus": r.num_gpus} if r.num_gpus else None, stop=self.stop,
                )
            else:
                backend = create_backend(bcfg)
                if "concurrency" in bcfg.model_fields_set and bcfg.concurrency > backend.max_concurrency:
                    console.print(f"[yellow]backend.concurrency={bcfg.concurrency} does not apply to {backend!r}: it "
                                  f"takes {backend.max_concurrency} request(s) at a time[/yellow]")
                endpoint = self._endpoints.setdefault(endpoint_key(bcfg), Endpoint(repr(backend), bcfg.concurrency))
                self._know_window(endpoint, bcfg)
                self._clients[key] = LLM(backend, self._cache_obj(), self.stats, progress=self.progress,
                                         endpoint=endpoint, stop=self.stop)
        return self._clients[key]

    def _know_window(self, endpoint: Endpoint, bcfg: BackendConfig) -> None:
        """The endpoint's context window: the setting, else the embedded model's n_ctx, else what an earlier
        invocation on this run directory learned (context_windows.json); learned ones are written there."""
        if endpoint.window is None:
            if bcfg.context_window is not None:
                endpoint.window = Window(bcfg.context_window, "backend.context_window")
            elif bcfg.kind == "embedded":
                endpoint.window = Window(bcfg.n_ctx, "backend.n_ctx")
            else:
                endpoint.window = window.load(self.out / WINDOWS).get(endpoint.name)

        def remember(name: str, learned: Window) -> None:
            known = window.load(self.out / WINDOWS)
            window.save(self.out / WINDOWS, {**known, name: learned})

        endpoint.on_window = remember

    @property
    def main(self) -> LLMClient:
        return self.for_backend(self.config.backend)

    def role(self, name: str) -> LLMClient:
        client = self._roles.get(name)
        if client is None:  # asked once per request: resolved once per role
            expert = self.config.critic.experts.get(name)
            own = expert.backend if expert is not None else None
            client = self.for_backend(own) if own is not None else self.main
            self._roles[name] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        if self._cache is not None:
            self._cache.close()
