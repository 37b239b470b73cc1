"""`personaloom run --dry-run`: expected LLM calls, tokens and cost per stage, before anything is paid.

In: a resolved RunConfig (and, when the run directory already has one, its stats.json, whose measured
tokens per call replace the built-in guesses; a stage whose server reported no usage was not
measured: its tokens are unknown, not 0, and the built-in guesses stand, marked as such).
Out: a table on stderr and the same numbers as a dict.
Call counts follow the stages' structure; counts that depend on the model (how many bootstrap answers
are rejected, how many profile candidates are judged) use stated rates.
"""

from __future__ import annotations

import json
import math
from math import comb
from pathlib import Path
from typing import Any

from rich.table import Table

from personaloom import stagenames as names
from personaloom.config import RunConfig
from personaloom.console import make_console
from personaloom.stages.critic.experts import QUALITY_EXPERTS
from personaloom.text import is_english

# (prompt, completion) tokens per call when nothing was measured yet: SmolLM2-sized prompts.
DEFAULT_TOKENS: dict[str, tuple[int, int]] = {
    names.EXPAND_QUESTIONS: (160, 24),
    names.EXPAND_ANSWERS: (140, 20),
    names.PROFILES_NEGATION: (90, 16),
    names.PROFILES_NLI: (130, 8),
    names.GENERATE: (1400, 300),
    names.CRITIC: (900, 60),
    names.LOCALIZE: (90, 20),
    names.SESSIONS_MEMORY: (400, 60),
    names.SCENARIOS: (120, 80),
}
# Share of bootstrap answers that survive the filters and the novelty check (measured on SmolLM2).
BOOTSTRAP_ACCEPT = 0.4
# Kept conversations per pair when nothing was measured yet (SmolLM2-135M, 3 candidates: about half).
ASSUMED_KEEP_RATE = 0.5
# Candidate attributes judged per profile slot before one is accepted.
NLI_TRIES_PER_SLOT = 1.5


def keep_rate(out: Path) -> tuple[float, str]:
    """Kept conversations per pair: measured from the run directory's stats.json (its iterations), else
    ASSUMED_KEEP_RATE. (rate, "measured" | "assumed")."""
    try:
        rounds = json.loads((out / "stats.json").read_text(encoding="utf-8"))["dataset"]["iterations"]
        pairs = sum(int(r["pairs"]) for r in rounds)
        kept = sum(int(r["kept"]) for r in rounds)
    except (OSError, ValueError, KeyError, TypeError):
        return ASSUMED_KEEP_RATE, "assumed"
    return (kept / pairs, "measured") if pairs and kept else (ASSUMED_KEEP_RATE, "assumed")


def pairs_needed(config: RunConfig) -> int:
    """The pairs generated for: generate.pairs, or for --target-kept N the expected N / keep rate (capped by
    pair.max_pairs)."""
    ge = config.generate
    if ge.target_kept is None:
        return min(ge.pairs, config.pair.max_pairs if not config.pair.keep_seed_pairs else ge.pairs)
    rate, _ = keep_rate(Path(config.out))
    return min(config.pair.max_pairs, math.ceil(ge.target_kept / rate))


