"""One iteration of the Generator–Critic loop over its share of the pairs (DESIGN.md §1 step 7).

In: the iteration number k, its pairs, the few-shot pool, a `Router`, the RunConfig, the run's Stats and
the iteration's folder. Out: the kept conversations, and in the folder candidates.jsonl, verdicts.jsonl,
failures.jsonl, selected.jsonl and summary.json ({pairs, candidates, kept, failures, rejected: {expert or
"format:<codes>": n}, tokens: {role: {calls, prompt_tokens, completion_tokens}}}).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from personaloom.chat import Router
from personaloom.config import RunConfig
from personaloom.fsutil import atomic_write_text
from personaloom.io import write_jsonl
from personaloom.records import Conversation, Failure, Pair, TokenCount, Verdict
from personaloom.stages.round import PairOutcome
from personaloom.stages.sessions import converse
from personaloom.stats import Stats, merge_tokens
from personaloom.step import add_tokens
from personaloom.stop import RunStopped
from personaloom.text import is_english


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
    """(the kept conversations, the summary written to summary.json). When the user stops the run, the
    pairs that were finished are written (summary "partial": true) and RunStopped is raised, carrying
    their kept conversations in `kept`."""
    # Every pair's work ends (finished, or stopped after its calls in flight came back) before this returns.
    done = await asyncio.gather(*(converse(p, pool, route, config, k) for p in pairs), return_exceptions=True)
    errors = [e for e in done if isinstance(e, BaseException)]
    if any(not isinstance(e, RunStopped) for e in errors):
        raise next(e for e in errors if not isinstance(e, RunStopped))
    finished = [(p, o) for p, o in zip(pairs, done, strict=True) if not isinstance(o, BaseException)]
    selected, summary = _write(k, finished, stats, folder, partial=bool(errors))
    if errors:
        stopped = errors[0]
        assert isinstance(stopped, RunStopped)
        stopped.kept = selected
        raise stopped
    return selected, summary


def _write(k: int, finished: list[tuple[Pair, PairOutcome]], stats: Stats, folder: Path,
           partial: bool) -> tuple[list[Conversation], dict[str, Any]]:
    candidates: list[Conversation] = []
    verdicts: list[Verdict] = []
    failures: list[Failure] = []
    selected: list[Conversation] = []
    tokens: dict[str, TokenCount] = {}
    for pair, outcome in finished:
        candidates.extend(outcome.candidates)
        verdicts.extend(outcome.verdicts)
        failures.extend(outcome.failures)
        add_tokens(tokens, outcome.tokens)
        if outcome.selected is not None:
            selected.append(outcome.selected)
        else:
            failures.append(Failure(stage="critic", item_id=pair.id, reason="no_candidate_survived", iteration=k))
    write_jsonl(folder / "candidates.jsonl", candidates)
    write_jsonl(folder / "verdicts.jsonl", verdicts)
    write_jsonl(folder / "failures.jsonl", failures)
    write_jsonl(folder / "selected.jsonl", selected)
    summary: dict[str, Any] = {
        "pairs": len(finished), "candidates": len(candidates), "kept": len(selected), "failures": len(failures),
        "rejected": rejections(verdicts), "tokens": {r: t.model_dump() for r, t in sorted(tokens.items())},
    }
    if partial:
        summary["partial"] = True
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for f in failures:
        stats.failure(f.reason)
    return selected, summary


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


def next_pool(
    pool: list[Conversation], kept: list[Conversation], selected: list[Conversation], language: str | None
) -> list[Conversation]:
    """The few-shot pool of the next round: the winners join it; with --language (other than English),
    once in-language winners exist they replace the seed examples."""
    if not is_english(language) and kept:
        return list(kept)
    return [*pool, *selected]


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
