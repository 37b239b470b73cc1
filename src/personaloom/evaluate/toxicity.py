"""Toxicity rate: the critic's toxicity expert run over a dataset.

In: conversations and an LLMClient. Out: {"rate", "toxic", "n", "abstain"}: the share of judged
conversations the expert labels toxic (decision "reject"), over the conversations with a usable
verdict. The prompt and parser are the critic's own (stages/critic/experts.py), so the evaluation
measures exactly what the critic filters on. The judge decodes greedily, as in the other tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from personaloom.backends.base import LLMClient
from personaloom.config import GREEDY
from personaloom.records import Conversation, Verdict
from personaloom.stages.critic.experts import ABSTAIN, build_toxicity_request, parse_toxicity


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
    requests = [build_toxicity_request(c, GREEDY, seed) for c in convs]
    for r in requests:
        r.metadata["stage"] = "evaluate.toxicity"
    results = await judge.complete(requests) if requests else []
    verdicts = [parse_toxicity(c, r) for c, r in zip(convs, results, strict=True)]
    return toxicity_rate(verdicts), verdicts
