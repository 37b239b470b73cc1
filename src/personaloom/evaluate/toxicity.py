"""Toxicity rate: the critic's toxicity expert run over a dataset.

In: conversations and an LLMClient. Out: {"rate", "toxic", "n", "abstain"}: the share of judged
conversations the expert labels toxic (decision "reject"), over the conversations with a usable
verdict. The prompt and parser are the critic's own (stages/critic/experts.py), so the evaluation
measures exactly what the critic filters on. The judge decodes greedily, as in the other tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from personaloom.chat import LLMClient
from personaloom.evaluate.judging import judge_each
from personaloom.records import Conversation, Verdict
from personaloom.stages.critic.registry import ABSTAIN


def toxicity_rate(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    judged = [v for v in verdicts if v.decision != ABSTAIN]
    toxic = sum(1 for v in judged if v.decision == "reject")
    return {
        "rate": round(toxic / len(judged), 6) if judged else None,
        "toxic": toxic,
        "n": len(judged),
        "abstain": len(verdicts) - len(judged),
    }


async def run_toxicity(
    convs: Sequence[Conversation], judge: LLMClient, seed: int = 0
) -> tuple[dict[str, Any], list[Verdict]]:
    verdicts = await judge_each("toxicity", convs, judge, seed)
    return toxicity_rate(verdicts), verdicts
