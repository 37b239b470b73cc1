"""One pair, one iteration of the Generator–Critic loop (DESIGN.md §1 steps 5–6): generate C candidates,
critique them, keep the winner.

In: a Pair, the example pool, a `Router` (role "generator" or an expert's name -> its client), the
RunConfig, the iteration and, for a later session of --sessions, a `SessionContext`. Out: a
`PairOutcome` — every candidate, every verdict (format and language ones included), the failures (LLM
errors, unparseable replies), the selected conversation (its `critic` holds the `CriticSummary`) and the
token counts per role.

Rule-based experts first (format; with --language the language expert), then every enabled LLM expert
of the registry (stages/critic/registry.py): filters (faithfulness, toxicity; traits for a pair with Big
Five levels, cross_session for a later session) and quality experts (pairwise, or listwise). All of a
pair's expert calls go out as one Step, so each expert's endpoint stays busy; with
`critic.filter_first`, filters run first and only survivors are compared. An expert call that fails
or cannot be parsed is an "abstain" verdict and a Failure.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from personaloom import rng, stagenames
from personaloom.chat import ChatRequest, ChatResult, Router
from personaloom.config import CriticConfig, ExpertConfig, RunConfig
from personaloom.executors.steps import run_step
from personaloom.records import Conversation, CriticSummary, Failure, Pair, SessionContext, TokenCount, Verdict
from personaloom.stages import generator
from personaloom.stages.critic import experts as _builtin_experts
from personaloom.stages.critic import registry
from personaloom.stages.critic.format_expert import check_format
from personaloom.stages.critic.language_expert import check_language
from personaloom.stages.critic.registry import ExpertContext, abstain
from personaloom.stages.critic.vote import vote
from personaloom.step import Step, StepRun, add_tokens
from personaloom.text import is_english

# The built-in experts register themselves when their module is imported.
BUILTIN_EXPERTS = _builtin_experts.QUALITY_EXPERTS + _builtin_experts.FILTER_EXPERTS


@dataclass
class PairOutcome:
    pair_id: str
    iteration: int
    candidates: list[Conversation] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    selected: Conversation | None = None
    # role ("generate", "critic", "localize", "memory") -> calls and tokens of every result, cached ones
    # included (the cost of this conversation, not of this invocation, so that a conversation recomputed
    # from the cache is byte-identical).
    tokens: dict[str, TokenCount] = field(default_factory=dict)
    # The vote's summary (mode "none" until the critic has voted).
    summary: CriticSummary = field(default_factory=lambda: CriticSummary(mode="none"))

    def add(self, role: str, run: StepRun[Any, Any]) -> None:
        """A step's cost (under `role`) and failures."""
        if run.results:
            add_tokens(self.tokens, {role: run.usage})
        self.failures.extend(run.failures)

    def merge(self, part: PairOutcome) -> None:
        self.candidates.extend(part.candidates)
        self.verdicts.extend(part.verdicts)
        self.failures.extend(part.failures)
        add_tokens(self.tokens, part.tokens)


@dataclass(frozen=True)
class Judged:
    """One expert call: the expert and the candidate(s) it is shown, in the order shown."""

    expert: str
    shown: tuple[Conversation, ...]


class Generate(Step[int, Conversation]):
    """Candidate `index` of one pair: the few-shot prompt (built once) with the candidate's own seed."""

    stage = generator.STAGE

    def __init__(self, pair: Pair, examples: list[Conversation], config: RunConfig, iteration: int,
                 session: SessionContext | None) -> None:
        self.pair, self.config, self.k, self.session = pair, config, iteration, session
        self.iteration = iteration
        self._requests = generator.build_requests(
            pair, examples, config.generate, config.sampling_for("generator"), config.seed, iteration,
            config.language, session,
        )

    def item_id(self, item: int) -> str:
        return generator.candidate_id(self.pair, self.k, item, self.session)

    def request(self, item: int) -> ChatRequest:
        return self._requests[item]

    def parse(self, item: int, result: ChatResult) -> Conversation | Failure:
        return generator.parse_candidate(
            self.pair, result.text, self.k, item, truncated=result.finish_reason == "length",
            trim=self.config.generate.trim, max_utterances=self.config.generate.max_utterances,
            language=self.config.language, session=self.session,
        )


