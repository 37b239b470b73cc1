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
from personaloom.stages.sessions import converse
from personaloom.stats import Stats
from personaloom.step import add_tokens


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
    """(the kept conversations, the summary written to summary.json)."""
    outcomes = await asyncio.gather(*(converse(p, pool, route, config, k) for p in pairs))
    candidates: list[Conversation] = []
    verdicts: list[Verdict] = []
    failures: list[Failure] = []
    selected: list[Conversation] = []
    tokens: dict[str, TokenCount] = {}
    for pair, outcome in zip(pairs, outcomes, strict=True):
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
    summary = {"pairs": len(pairs), "candidates": len(candidates), "kept": len(selected), "failures": len(failures),
               "rejected": rejections(verdicts), "tokens": {r: t.model_dump() for r, t in sorted(tokens.items())}}
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for f in failures:
        stats.failure(f.reason)
    return selected, summary
