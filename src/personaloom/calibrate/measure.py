"""Ask each judge about its labelled probes and score it.

In: probes (probes.py), the run's `Router` (an expert with its own backend is measured on it), the
RunConfig, the run's Stats. Out: per judge a `JudgeScore` and its summary dict — accuracy with a 95%
Wilson interval, chance (what always giving the most common label scores), position bias (share of probe
pairs where the judge picked the same position in both orders: its verdict follows the order, not the
content), length bias (share of its picks that are the longer conversation), Cohen's kappa against the
labels, calls and tokens, and the vote weight: its skill above chance, (accuracy - chance) / (1 - chance),
or 0 when its interval reaches chance. An unparseable reply or a tie counts as a wrong answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from personaloom.calibrate.probes import Check, Comparison, Contradiction
from personaloom.chat import ChatRequest, ChatResult, Router
from personaloom.config import RunConfig
from personaloom.evaluate.turing import AskTuring, TuringPair, wilson
from personaloom.executors.steps import run_step
from personaloom.records import Attribute, Conversation, Failure
from personaloom.stages.critic import registry
from personaloom.stages.critic.registry import ExpertContext
from personaloom.stages.profiles import make_judge
from personaloom.stats import Stats
from personaloom.step import Step

ProbeT = TypeVar("ProbeT")
OutT = TypeVar("OutT")


@dataclass
class JudgeScore:
    """Answers of one judge: `truth[i]` the label of probe i, `answers[i]` the judge's (None: no usable
    answer); for comparisons `keys` pairs the two orders and `longer` is the index of the longer one."""

    judge: str
    truth: list[Any] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    longer: list[int | None] = field(default_factory=list)
    calls: int = 0
    tokens: int = 0
    mode: str | None = None

    def summary(self) -> dict[str, Any]:
        n = len(self.truth)
        correct = sum(1 for t, a in zip(self.truth, self.answers, strict=True) if a is not None and a == t)
        accuracy = correct / n if n else 0.0
        low, high = wilson(correct, n)
        chance = max(Counter(self.truth).values()) / n if n else 0.5
        weight = (accuracy - chance) / (1 - chance) if n and low > chance and chance < 1 else 0.0
        out: dict[str, Any] = {
            "accuracy": round(accuracy, 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
            "chance": round(chance, 4), "position_bias": self._position_bias(), "length_bias": self._length_bias(),
            "kappa": _kappa(self.truth, self.answers), "n": n, "abstained": sum(a is None for a in self.answers),
            "weight": round(max(0.0, weight), 4), "calls": self.calls, "tokens": self.tokens,
        }
        if self.mode is not None:
            out["mode"] = self.mode
        return out

    def _position_bias(self) -> float | None:
        by_key: dict[str, list[Any]] = {}
        for key, answer in zip(self.keys, self.answers, strict=False):
            by_key.setdefault(key, []).append(answer)
        both = [a for a in by_key.values() if len(a) == 2 and None not in a]
        return round(sum(a[0] == a[1] for a in both) / len(both), 4) if both else None

    def _length_bias(self) -> float | None:
        picks = [a == lo for a, lo in zip(self.answers, self.longer, strict=False) if a is not None and lo is not None]
        return round(sum(picks) / len(picks), 4) if picks else None


def _kappa(truth: Sequence[Any], answers: Sequence[Any]) -> float | None:
    """Cohen's kappa between the labels and the answers (no answer is a category of its own)."""
    n = len(truth)
    if not n:
        return None
    given = ["-" if a is None else a for a in answers]
    observed = sum(t == a for t, a in zip(truth, given, strict=True)) / n
    ct, ca = Counter(truth), Counter(given)
    expected = sum(ct[c] * ca.get(c, 0) for c in ct) / (n * n)
    return round((observed - expected) / (1 - expected), 4) if expected < 1 else None


def _stage(request: ChatRequest, stage: str) -> ChatRequest:
    return request.model_copy(update={"metadata": {**request.metadata, "stage": stage}})


class _AskExpert(Step[ProbeT, OutT]):
    """A registered expert asked about probes, on its own client, staged "calibrate.<expert>"."""

    def __init__(self, expert: str, ctx: ExpertContext) -> None:
        self.expert, self.ctx = registry.get(expert), ctx

    def role_of(self, item: ProbeT) -> str:
        return self.expert.name

    def stage_of(self, item: ProbeT) -> str:
        return f"calibrate.{self.expert.name}"