class Judge(Step[Judged, list[Verdict]]):
    """Every LLM expert's calls about one pair's candidates; each call goes to its expert's client."""

    stage = stagenames.CRITIC

    def __init__(self, ctx: ExpertContext) -> None:
        self.ctx, self.iteration = ctx, ctx.iteration

    def role_of(self, item: Judged) -> str:
        return item.expert

    def stage_of(self, item: Judged) -> str:
        return registry.get(item.expert).stage

    def item_id(self, item: Judged) -> str:
        return "|".join(c.id for c in item.shown)

    def request(self, item: Judged) -> ChatRequest:
        return registry.get(item.expert).request(item.shown, self.ctx)

    def parse(self, item: Judged, result: ChatResult) -> list[Verdict] | Failure:
        verdicts = registry.get(item.expert).parse(item.shown, result, self.ctx)
        unusable = next((v for v in verdicts if v.decision == registry.ABSTAIN), None)
        if unusable is not None:
            return self.failure(item, "unparseable", unusable.rationale, raw=result.text)
        return verdicts


def expert_config(critic: CriticConfig, name: str) -> ExpertConfig:
    """An expert missing from the config is enabled with weight 1."""
    return critic.experts.get(name) or ExpertConfig()


def enabled(critic: CriticConfig, kind: registry.ExpertKind) -> list[str]:
    return [n for n in registry.names(kind) if expert_config(critic, n).enabled]


def filter_tasks(convs: list[Conversation], config: RunConfig, ctx: ExpertContext) -> list[Judged]:
    """One call per candidate and enabled filter expert that applies to it."""
    names = enabled(config.critic, "filter")
    return [Judged(n, (c,)) for c in convs for n in names if registry.get(n).applies(c, ctx)]


def quality_tasks(convs: list[Conversation], config: RunConfig, ctx: ExpertContext) -> list[Judged]:
    """Pairwise: C(n,2) comparisons per expert (x2 with both_orders); listwise: one ranking per expert.

    Without both_orders each comparison's order (which one is "A") is drawn per expert and pair of
    candidates, so a judge's position bias spreads over candidates instead of favouring the first.
    """
    c = config.critic
    if len(convs) < 2:
        return []
    tasks: list[Judged] = []
    for expert in enabled(c, "quality"):
        if c.mode == "listwise":
            shown = list(convs)
            rng.rng_for(config.seed, "critic-order", expert, ctx.iteration, ctx.pair_id).shuffle(shown)
            tasks.append(Judged(expert, tuple(shown)))
            continue
        tasks.extend(pairwise_tasks(expert, convs, config.seed, c.both_orders))
    return tasks


def pairwise_tasks(expert: str, convs: list[Conversation] | tuple[Conversation, ...], seed: int,
                   both_orders: bool) -> list[Judged]:
    """One quality expert's C(n,2) comparisons (x2 with both_orders)."""
    tasks: list[Judged] = []
    for a, b in itertools.combinations(convs, 2):
        if both_orders:
            orders = [(a, b), (b, a)]
        elif rng.rng_for(seed, "critic-order", expert, a.id, b.id).random() < 0.5:
            orders = [(b, a)]
        else:
            orders = [(a, b)]
        tasks.extend(Judged(expert, order) for order in orders)
    return tasks


