"""Issue 19: does weighting each expert's vote by its measured skill (critic.weights=calibrated) pick the
original over degraded candidates at least as often as the paper's majority vote?

A panel of scripted quality judges of known skill — each knows the better conversation with probability
p and otherwise picks at random (depth 0.8, coherency 0.6, the other three 0: coins) — is first calibrated on the probes
(`calibrate.measure_all`), then asked, through the real round code (quality tasks, expert parsers, the
vote), to choose among candidate sets of one original seed conversation and two degraded copies (two
criteria drawn per set). Prints the share of sets where each vote picks the original; last line
`ratio=<calibrated / majority>` (>= 1 is the goal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random

from personaloom.backends.fake import FakeBackend
from personaloom.calibrate.command import calibrated, measure_all
from personaloom.calibrate.probes import degrade
from personaloom.chat import ChatRequest
from personaloom.config import build_config
from personaloom.executors.local import LLM
from personaloom.seeds import seed_conversations
from personaloom.stages.critic.registry import ExpertContext
from personaloom.stages.critic.vote import vote
from personaloom.stages.round import PairOutcome, critique, quality_tasks
from personaloom.stats import Stats

# Chance of knowing the answer; otherwise the judge picks at random (pairwise accuracy 0.5 + skill / 2).
SKILL = {"depth": 0.8, "coherency": 0.6, "consistency": 0.0, "diversity": 0.0, "likeability": 0.0}
CONVS = [c for c in seed_conversations() if c.user1_persona and c.user2_persona and len(c.turns) >= 6]
ORIGINALS = {json.dumps([t.text for t in c.turns]) for c in CONVS}


def _shown(request: ChatRequest) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in request.messages[-1].content.splitlines():
        if line.startswith("Conversation "):
            blocks.append([])
        elif line.startswith(("User 1: ", "User 2: ")) and blocks:
            blocks[-1].append(json.loads(line.split(": ", 1)[1]))
    return blocks


def panel(request: ChatRequest) -> str:
    """A judge that sees which shown conversation is an original and reports it with its skill."""
    expert = request.stage.split(".")[-1]
    rnd = random.Random(f"{request.params.seed}|{request.messages[-1].content}")
    originals = [i for i, b in enumerate(_shown(request)) if json.dumps(b) in ORIGINALS]
    labels = "ABCDEFG"[: len(_shown(request))]
    right = rnd.random() < SKILL.get(expert, 0.0)
    best = originals[0] if originals and right else rnd.randrange(len(labels))
    if "ranking" in json.dumps(request.json_schema):
        rest = [x for x in labels if x != labels[best]]
        rnd.shuffle(rest)
        return json.dumps({"ranking": [labels[best], *rest], "rationale": "x"})
    return json.dumps({"better": labels[best], "rationale": "x"})


async def main_async(sets: int, limit: int) -> tuple[float, float, dict[str, float]]:
    config = build_config(overrides=["profiles.nli=none", "critic.experts.faithfulness.enabled=false",
                                     "critic.experts.toxicity.enabled=false"])
    llm = LLM(FakeBackend(panel), None, Stats(), progress=False)
    results = await measure_all(config, lambda _r: llm, llm.stats, CONVS, None, limit)
    weighted, _ = calibrated(config, results)
    weights = {e: weighted.critic.experts[e].weight for e in SKILL}
    rnd = random.Random(0)
    wins = {"majority": 0, "calibrated": 0}
    for i in range(sets):
        original = CONVS[i % len(CONVS)]
        bad = [degrade(original, c, i).model_copy(update={"id": f"{original.id}~{j}"})
               for j, c in enumerate(rnd.sample(sorted(SKILL), 2))]
        candidates = [original, *bad]
        rnd.shuffle(candidates)
        ctx = ExpertContext(sampling=config.sampling_for("critic"), seed=i, max_tokens=160, pair_id=f"set{i}",
                            iteration=1)
        out = PairOutcome(pair_id=f"set{i}", iteration=1)
        verdicts = await critique(quality_tasks(candidates, config, ctx), lambda _r: llm, ctx, out)
        ids = [c.id for c in candidates]
        wins["majority"] += vote(ids, verdicts, dict.fromkeys(SKILL, 1.0)).winner == original.id
        wins["calibrated"] += vote(ids, verdicts, weights).winner == original.id
    return wins["majority"] / sets, wins["calibrated"] / sets, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--limit", type=int, default=16, help="calibration probe pairs per judge")
    args = parser.parse_args()
    majority, weighted, weights = asyncio.run(main_async(args.sets, args.limit))
    print(f"skills: {SKILL}")
    print(f"calibrated weights: { {k: round(v, 2) for k, v in weights.items()} }")
    print(f"{args.sets} candidate sets (1 original + 2 degraded): original picked by the majority vote "
          f"{majority:.3f}, by the calibrated vote {weighted:.3f}")
    print(f"ratio={weighted / majority:.3f}" if majority else "ratio=inf")


if __name__ == "__main__":
    main()
