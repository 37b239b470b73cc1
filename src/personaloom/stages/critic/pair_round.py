"""One pair, one iteration: generate C candidates, critique them, keep the winner.

In: a Pair, the example pool, `llm_for(role)` (role "generator" or an expert name -> the LLMClient
for it; an expert may be judged by another backend/model), the RunConfig and the iteration number.
Out: a `PairOutcome` with every candidate, every verdict (format ones included), the failures
(LLM errors, unparseable replies), the selected conversation (its `critic` field holds the vote
summary and token counts) and the token counts per role.

With a `SessionContext` (a later session of --sessions) the candidates are that session's: the format
expert also rejects copies of earlier sessions and the cross-session expert judges them against the
earlier sessions. With --language the rule-based language expert filters after the format expert;
candidates whose pair carries Big Five levels also go to the traits expert.

The critique starts as soon as the pair's candidates exist, and all independent expert calls of the
pair go out together (one `complete` per distinct client, gathered) so that a server stays busy.
With `critic.filter_first`, faithfulness and toxicity run first and only survivors are compared.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from personaloom import rng
from personaloom.backends.base import ChatRequest, ChatResult, LLMClient
from personaloom.config import CriticConfig, ExpertConfig, RunConfig
from personaloom.records import Conversation, Expert, Failure, Pair, Verdict
from personaloom.stages import generator
from personaloom.stages.critic import experts
from personaloom.stages.critic.experts import ABSTAIN, FILTER_EXPERTS, QUALITY_EXPERTS
from personaloom.stages.critic.format_expert import check_format
from personaloom.stages.critic.language_expert import check_language
from personaloom.stages.critic.vote import vote
from personaloom.stages.generator import SessionContext
from personaloom.stats import merge_tokens
from personaloom.text import is_english

LLMFor = Callable[[str], LLMClient]
# A job's parser: the result of its request -> verdicts.
Parser = Callable[[ChatResult], list[Verdict]]


@dataclass
class PairOutcome:
    pair_id: str
    iteration: int
    candidates: list[Conversation] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    selected: Conversation | None = None
    # {"generate" | "critic": {"calls", "prompt_tokens", "completion_tokens"}}: every result's usage,
    # cached ones included (the cost of this conversation, not of this invocation, so that a
    # conversation recomputed from the cache is byte-identical).
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Job:
    expert: Expert
    request: ChatRequest
    parse: Parser


def expert_config(critic: CriticConfig, name: str) -> ExpertConfig:
    """An expert missing from the config is enabled with weight 1."""
    return critic.experts.get(name) or ExpertConfig()


def enabled(critic: CriticConfig, names: tuple[Expert, ...]) -> list[Expert]:
    return [n for n in names if expert_config(critic, n).enabled]


def account(tokens: dict[str, dict[str, int]], role: str, results: list[ChatResult]) -> None:
    row = tokens.setdefault(role, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
    for r in results:
        row["calls"] += 1
        row["prompt_tokens"] += r.usage.prompt_tokens
        row["completion_tokens"] += r.usage.completion_tokens


def _one(parse: Callable[[Conversation, ChatResult], Verdict], conv: Conversation, result: ChatResult) -> list[Verdict]:
    return [parse(conv, result)]


def filter_experts(critic: CriticConfig, conv: Conversation | None, session: SessionContext | None) -> list[Expert]:
    """The enabled filter experts that apply: traits only to a conversation with Big Five levels,
    cross_session only to a later session."""
    applies = {
        "traits": conv is not None and bool(experts.judged_traits(conv)),
        "cross_session": session is not None,
    }
    return [e for e in enabled(critic, FILTER_EXPERTS) if applies.get(e, True)]


def filter_jobs(convs: list[Conversation], config: RunConfig, session: SessionContext | None = None) -> list[_Job]:
    c = config.critic
    sampling, seed, max_tokens = config.sampling_for("critic"), config.seed, c.max_tokens
    jobs: list[_Job] = []
    for conv in convs:
        for expert in filter_experts(c, conv, session):
            if expert == "faithfulness":
                req = experts.build_faithfulness_request(conv, sampling, seed, max_tokens)
                jobs.append(_Job(expert, req, partial(_one, experts.parse_faithfulness, conv)))
            elif expert == "toxicity":
                req = experts.build_toxicity_request(conv, sampling, seed, max_tokens)
                jobs.append(_Job(expert, req, partial(_one, experts.parse_toxicity, conv)))
            elif expert == "traits":
                req = experts.build_traits_request(conv, sampling, seed, max_tokens)
                parse = partial(experts.parse_traits, min_agreement=config.big_five.min_agreement)
                jobs.append(_Job(expert, req, partial(_one, parse, conv)))
            elif session is not None:  # cross_session (filter_experts keeps it for later sessions only)
                req = experts.build_cross_session_request(
                    conv, session.previous, session.gap, sampling, seed, max_tokens, session.memory
                )
                jobs.append(_Job(expert, req, partial(_one, experts.parse_cross_session, conv)))
    return jobs


def quality_jobs(convs: list[Conversation], config: RunConfig, pair_id: str, iteration: int) -> list[_Job]:
    """Pairwise: C(n,2) comparisons per expert (x2 with both_orders); listwise: one ranking per expert.

    Without both_orders each comparison's order (which one is "A") is drawn per expert and pair of
    candidates, so a judge's position bias spreads over candidates instead of favouring the first.
    """
    c = config.critic
    if len(convs) < 2:
        return []
    sampling = config.sampling_for("critic")
    jobs: list[_Job] = []
    for expert in enabled(c, QUALITY_EXPERTS):
        if c.mode == "listwise":
            shown = list(convs)
            rng.rng_for(config.seed, "critic-order", expert, iteration, pair_id).shuffle(shown)
            req = experts.build_listwise_request(expert, shown, sampling, c.max_tokens, config.seed)
            jobs.append(_Job(expert, req, partial(experts.parse_listwise, expert, shown)))
            continue
        for a, b in itertools.combinations(convs, 2):
            if c.both_orders:
                orders = [(a, b), (b, a)]
            elif rng.rng_for(config.seed, "critic-order", expert, a.id, b.id).random() < 0.5:
                orders = [(b, a)]
            else:
                orders = [(a, b)]
            for x, y in orders:
                req = experts.build_pairwise_request(expert, x, y, sampling, c.max_tokens, config.seed)
                jobs.append(_Job(expert, req, partial(experts.parse_pairwise, expert, x, y)))
    return jobs


async def run_jobs(
    jobs: list[_Job], llm_for: LLMFor, tokens: dict[str, dict[str, int]], iteration: int
) -> tuple[list[Verdict], list[Failure]]:
    """All jobs at once: one `complete` per distinct client, gathered; verdicts in job order."""
    groups: dict[int, tuple[LLMClient, list[int]]] = {}
    for i, job in enumerate(jobs):
        client = llm_for(job.expert)
        groups.setdefault(id(client), (client, []))[1].append(i)
    batches = list(groups.values())
    replies = await asyncio.gather(*(client.complete([jobs[i].request for i in idx]) for client, idx in batches))
    results: dict[int, ChatResult] = {}
    for (_, idx), batch in zip(batches, replies, strict=True):
        results.update(zip(idx, batch, strict=True))
    verdicts: list[Verdict] = []
    failures: list[Failure] = []
    for i, job in enumerate(jobs):
        result = results[i]
        account(tokens, "critic", [result])
        found = job.parse(result)
        verdicts.extend(found)
        if any(v.decision == ABSTAIN for v in found):
            failures.append(
                Failure(
                    stage=experts.stage_of(job.expert),
                    item_id=job.request.metadata.get("id", ""),
                    reason="llm_error" if result.error else "unparseable",
                    detail=found[0].rationale,
                    raw=result.text or None,
                    iteration=iteration,
                )
            )
    return verdicts, failures


async def generate_candidates(
    pair: Pair,
    examples: list[Conversation],
    llm: LLMClient,
    config: RunConfig,
    iteration: int,
    tokens: dict[str, dict[str, int]],
    session: SessionContext | None = None,
) -> tuple[list[Conversation], list[Failure]]:
    requests = generator.build_requests(
        pair, examples, config.generate, config.sampling_for("generator"), config.seed, iteration, config.language,
        session
    )
    results = await llm.complete(requests)
    account(tokens, "generate", results)
    candidates: list[Conversation] = []
    failures: list[Failure] = []
    for index, result in enumerate(results):
        if not result.ok:
            failures.append(
                Failure(
                    stage=generator.STAGE,
                    item_id=generator.candidate_id(pair, iteration, index, session),
                    reason="llm_error",
                    detail=result.error or "no text",
                    iteration=iteration,
                )
            )
            continue
        parsed = generator.parse_candidate(
            pair,
            result.text,
            iteration,
            index,
            truncated=result.finish_reason == "length",
            trim=config.generate.trim,
            language=config.language,
            session=session,
        )
        if isinstance(parsed, Conversation):
            candidates.append(parsed)
        else:
            failures.append(parsed)
    return candidates, failures


async def generate_and_critique(
    pair: Pair,
    examples: list[Conversation],
    llm_for: LLMFor,
    config: RunConfig,
    iteration: int,
    session: SessionContext | None = None,
) -> PairOutcome:
    out = PairOutcome(pair_id=pair.id, iteration=iteration)
    out.candidates, out.failures = await generate_candidates(
        pair, examples, llm_for("generator"), config, iteration, out.tokens, session
    )
    c = config.critic
    earlier = [t for s in session.previous for t in s.turns] if session is not None else []
    format_verdicts = [
        check_format(conv, config.generate.min_utterances, iteration, earlier) for conv in out.candidates
    ]
    out.verdicts.extend(format_verdicts)
    pool = [conv for conv, v in zip(out.candidates, format_verdicts, strict=True) if v.decision == "pass"]
    rule_experts = ["format"]
    if config.language is not None and not is_english(config.language) and expert_config(c, "language").enabled:
        rule_experts.append("language")
        checked = [check_language(conv, config.language, c.language_min_share) for conv in pool]
        out.verdicts.extend(checked)
        pool = [conv for conv, v in zip(pool, checked, strict=True) if v.decision == "pass"]
    if c.filter_first:
        verdicts, failures = await run_jobs(filter_jobs(pool, config, session), llm_for, out.tokens, iteration)
        out.verdicts.extend(verdicts)
        out.failures.extend(failures)
        early = vote([x.id for x in pool], verdicts, reject_on_abstain=c.reject_on_abstain)
        pool = [x for x in pool if x.id not in early.filtered]
        jobs = quality_jobs(pool, config, pair.id, iteration)
    else:
        jobs = filter_jobs(pool, config, session) + quality_jobs(pool, config, pair.id, iteration)
    verdicts, failures = await run_jobs(jobs, llm_for, out.tokens, iteration)
    out.verdicts.extend(verdicts)
    out.failures.extend(failures)
    weights: dict[str, float] = {e: expert_config(c, e).weight for e in enabled(c, QUALITY_EXPERTS)}
    result = vote([x.id for x in out.candidates], out.verdicts, weights, c.reject_on_abstain)
    out.tokens.setdefault("critic", {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
    out.summary = result.summary(c.mode, weights)
    first = out.candidates[0] if out.candidates else None
    out.summary["experts"] = [*rule_experts, *filter_experts(c, first, session), *enabled(c, QUALITY_EXPERTS)]
    out.summary["tokens"] = out.tokens
    if result.winner is not None:
        winner = next(x for x in out.candidates if x.id == result.winner)
        summary = dict(out.summary)
        if winner.critic and "trimmed" in winner.critic:
            summary["trimmed"] = winner.critic["trimmed"]
        for v in out.verdicts:
            if v.expert == "traits" and v.conversation_id == winner.id and v.reading is not None:
                summary["traits"] = v.reading
        out.selected = winner.model_copy(update={"critic": summary})
    return out


def round_stats(outcomes: list[PairOutcome]) -> dict[str, Any]:
    """Per-round statistics from the pairs' outcomes: candidates, kept, rejections by expert and
    reason (a candidate counts once per reason), failures by stage and reason, tokens in all and per
    kept conversation (prompt + completion, generator and critic together)."""
    rejections: dict[str, int] = {}
    failures: dict[str, int] = {}
    tokens: dict[str, dict[str, int]] = {}
    for out in outcomes:
        for reasons in out.summary.get("filtered", {}).values():
            for reason in reasons:
                rejections[reason] = rejections.get(reason, 0) + 1
        for f in out.failures:
            key = f"{f.stage}:{f.reason}"
            failures[key] = failures.get(key, 0) + 1
        merge_tokens(tokens, out.tokens)
    kept = sum(o.selected is not None for o in outcomes)
    total = sum(r.get("prompt_tokens", 0) + r.get("completion_tokens", 0) for r in tokens.values())
    return {
        "pairs": len(outcomes),
        "candidates": sum(len(o.candidates) for o in outcomes),
        "kept": kept,
        "rejections": dict(sorted(rejections.items())),
        "failures": dict(sorted(failures.items())),
        "tokens": tokens,
        "tokens_per_kept": round(total / kept, 1) if kept else None,
    }