def expected_calls(config: RunConfig, seed_attributes: int) -> dict[str, float]:
    ex, pr, ge, cr = config.expand, config.profiles, config.generate, config.critic
    clusters = max(1, seed_attributes // 3)
    if ex.max_clusters_for_questions is not None:
        clusters = min(clusters, ex.max_clusters_for_questions)
    calls: dict[str, float] = {
        names.EXPAND_QUESTIONS: clusters * ex.questions_per_cluster + ex.bootstrap_steps,
        names.EXPAND_ANSWERS: ex.new_attributes / BOOTSTRAP_ACCEPT,
    }
    if pr.nli == "llm":  # one call per candidate after the first (fewer: unrelated candidates are not judged)
        calls[names.PROFILES_NLI] = pr.profiles * NLI_TRIES_PER_SLOT * (pr.size - 1)
    if pr.nli == "llm-pairwise":
        calls[names.PROFILES_NEGATION] = pr.profiles * pr.size
        calls[names.PROFILES_NLI] = pr.profiles * NLI_TRIES_PER_SLOT * comb(pr.size, 2)
    pairs = pairs_needed(config)
    c = ge.candidates
    # Every session is a full Generator-Critic round (assuming each is kept, the most it can cost).
    sessions = config.sessions.count
    calls[names.GENERATE] = pairs * c * sessions
    if not is_english(config.language):
        calls[names.LOCALIZE] = pairs * 2 * pr.size  # at most: the cache pays an attribute shared by pairs once
    if sessions > 1:
        calls[names.SESSIONS_MEMORY] = pairs * 2 * (sessions - 1)
    if ge.scenarios == "auto":  # one call per topic, then one per subtopic
        topics = len(ge.topics) if isinstance(ge.topics, list) else 1
        calls[names.SCENARIOS] = topics * (1 + ge.subtopics)

    def on(name: str) -> bool:
        expert = cr.experts.get(name)
        return expert is None or expert.enabled

    quality = sum(1 for q in QUALITY_EXPERTS if on(q))
    filters = sum(1 for f in ("faithfulness", "toxicity") if on(f)) + (config.big_five.active and on("traits")) + \
        (ge.scenarios is not None and on("scenario"))
    if cr.mode == "listwise":
        per_session = quality + filters * c
    else:
        per_session = quality * comb(c, 2) * (2 if cr.both_orders else 1) + filters * c
    cross = c * (sessions - 1) if on("cross_session") else 0
    calls[names.CRITIC] = pairs * (per_session * sessions + cross)
    return calls


def _measured(out: Path) -> tuple[dict[str, tuple[float, float]], set[str]]:
    """Per-call (prompt, completion) averages from a previous invocation's stats.json, by stage prefix,
    and the stage prefixes whose calls reported no usage (unknown, so not measured)."""
    try:
        stages = json.loads((out / "stats.json").read_text(encoding="utf-8")).get("stages", {})
    except (OSError, ValueError, AttributeError):
        return {}, set()
    sums: dict[str, list[float]] = {}
    unknown: set[str] = set()
    for name, row in stages.items():
        if not isinstance(row, dict):
            continue
        key = next((k for k in DEFAULT_TOKENS if name == k or name.startswith(k + ".")), None)
        n = float(row.get("calls", 0)) + float(row.get("cache_hits", 0))
        if key is None or n <= 0 or not row.get("calls"):
            continue
        if row.get("usage_unknown"):
            unknown.add(key)
            continue
        acc = sums.setdefault(key, [0.0, 0.0, 0.0])
        acc[0] += float(row.get("prompt_tokens", 0))
        acc[1] += float(row.get("completion_tokens", 0))
        acc[2] += float(row.get("calls", 0))
    measured = {k: (v[0] / v[2], v[1] / v[2]) for k, v in sums.items() if v[2] and k not in unknown}
    return measured, unknown


def estimate(config: RunConfig) -> dict[str, Any]:
    """Expected calls and tokens per stage and in total, and the cost at `config.prices` (when set)."""
    from personaloom.seed_data import load_seed_set

    seeds = load_seed_set(config.seed_data, config.seed_format, config.expand.personas, config.seed)
    seed_attrs = len(seeds.attributes) + len(seeds.personas) * (config.expand.statements_per_persona + 1)
    measured, unknown = _measured(Path(config.out))
    rows: dict[str, dict[str, Any]] = {}
    for stage, calls in expected_calls(config, seed_attrs).items():
        p, c = measured.get(stage, DEFAULT_TOKENS[stage])
        source = "measured" if stage in measured else "default"
        if stage in unknown:
            source = "default (server reported no usage)"
        rows[stage] = {
            "calls": round(calls),
            "prompt_tokens": round(calls * p),
            "completion_tokens": round(calls * c),
            "tokens_per_call_source": source,
        }
    total = {k: sum(r[k] for r in rows.values()) for k in ("calls", "prompt_tokens", "completion_tokens")}
    result: dict[str, Any] = {"stages": rows, "total": total}
    rate, source = keep_rate(Path(config.out))
    if config.generate.target_kept is not None:
        result["target_kept"] = {"kept": config.generate.target_kept, "keep_rate": round(rate, 4),
                                 "keep_rate_from": source, "pairs": pairs_needed(config),
                                 "pairs_needed": math.ceil(config.generate.target_kept / rate),
                                 "max_pairs": config.pair.max_pairs}
    cost = config.prices.cost(total["prompt_tokens"], total["completion_tokens"])
    if cost is not None:
        result["cost"] = round(cost, 4)
    expected = pairs_needed(config) * rate  # with --target-kept, pair.max_pairs may cap it below the target
    kept = min(config.generate.target_kept, expected) if config.generate.target_kept else expected
    if kept > 0:
        per = {k: round(v / kept, 2) for k, v in total.items()}
        if cost is not None:
            per["cost"] = round(cost / kept, 4)
        result["per_kept"] = {**per, "kept": round(kept), "keep_rate": round(rate, 4), "keep_rate_from": source}
    return result


def print_estimate(config: RunConfig) -> dict[str, Any]:
    result = estimate(config)
    table = Table(title="Dry run: expected LLM work (nothing was paid)")
    for col in ("stage", "calls", "prompt tokens", "completion tokens", "tokens/call from"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, row in result["stages"].items():
        table.add_row(stage, f"{row['calls']:,}", f"{row['prompt_tokens']:,}", f"{row['completion_tokens']:,}",
                      row["tokens_per_call_source"])
    t = result["total"]
    table.add_row("total", f"{t['calls']:,}", f"{t['prompt_tokens']:,}", f"{t['completion_tokens']:,}", "")
    console = make_console(stderr=False)
    console.print(table)
    if "cost" in result:
        console.print(f"expected cost: ${result['cost']:,.2f}")
    if "per_kept" in result:
        pk = result["per_kept"]
        console.print(f"per kept conversation: about {pk['calls']:,.1f} calls, {pk['prompt_tokens']:,.0f} prompt + "
                      f"{pk['completion_tokens']:,.0f} completion tokens (about {pk['kept']:,} kept at a keep rate of "
                      f"{pk['keep_rate']:.2f}, {pk['keep_rate_from']})")
    if "target_kept" in result:
        tk = result["target_kept"]
        line = (f"--target-kept {tk['kept']}: about {tk['pairs_needed']:,} pairs at a keep rate of "
                f"{tk['keep_rate']:.2f} ({tk['keep_rate_from']})")
        if tk["pairs_needed"] > tk["max_pairs"]:
            line += (f", but pair.max_pairs caps them at {tk['max_pairs']:,}: about "
                     f"{round(tk['max_pairs'] * tk['keep_rate']):,} kept; raise --max-pairs to {tk['pairs_needed']:,}")
        console.print(line)
    if any(r["tokens_per_call_source"].startswith("default (") for r in result["stages"].values()):
        console.print("The server reported no token usage for some stages: their tokens are the built-in guesses.")
    console.print("Cached calls are free: a resumed run pays only for what is not in cache.sqlite yet.")
    return result
