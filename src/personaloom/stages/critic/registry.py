"""The Critic's LLM experts by name: the built-in ones (stages/critic/experts.py) and any a user adds.

In: `CriticExpert` instances, via `register`. Out: lookups for the config (which names exist), the round
(which experts judge, in which order) and the vote (which experts filter and which compare).

An expert is either a *filter* (one call per candidate, verdict "pass"/"reject"/"abstain") or a
*quality* expert (compares candidates: pairwise "win"/"lose"/"tie", listwise "rank"). It builds its
request from plain data — the candidates shown and an `ExpertContext` — and parses a reply into
Verdicts (an "abstain" Verdict with the problem as rationale when the reply is unusable); the round
runs its calls through the executor (personaloom.executors.steps). Adding an expert is one file: see
CONTRIBUTING.md.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Literal

from personaloom.chat import ChatRequest, ChatResult, Sampling
from personaloom.records import ALL_EXPERTS, Conversation, SessionContext, Verdict

ExpertKind = Literal["filter", "quality"]
ABSTAIN = "abstain"


@dataclass(frozen=True)
class ExpertContext:
    """What an expert's request may depend on besides the candidates: the critic's sampling and token cap,
    the run seed, the pair and iteration, the quality mode, and for a later session of --sessions the
    earlier sessions (`session`). `min_agreement`: the traits expert's pass threshold."""

    sampling: Sampling
    seed: int
    max_tokens: int
    pair_id: str
    iteration: int
    mode: Literal["pairwise", "listwise"] = "pairwise"
    both_orders: bool = False
    min_agreement: float = 0.6
    session: SessionContext | None = None


class CriticExpert(abc.ABC):
    """One LLM expert of the Critic. `name` is its key in `critic.experts` and in verdicts; `kind`
    decides how the vote reads its verdicts (a filter's "reject" drops the candidate; a quality
    expert's wins and ranks score it)."""

    name: str
    kind: ClassVar[ExpertKind] = "filter"

    @property
    def stage(self) -> str:
        """Its calls' stage name in stats, progress and failures."""
        return f"critic.{self.name}"

    def applies(self, conv: Conversation, ctx: ExpertContext) -> bool:
        """Whether a filter expert judges `conv` (e.g. the traits expert only one with Big Five levels)."""
        return True

    @abc.abstractmethod
    def request(self, shown: tuple[Conversation, ...], ctx: ExpertContext) -> ChatRequest:
        """The request judging `shown` (one candidate for a filter; two or all, in the order shown, for a
        quality expert), seeded by the candidates' ids so the response cache can answer it."""

    @abc.abstractmethod
    def parse(self, shown: tuple[Conversation, ...], result: ChatResult, ctx: ExpertContext) -> list[Verdict]:
        """One Verdict per candidate in `shown`; "abstain" ones (problem as rationale) for an unusable reply."""


_REGISTRY: dict[str, CriticExpert] = {}


def register(expert: CriticExpert) -> CriticExpert:
    """Make `expert` known by its name (replacing one of the same name); returns it."""
    if not expert.name or expert.name == "format" or expert.name == "language":
        raise ValueError(f"{expert.name!r} is not a name an LLM expert can take")
    _REGISTRY[expert.name] = expert
    return expert


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> CriticExpert:
    return _REGISTRY[name]


def names(kind: ExpertKind | None = None) -> tuple[str, ...]:
    """Registered experts' names (of one kind), in registration order."""
    return tuple(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def known_names() -> tuple[str, ...]:
    """Every name `critic.experts` may use: the built-in experts and the registered ones."""
    return tuple(dict.fromkeys([*ALL_EXPERTS, *_REGISTRY]))


def is_quality(name: str) -> bool:
    expert = _REGISTRY.get(name)
    return expert is not None and expert.kind == "quality"


def abstain(conv: Conversation, expert: str, problem: str, opponent: str | None = None) -> Verdict:
    """The verdict of an expert that could not judge `conv`."""
    return Verdict(conversation_id=conv.id, expert=expert, decision=ABSTAIN, rationale=problem, opponent_id=opponent,
                   pair_id=conv.pair_id, iteration=conv.iteration)
