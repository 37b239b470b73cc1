"""CONTRIBUTING.md's recipe, followed once: a new Critic expert in one file (here, this test), registered,
enabled from the config, judging through the executor like the built-in ones, and filtering in the vote."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from personaloom import rng
from personaloom.backends.fake import FakeBackend
from personaloom.chat import ChatRequest, ChatResult, Message
from personaloom.config import build_config
from personaloom.errors import ConfigError
from personaloom.executors.local import LLM
from personaloom.records import Conversation, Verdict
from personaloom.stages.critic import registry
from personaloom.stages.critic.registry import CriticExpert, ExpertContext, abstain
from personaloom.stages.round import generate_and_critique
from personaloom.stats import Stats
from test_critic_pair_round import GOOD, PAIR, responder


# ---- the recipe's one file -------------------------------------------------------------------
class Brevity(CriticExpert):
    """Rejects a conversation the judge finds long-winded."""

    name = "brevity"

    def request(self, shown: tuple[Conversation, ...], ctx: ExpertContext) -> ChatRequest:
        conv = shown[0]
        text = "\n".join(f"User {t.speaker}: {t.text}" for t in conv.turns)
        question = f'Is this conversation long-winded? Answer {{"brief": true|false}}.\n{text}'
        return ChatRequest(
            messages=[Message(role="user", content=question)],
            params=ctx.sampling.params(ctx.max_tokens, rng.derive_seed(ctx.seed, self.stage, conv.id)),
            json_schema={"type": "object", "properties": {"brief": {"type": "boolean"}}, "required": ["brief"]},
            metadata={"stage": self.stage, "id": shown[0].id},
        )

    def parse(self, shown: tuple[Conversation, ...], result: ChatResult, ctx: ExpertContext) -> list[Verdict]:
        conv = shown[0]
        try:
            brief = json.loads(result.text)["brief"]
        except (ValueError, KeyError, TypeError):
            return [abstain(conv, self.name, f"no 'brief' in {result.text[:40]!r}")]
        return [Verdict(conversation_id=conv.id, expert=self.name, decision="pass" if brief else "reject",
                        pair_id=conv.pair_id, iteration=conv.iteration)]
# ---- end of the recipe's file ------------------------------------------------------------------


@pytest.fixture
def brevity() -> Iterator[CriticExpert]:
    expert = registry.register(Brevity())
    yield expert
    registry.unregister("brevity")


def test_a_new_expert_is_one_file(brevity: CriticExpert) -> None:
    base = responder(GOOD)

    def reply(req: ChatRequest) -> str:
        if req.stage == "critic.brevity":  # the judge finds candidate 1 long-winded, and cannot parse one reply
            rid = req.metadata["id"]
            return "hmm" if rid.endswith("c2") else json.dumps({"brief": not rid.endswith("c1")})
        return base(req)

    fake = FakeBackend(reply)
    stats = Stats()
    config = build_config(overrides=["critic.experts.brevity.weight=1"])
    out = asyncio.run(generate_and_critique(PAIR, [], LLM(fake, None, stats, progress=False), config, 1))
    judged = {v.conversation_id: v.decision for v in out.verdicts if v.expert == "brevity"}
    assert judged == {"p3-i1-c0": "pass", "p3-i1-c1": "reject", "p3-i1-c2": "abstain"}
    assert out.summary.filtered["p3-i1-c1"] == ["brevity"] and "brevity" in out.summary.experts
    assert out.summary.abstained["p3-i1-c2"] == ["brevity"]
    assert [(f.stage, f.reason) for f in out.failures] == [("critic.brevity", "unparseable")]
    assert out.selected is not None and out.selected.id in {"p3-i1-c0", "p3-i1-c2"}
    assert stats.to_dict()["stages"]["critic.brevity"]["calls"] == 3
    # Disabled from the config like any built-in expert.
    off = build_config(overrides=["critic.experts.brevity.enabled=false"])
    fake_off = FakeBackend(reply)
    asyncio.run(generate_and_critique(PAIR, [], LLM(fake_off, progress=False), off, 1))
    assert not any(r.stage == "critic.brevity" for r in fake_off.requests)


def test_an_unregistered_expert_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="brevity"):
        build_config(overrides=["critic.experts.brevity.weight=1"])
