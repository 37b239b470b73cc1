"""Counters for one invocation: LLM calls, cache hits, tokens, retries, failures, wall time per stage.

In: events from the executor (`record_call`) and the stages (`failure`, `add`, `stage` timer).
Out: the `stats.json` shape of DESIGN.md §3:
  {"llm": {calls, cache_hits, prompt_tokens, completion_tokens, retries, errors, usage_unknown},
   "stages": {name: {wall_s, calls, cache_hits, prompt_tokens, completion_tokens, ...}},
   "conversations": int, "failures": {reason: int},
   "llm_errors": [{"stage", "message", "count"}]}          (the servers' own words, per distinct message)
`usage_unknown` counts paid calls whose server reported no token usage: their tokens are unknown, not 0.
The first time a distinct error message is seen it is printed on stderr (one line), and every failed call
is kept (stage, item id, message; at most MAX_FAILED_CALLS) for the run's failures.jsonl. A stage timed by
no `stage` block (an LLM stage such as critic.depth, whose calls interleave with others') gets as `wall_s`
its span: from its first request submitted (`began`) to its last result.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from personaloom.chat import ChatResult

LLM_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "retries", "errors", "usage_unknown")
MAX_FAILED_CALLS = 10_000


def first_line(message: str, limit: int = 300) -> str:
    """A message's first non-blank line, cut to `limit` characters (for one-line reports)."""
    line = next((ln.strip() for ln in message.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Stats:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        """`clock`: seconds, monotonic, for the stages' wall_s (a test injects one)."""
        self._clock = clock
        self._lock = threading.Lock()
        self.llm: Counter[str] = Counter({k: 0 for k in LLM_KEYS})
        self.stages: dict[str, dict[str, Any]] = {}
        self.failures: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}
        self.conversations = 0
        # (stage, first line of the error) -> count, in the order first seen
        self.errors: Counter[tuple[str, str]] = Counter()
        self.failed_calls: list[tuple[str, str, str]] = []
        self.echo_errors = True
        # stage -> [first request submitted, last result] (the clock), for stages no `stage` block times
        self._spans: dict[str, list[float]] = {}
        self._timed: set[str] = set()

    def began(self, stage: str) -> None:
        """Requests of `stage` were submitted (the first time starts its span)."""
        with self._lock:
            self._spans.setdefault(stage, [self._clock(), 0.0])

    def _stage(self, name: str) -> dict[str, Any]:
        return self.stages.setdefault(name, {"wall_s": 0.0, **{k: 0 for k in LLM_KEYS}})

    def record_call(self, stage: str, result: ChatResult, item_id: str | None = None, echo: bool = True) -> None:
        """Account one request's result: a cache hit costs nothing; a miss counts as a paid call. `echo`: say a
        new error message on stderr (not for one the run stops on: its CLI error line says it)."""
        if result.error is not None:
            self._record_error(stage, result.error, item_id, echo)
        with self._lock:
            st = self._stage(stage)
            if result.cached:
                keys = {"cache_hits": 1}
            else:
                keys = {
                    "calls": 1,
                    "prompt_tokens": result.usage.prompt_tokens,
                    "completion_tokens": result.usage.completion_tokens,
                    "retries": result.retries + result.reasks,
                    "errors": 1 if result.error else 0,
                    "usage_unknown": 0 if result.usage.reported or result.error else 1,
                }
            for k, v in keys.items():
                self.llm[k] += v
                st[k] += v
            span = self._spans.get(stage)
            if span is not None:
                span[1] = self._clock()

    def _record_error(self, stage: str, error: str, item_id: str | None, echo: bool = True) -> None:
        message = first_line(error)
        with self._lock:
            new = (stage, message) not in self.errors
            self.errors[(stage, message)] += 1
            if len(self.failed_calls) < MAX_FAILED_CALLS:
                self.failed_calls.append((stage, item_id or "", error))
        if new and echo and self.echo_errors:
            print(f"personaloom: {stage}: LLM call failed: {message}", file=sys.stderr, flush=True)

    def stage_errors(self, prefix: str) -> tuple[int, int, str | None]:
        """(paid calls, failed calls, first error message) over the stages named `prefix` or `prefix.*`."""
        with self._lock:
            rows = [v for k, v in self.stages.items() if k == prefix or k.startswith(prefix + ".")]
            calls = sum(int(r.get("calls", 0)) + int(r.get("cache_hits", 0)) for r in rows)
            failed = sum(int(r.get("errors", 0)) for r in rows)
            first = next((m for (st, m) in self.errors if st == prefix or st.startswith(prefix + ".")), None)
        return calls, failed, first

    def add(self, stage: str, key: str, value: float = 1) -> None:
        with self._lock:
            st = self._stage(stage)
            st[key] = st.get(key, 0) + value

    def failure(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.failures[reason] += n

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        start = self._clock()
        try:
            yield self._stage(name)
        finally:
            with self._lock:
                self._stage(name)["wall_s"] += round(self._clock() - start, 3)
                self._timed.add(name)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            stages = {k: dict(v) for k, v in self.stages.items()}
            for name, (first, last) in self._spans.items():
                if name in stages and name not in self._timed and last > first:
                    stages[name]["wall_s"] = round(last - first, 3)
            return {
                "llm": dict(self.llm),
                "stages": stages,
                "conversations": self.conversations,
                "failures": dict(self.failures),
                "llm_errors": [{"stage": st, "message": m, "count": n} for (st, m), n in self.errors.items()],
                **self.extra,
            }


def merge_tokens(into: dict[str, dict[str, int]], rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Add per-role token counts ({role: {"calls", "prompt_tokens", "completion_tokens"}}) into `into`."""
    for role, row in rows.items():
        acc = into.setdefault(role, {})
        for key, value in row.items():
            acc[key] = acc.get(key, 0) + int(value)
    return into
