"""Counters for one invocation: LLM calls, cache hits, tokens, retries, failures, wall time per stage.

In: events from the executor (`record_call`) and the stages (`failure`, `add`, `stage` timer).
Out: the `stats.json` shape of DESIGN.md §3:
  {"llm": {calls, cache_hits, prompt_tokens, completion_tokens, retries, errors},
   "stages": {name: {wall_s, calls, cache_hits, prompt_tokens, completion_tokens, ...}},
   "conversations": int, "failures": {reason: int}}
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from personaloom.backends.base import ChatResult

LLM_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "retries", "errors")


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.llm: Counter[str] = Counter({k: 0 for k in LLM_KEYS})
        self.stages: dict[str, dict[str, Any]] = {}
        self.failures: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}
        self.conversations = 0

    def _stage(self, name: str) -> dict[str, Any]:
        return self.stages.setdefault(name, {"wall_s": 0.0, **{k: 0 for k in LLM_KEYS}})

    def record_call(self, stage: str, result: ChatResult) -> None:
        """Account one request's result: a cache hit costs nothing; a miss counts as a paid call."""
        with self._lock:
            st = self._stage(stage)
            if result.cached:
                keys = {"cache_hits": 1}
            else:
                keys = {
                    "calls": 1,
                    "prompt_tokens": result.usage.prompt_tokens,
                    "completion_tokens": result.usage.completion_tokens,
                    "retries": result.retries,
                    "errors": 1 if result.error else 0,
                }
            for k, v in keys.items():
                self.llm[k] += v
                st[k] += v

    def add(self, stage: str, key: str, value: float = 1) -> None:
        with self._lock:
            st = self._stage(stage)
            st[key] = st.get(key, 0) + value

    def failure(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.failures[reason] += n

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        start = time.perf_counter()
        try:
            yield self._stage(name)
        finally:
            with self._lock:
                self._stage(name)["wall_s"] += round(time.perf_counter() - start, 3)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "llm": dict(self.llm),
                "stages": {k: dict(v) for k, v in self.stages.items()},
                "conversations": self.conversations,
                "failures": dict(self.failures),
                **self.extra,
            }


def merge_tokens(into: dict[str, dict[str, int]], rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Add per-role token counts ({role: {"calls", "prompt_tokens", "completion_tokens"}}) into `into`."""
    for role, row in rows.items():
        acc = into.setdefault(role, {})
        for key, value in row.items():
            acc[key] = acc.get(key, 0) + int(value)
    return into
