"""A Critic expert used as an evaluation judge (toxicity rate, Big Five reading, cross-session consistency).

In: a registered expert's name, conversations, the judge's client, the seed (and, per conversation, an
optional `ExpertContext`, e.g. a later session's earlier sessions). Out: one Verdict per conversation, in
order; a failed call or an unusable reply is an "abstain" verdict (counted apart by the metrics).

The prompts and parsers are the critic's own, so the evaluation measures exactly what the critic filters
on; the judge decodes greedily (a test, not a sample) and its calls are staged "evaluate.<expert>".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from personaloom.chat import GREEDY, ChatRequest, ChatResult, LLMClient
from personaloom.executors.steps import run_step
from personaloom.records import Conversation, Failure, Verdict
from personaloom.stages.critic import experts as _builtin_experts
from personaloom.stages.critic import registry
from personaloom.stages.critic.registry import ExpertContext, abstain
from personaloom.step import Step

# The built-in experts register themselves when their module is imported.
assert _builtin_experts.FILTER_EXPERTS


def judge_context(seed: int) -> ExpertContext:
    """Greedy decoding, the critic's default token cap."""
    return ExpertContext(sampling=GREEDY, seed=seed, max_tokens=160, pair_id="", iteration=0)


class ExpertJudge(Step[Conversation, Verdict]):
    """One registered filter expert's verdict per conversation."""

    role = "judge"

    def __init__(self, name: str, seed: int, contexts: Mapping[str, ExpertContext] | None = None) -> None:
        self.expert, self.default, self.contexts = registry.get(name), judge_context(seed), contexts or {}

    def stage_of(self, item: Conversation) -> str:
        return f"evaluate.{self.expert.name}"

    def item_id(self, item: Conversation) -> str:
        return item.id

    def _ctx(self, item: Conversation) -> ExpertContext:
        return self.contexts.get(item.id, self.default)

    def request(self, item: Conversation) -> ChatRequest:
        req = self.expert.request((item,), self._ctx(item))
        return req.model_copy(update={"metadata": {**req.metadata, "stage": self.stage_of(item)}})

    def parse(self, item: Conversation, result: ChatResult) -> Verdict | Failure:
        return self.expert.parse((item,), result, self._ctx(item))[0]


async def judge_each(name: str, convs: Sequence[Conversation], judge: LLMClient, seed: int,
                     contexts: Mapping[str, ExpertContext] | None = None) -> list[Verdict]:
    """Expert `name`'s verdict on every conversation (abstain where the call failed)."""
    run = await run_step(ExpertJudge(name, seed, contexts), convs, judge)
    return [abstain(c, name, f"llm error: {o.detail}") if isinstance(o, Failure) else o
            for c, o in zip(convs, run.outputs, strict=True)]