async def critique(tasks: list[Judged], route: Router, ctx: ExpertContext, out: PairOutcome) -> list[Verdict]:
    """Every task's verdicts (an abstention for each candidate of a failed or unusable call), added to
    `out` with the calls' cost and failures."""
    run = await run_step(Judge(ctx), tasks, route)
    out.add("critic", run)
    verdicts: list[Verdict] = []
    too_long: list[Judged] = []  # listwise rankings the context window cannot hold: compared pairwise instead
    for task, got in zip(tasks, run.outputs, strict=True):
        if isinstance(got, Failure) and got.reason == "context_window" and ctx.mode == "listwise" \
                and registry.is_quality(task.expert) and len(task.shown) > 2:
            too_long.append(task)
            out.failures.remove(got)
        elif isinstance(got, Failure):
            problem = f"llm error: {got.detail}" if got.reason == "llm_error" else got.detail
            a = task.shown[0]
            pairwise = registry.is_quality(task.expert) and ctx.mode == "pairwise"
            b = task.shown[1] if pairwise else None
            for conv in task.shown:
                opponent = None if b is None else (b.id if conv is a else a.id)
                verdicts.append(abstain(conv, task.expert, problem, opponent))
        else:
            verdicts.extend(got)
    out.verdicts.extend(verdicts)
    if too_long:
        compared = dataclasses.replace(ctx, mode="pairwise")
        tasks = [t for task in too_long for t in pairwise_tasks(task.expert, task.shown, ctx.seed, ctx.both_orders)]
        verdicts.extend(await critique(tasks, route, compared, out))
    return verdicts


def _passed(out: PairOutcome, verdicts: list[Verdict]) -> list[Conversation]:
    """The candidates a rule-based expert passed (its verdicts added to `out`), in order."""
    out.verdicts.extend(verdicts)
    passed = {v.conversation_id for v in verdicts if v.decision == "pass"}
    return [x for x in out.candidates if x.id in passed]


async def generate_and_critique(
    pair: Pair, examples: list[Conversation], route: Router, config: RunConfig, iteration: int,
    session: SessionContext | None = None,
) -> PairOutcome:
    out = PairOutcome(pair_id=pair.id, iteration=iteration)
    gen = await run_step(Generate(pair, examples, config, iteration, session), range(config.generate.candidates),
                         route)
    out.add("generate", gen)
    out.candidates = [conv for _, conv in gen.kept()]
    c = config.critic
    ctx = ExpertContext(
        sampling=config.sampling_for("critic"), seed=config.seed, max_tokens=c.max_tokens, pair_id=pair.id,
        iteration=iteration, mode=c.mode, both_orders=c.both_orders, min_agreement=config.big_five.min_agreement,
        session=session,
    )
    earlier = [t for s in session.previous for t in s.turns] if session is not None else []
    shape = config.generate
    pool = _passed(out, [check_format(x, shape.min_utterances, iteration, earlier, shape.max_utterances)
                         for x in out.candidates])
    rule_experts = ["format"]
    if config.language is not None and not is_english(config.language) and expert_config(c, "language").enabled:
        rule_experts.append("language")
        pool = _passed(out, [check_language(x, config.language, c.language_min_share) for x in pool])
    if c.filter_first:
        early = vote([x.id for x in pool], await critique(filter_tasks(pool, config, ctx), route, ctx, out),
                     reject_on_abstain=c.reject_on_abstain)
        pool = [x for x in pool if x.id not in early.filtered]
        await critique(quality_tasks(pool, config, ctx), route, ctx, out)
    else:
        await critique(filter_tasks(pool, config, ctx) + quality_tasks(pool, config, ctx), route, ctx, out)
    quality = enabled(c, "quality")
    weights = {e: expert_config(c, e).weight for e in quality}
    result = vote([x.id for x in out.candidates], out.verdicts, weights, c.reject_on_abstain)
    first = out.candidates[0] if out.candidates else None
    judged = [n for n in enabled(c, "filter") if first is not None and registry.get(n).applies(first, ctx)]
    add_tokens(out.tokens, {"critic": TokenCount()})
    out.summary = result.summary(c.mode, weights, [*rule_experts, *judged, *quality])
    out.summary.tokens = out.tokens
    if result.winner is not None:
        winner = next(x for x in out.candidates if x.id == result.winner)
        reading = next((v.reading for v in out.verdicts
                        if v.expert == "traits" and v.conversation_id == winner.id and v.reading is not None), None)
        summary = out.summary.model_copy(update={"trimmed": winner.trimmed, "traits": reading})
        out.selected = winner.model_copy(update={"critic": summary})
    return out
