"""One iteration of the Generator–Critic loop over its share of the pairs (DESIGN.md §1 step 7).

In: the iteration number k, its pairs, the few-shot pool, a `Router`, the RunConfig, the run's Stats and
the iteration's folder. Out: the round's latest kept conversations (at most FEWSHOT_POOL_MAX: the rest
are on disk only), and in the folder candidates.jsonl, verdicts.jsonl,
failures.jsonl, selected.jsonl and summary.json ({pairs, candidates, kept, failures, rejected: {expert or
"format:<codes>": n}, tokens: {role: {calls, prompt_tokens, completion_tokens}}}).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pydantic import BaseModel

from personaloom.chat import Router
from personaloom.config import RunConfig
from personaloom.fsutil import atomic_open, atomic_write_text
from personaloom.io.jsonl import iter_jsonl
from personaloom.records import Conversation, Failure, Pair, TokenCount, Verdict
from personaloom.stages.round import PairOutcome
from personaloom.stages.sessions import converse
from personaloom.stats import Stats, merge_tokens
from personaloom.step import add_tokens
from personaloom.stop import RunStopped
from personaloom.text import is_english

# Winners kept in memory as the Generator's few-shot pool (DESIGN.md §1 step 7 feeds every winner back):
# the most recent ones. The Generator draws a few examples per pair, so a pool of 2,000 is as varied as
# one of 200,000, and memory stays flat however many conversations a run keeps.
FEWSHOT_POOL_MAX = 2000


@dataclass(frozen=True)
class KeptConversations:
    """A run's kept conversations, on disk: the first `count` records of the rounds' selected.jsonl files,
    in order. Re-iterable; each pass reads the files again and holds one conversation at a time."""

    paths: tuple[Path, ...] = ()
    count: int = 0

    def __iter__(self) -> Iterator[Conversation]:
        records = itertools.chain.from_iterable(iter_jsonl(p, Conversation) for p in self.paths)
        return itertools.islice(records, self.count)

    def __len__(self) -> int:
        return self.count


def read_selected(path: Path) -> tuple[list[Conversation], int]:
    """(the last FEWSHOT_POOL_MAX conversations of a round's selected.jsonl, how many it has)."""
    recent: deque[Conversation] = deque(maxlen=FEWSHOT_POOL_MAX)
    n = 0
    for conv in iter_jsonl(path, Conversation):
        recent.append(conv)
        n += 1
    return list(recent), n


def rejections(verdicts: list[Verdict]) -> dict[str, int]:
    """Rejections per expert; the format expert's per combination of reason codes."""
    rejected: dict[str, int] = {}
    for v in verdicts:
        if v.decision == "reject":
            key = f"{v.expert}:{','.join(v.reasons)[:40]}" if v.reasons else v.expert
            rejected[key] = rejected.get(key, 0) + 1
    return rejected


async def run_iteration(k: int, pairs: list[Pair], pool: list[Conversation], route: Router, config: RunConfig,
                        stats: Stats, folder: Path) -> tuple[list[Conversation], dict[str, Any]]:
    """(the round's last FEWSHOT_POOL_MAX kept conversations, the summary written to summary.json; its
    "kept" counts them all, in selected.jsonl). When the user stops the run, the pairs that were finished
    are written (summary "partial": true) and RunStopped is raised.

    Pairs stream through a window of `in_flight_window(config)` (enough to keep every endpoint's slots busy):
    each finished pair's candidates, verdicts and failures go to disk in pair order as soon as the pairs
    before it are written, so memory holds the window, not the round (only the kept conversations stay).
    """
    with _RoundWriter(folder, k) as writer:
        stopped = await _stream(pairs, lambda p: converse(p, pool, route, config, k), in_flight_window(config),
                                writer.add)
    summary = writer.finish(stats, partial=stopped is not None)
    if stopped is not None:
        raise stopped
    return list(writer.recent), summary


def in_flight_window(config: RunConfig) -> int:
    """Items (pairs, profiles) in flight at once: 4 per slot of the widest endpoint (an item has 1-3 calls
    out at a time)."""
    widest = max([config.backend.concurrency] + [e.backend.concurrency for e in config.critic.experts.values()
                                                 if e.backend is not None])
    return max(64, 4 * widest)


# Finished outcomes waiting for a slower pair before them, per pair in flight: bounds memory while a pair
# is stuck in retries, without idling the slots.
BUFFER_PER_SLOT = 8


async def _stream(pairs: list[Pair], work: Callable[[Pair], Awaitable[PairOutcome]], window: int,
                  emit: Callable[[Pair, PairOutcome], None]) -> RunStopped | None:
    """Run `work` over the pairs, at most `window` at once (and at most window x BUFFER_PER_SLOT finished ones
    waiting for an earlier one), and `emit` the outcomes in pair order. Every started pair ends before this
    returns or raises; then the first error (a pair's or `emit`'s) is raised, or the RunStopped returned (a
    stopped run starts no new pair)."""
    tasks: dict[asyncio.Task[PairOutcome], int] = {}
    done: dict[int, PairOutcome | BaseException] = {}
    written = started = 0
    stopped: RunStopped | None = None
    error: BaseException | None = None
    try:
        while True:
            while (stopped is None and error is None and started < len(pairs) and len(tasks) < window
                   and started - written < window * BUFFER_PER_SLOT):
                tasks[asyncio.ensure_future(work(pairs[started]))] = started
                started += 1
            if not tasks:
                break
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                i = tasks.pop(task)
                exc = asyncio.CancelledError() if task.cancelled() else task.exception()
                done[i] = exc if exc is not None else task.result()
                if isinstance(exc, RunStopped):
                    stopped = stopped or exc
                elif exc is not None:
                    error = error or exc
            while written in done:
                outcome = done.pop(written)
                if not isinstance(outcome, BaseException) and error is None:
                    try:
                        emit(pairs[written], outcome)
                    except Exception as exc:  # a write failed: the round fails, the pairs in flight end first
                        error = exc
                written += 1
    finally:
        if tasks:  # this coroutine was cancelled: so are the pairs it started, and they end before it does
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if error is not None:
        raise error
    return stopped


class _RoundWriter:
    """The round's files, written as pairs finish (each renamed into place only when the round ends well):
    candidates.jsonl, verdicts.jsonl, failures.jsonl, selected.jsonl; then summary.json by `finish`."""

    FILES = ("candidates", "verdicts", "failures", "selected")

    def __init__(self, folder: Path, k: int) -> None:
        self.folder, self.k = folder, k
        self._files = contextlib.ExitStack()
        self._out: dict[str, IO[str]] = {}
        self.recent: deque[Conversation] = deque(maxlen=FEWSHOT_POOL_MAX)
        self.pairs = self.candidates = self.kept = 0
        self.failures: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        # What the report shows per expert, so that it need not re-read every verdict (780k lines at 20k pairs).
        self.decisions: dict[str, Counter[str]] = {}
        self.rejected_conversations: Counter[str] = Counter()
        self.tokens: dict[str, TokenCount] = {}

    def __enter__(self) -> _RoundWriter:
        with contextlib.ExitStack() as opening:  # a file that cannot be opened removes those opened before it
            for name in self.FILES:
                self._out[name] = opening.enter_context(atomic_open(self.folder / f"{name}.jsonl"))
            self._files = opening.pop_all()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._files.__exit__(kind, exc, tb)

    def _write(self, name: str, records: Iterable[BaseModel]) -> None:
        out = self._out[name]
        for record in records:
            out.write(record.model_dump_json() + "\n")

    def add(self, pair: Pair, outcome: PairOutcome) -> None:
        failures = list(outcome.failures)
        if outcome.selected is None:
            failures.append(Failure(stage="critic", item_id=pair.id, reason="no_candidate_survived",
                                    iteration=self.k))
        else:
            self.recent.append(outcome.selected)
            self.kept += 1
            self._write("selected", [outcome.selected])
        self._write("candidates", outcome.candidates)
        self._write("verdicts", outcome.verdicts)
        self._write("failures", failures)
        self.pairs += 1
        self.candidates += len(outcome.candidates)
        self.failures.update(f.reason for f in failures)
        self.rejected.update(rejections(outcome.verdicts))
        for v in outcome.verdicts:
            self.decisions.setdefault(v.expert, Counter())[v.decision] += 1
        self.rejected_conversations.update(
            expert for expert, _ in {(v.expert, v.conversation_id) for v in outcome.verdicts if v.decision == "reject"}
        )
        add_tokens(self.tokens, outcome.tokens)

    def finish(self, stats: Stats, partial: bool) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "pairs": self.pairs, "candidates": self.candidates, "kept": self.kept,
            "failures": sum(self.failures.values()), "rejected": dict(self.rejected),
            "decisions": {e: dict(sorted(c.items())) for e, c in sorted(self.decisions.items())},
            "rejected_conversations": dict(sorted(self.rejected_conversations.items())),
            "tokens": {r: t.model_dump() for r, t in sorted(self.tokens.items())},
        }
        if partial:
            summary["partial"] = True
        atomic_write_text(self.folder / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        for reason, n in self.failures.items():
            stats.failure(reason, n)
        return summary


def split_rounds(items: list[Pair], k: int) -> list[list[Pair]]:
    """Contiguous, near-equal shares of the pairs for K rounds (earlier rounds get the remainder)."""
    k = max(1, min(k, len(items)))
    base, extra = divmod(len(items), k)
    out, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        out.append(items[start : start + size])
        start += size
    return out


def next_round(chosen: list[Pair], used: int, kept: int, target: int | None) -> list[Pair]:
    """--target-kept: the next round's pairs of `chosen` (`used` of them used so far, `kept` conversations
    kept), as many as the keep rate so far says the rest needs ([] when `target` is None or reached, or the
    pairs ran out). A round with nothing kept yet assumes 1 in 4."""
    if target is None or kept >= target or used >= len(chosen):
        return []
    rate = kept / used if kept else (0.25 if used else 1.0)
    return chosen[used : used + math.ceil((target - kept) / rate)]


def next_pool(seeds: Sequence[Conversation], winners: Sequence[Conversation],
              language: str | None) -> list[Conversation]:
    """The few-shot pool of the next round: the seed examples and the run's winners so far (the last
    FEWSHOT_POOL_MAX); with --language (other than English), once in-language winners exist they replace
    the seed examples."""
    if not is_english(language) and winners:
        return list(winners)
    return [*seeds, *winners]


def dataset_summary(rounds: list[dict[str, Any]], kept: int, mode: str) -> dict[str, Any]:
    """Per-round counts and the LLM cost of the kept conversations (cached calls included: this is
    what the dataset cost to make, not what this invocation paid)."""
    tokens: dict[str, dict[str, int]] = {}
    for r in rounds:
        merge_tokens(tokens, r.get("tokens") or {})
    total = sum(row.get("prompt_tokens", 0) + row.get("completion_tokens", 0) for row in tokens.values())
    return {
        "critic_mode": mode,
        "kept": kept,
        "iterations": rounds,
        "tokens": tokens,
        "tokens_per_kept_conversation": round(total / kept, 1) if kept else None,
    }