class Compare(_AskExpert[Comparison, int]):
    """A quality expert's pick (index into `shown`) between a conversation and its degraded copy."""

    def item_id(self, item: Comparison) -> str:
        return "|".join(c.id for c in item.shown)

    def request(self, item: Comparison) -> ChatRequest:
        return _stage(self.expert.request(item.shown, self.ctx), self.stage_of(item))

    def parse(self, item: Comparison, result: ChatResult) -> int | Failure:
        verdicts = self.expert.parse(item.shown, result, self.ctx)
        first = next(v for v in verdicts if v.conversation_id == item.shown[0].id)
        second = next(v for v in verdicts if v.conversation_id == item.shown[1].id)
        if first.decision == "rank" and first.rank is not None and second.rank is not None:
            return 0 if first.rank < second.rank else 1 if second.rank < first.rank else self.failure(item, "tie")
        if first.decision in ("win", "lose"):
            return 0 if first.decision == "win" else 1
        return self.failure(item, first.decision, first.rationale, raw=result.text)


class Judge(_AskExpert[Check, str]):
    """A filter expert's verdict ("pass" or "reject") on one conversation."""

    def item_id(self, item: Check) -> str:
        return item.conversation.id

    def _ctx(self, item: Check) -> ExpertContext:
        return self.ctx if item.session is None else replace(self.ctx, session=item.session)

    def request(self, item: Check) -> ChatRequest:
        return _stage(self.expert.request((item.conversation,), self._ctx(item)), self.stage_of(item))

    def parse(self, item: Check, result: ChatResult) -> str | Failure:
        (verdict,) = self.expert.parse((item.conversation,), result, self._ctx(item))
        if verdict.decision in ("pass", "reject"):
            return verdict.decision
        return self.failure(item, verdict.decision, verdict.rationale, raw=result.text)


def _used(stats: Stats) -> tuple[int, int]:
    llm = stats.llm
    return llm["calls"] + llm["cache_hits"], llm["prompt_tokens"] + llm["completion_tokens"]


def _length(conv: Conversation) -> int:
    return sum(len(t.text.split()) for t in conv.turns)


async def comparisons(expert: str, probes: list[Comparison], route: Router, ctx: ExpertContext,
                      stats: Stats) -> JudgeScore:
    before = _used(stats)
    run = await run_step(Compare(expert, ctx), probes, route)
    score = JudgeScore(expert, [p.better for p in probes], [run.get(i) for i in range(len(probes))],
                       [p.key for p in probes], mode=ctx.mode)
    score.longer = [None if _length(p.shown[0]) == _length(p.shown[1]) else
                    int(_length(p.shown[1]) > _length(p.shown[0])) for p in probes]
    score.calls, score.tokens = (a - b for a, b in zip(_used(stats), before, strict=True))
    return score


async def checks(expert: str, probes: list[Check], route: Router, ctx: ExpertContext, stats: Stats) -> JudgeScore:
    before = _used(stats)
    run = await run_step(Judge(expert, ctx), probes, route)
    score = JudgeScore(expert, [p.expected for p in probes], [run.get(i) for i in range(len(probes))])
    score.calls, score.tokens = (a - b for a, b in zip(_used(stats), before, strict=True))
    return score


async def turing(pairs: list[TuringPair], route: Router, seed: int, stats: Stats) -> JudgeScore:
    """The evaluation's Turing judge: which of (machine, human) is machine-written, in both orders."""
    before = _used(stats)
    items = [(p, order) for p in pairs for order in (0, 1)]
    run = await run_step(AskTuring(seed), items, route)
    answers = [None if (a := run.get(i)) is None else "AB".index(a) for i in range(len(items))]
    score = JudgeScore("turing", [order for _, order in items], answers, [p.generated.id for p, _ in items])
    score.longer = [None if _length(p.generated) == _length(p.reference) else
                    (order if _length(p.generated) > _length(p.reference) else 1 - order) for p, order in items]
    score.calls, score.tokens = (a - b for a, b in zip(_used(stats), before, strict=True))
    return score


async def nli(probes: list[Contradiction], route: Router, config: RunConfig, stats: Stats) -> JudgeScore:
    """The profiles' consistency judge (profiles.nli: llm or llm-pairwise): does it find the contradictions?"""
    before = _used(stats)
    judge = make_judge(config.profiles, route("expansion"), config.seed, config.sampling)
    answers: list[Any] = []
    for p in probes:
        a, b = (Attribute(id=f"{p.key}:{side}", text=text) for side, text in (("a", p.premise), ("b", p.hypothesis)))
        (found,) = await judge.contradicts(a, [b])
        answers.append(found)
    score = JudgeScore("nli", [p.contradicts for p in probes], answers)
    score.calls, score.tokens = (a - b for a, b in zip(_used(stats), before, strict=True))
    return score


def expert_context(config: RunConfig, mode: str) -> ExpertContext:
    c = config.critic
    base = ExpertContext(sampling=config.sampling_for("critic"), seed=config.seed, max_tokens=c.max_tokens,
                         pair_id="calibrate", iteration=0)
    return replace(base, mode="listwise" if mode == "listwise" else "pairwise")
