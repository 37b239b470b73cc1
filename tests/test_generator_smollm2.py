"""Real SmolLM2-135M-Instruct outputs: recorded replies through the parser and the format expert,
and (slow) one live generate-and-critique round on the embedded model.

tests/data/smollm2_outputs/*.txt are raw generator replies recorded with the default GGUF (llama.cpp
via llama-cpp-python, top-k 40, SPC valid profiles, few-shot from clean SPC conversations); the file
name gives the prompt style, few-shot count, temperature and max_tokens. expected.json holds the
format expert's reasons for each, judged as written ("raw") and after trimming the tail at the first
defect ("trimmed", the default). At temperature 0.3/0.7 nearly every reply loops; at 1.0 most pass.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from personaloom.dialogue import parse_dialogue
from personaloom.records import EXPERTS, Conversation, Pair, Turn
from personaloom.stages.critic.format_expert import check_format
from personaloom.stages.generator import parse_candidate

DATA = Path(__file__).parent / "data" / "smollm2_outputs"
EXPECTED = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
PAIR = Pair(id="t", user1_persona=["I love to bake cookies."], user2_persona=["I am a boy."])


def _example(cid: str, u1: list[str], u2: list[str], lines: list[str]) -> Conversation:
    turns = [Turn(speaker=1 + i % 2, text=t) for i, t in enumerate(lines)]  # type: ignore[arg-type]
    return Conversation(id=cid, user1_persona=u1, user2_persona=u2, turns=turns)


POOL = [
    _example(
        "ex1",
        ["I have two dogs.", "I work as a nurse."],
        ["I live in Chicago.", "I love baking bread."],
        [
            "Hi! I just got back from a long night shift.",
            "Oh no, that sounds tiring. What do you do?",
            "I'm a nurse at the children's hospital.",
            "That must be rewarding. I relax by baking, I made sourdough this morning.",
            "Nice! My dogs would love to steal a slice.",
            "Ha, bring them over if you are ever in Chicago.",
        ],
    ),
    _example(
        "ex2",
        ["I play the guitar.", "I am a vegetarian."],
        ["I have three sisters.", "I am afraid of flying."],
        [
            "Hey, how was your weekend?",
            "Busy! All three of my sisters came to visit.",
            "That sounds fun. Did you cook for everyone?",
            "We ordered pizza. Do you cook?",
            "Mostly vegetable curries, I don't eat meat.",
            "Yum. Maybe you could play some music for us next time too.",
        ],
    ),
]


def reasons(text: str, trim: bool) -> list[str]:
    out = parse_candidate(PAIR, text, 1, 0, truncated=True, trim=trim)
    return ["empty"] if not isinstance(out, Conversation) else check_format(out, 6).reasons or []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_output(name: str) -> None:
    text = (DATA / name).read_text(encoding="utf-8")
    assert reasons(text, trim=False) == EXPECTED[name]["raw"]
    assert reasons(text, trim=True) == EXPECTED[name]["trimmed"]
    out = parse_candidate(PAIR, text, 1, 0, truncated=True, trim=True)
    if isinstance(out, Conversation) and not check_format(out, 6).reasons:
        # what the format expert passes carries none of DESIGN.md §3's defects
        assert parse_dialogue(out.raw or "").defects == []


def test_recorded_outputs_are_mostly_loops() -> None:
    """What SmolLM2-135M does: it rarely stops by itself and loops, so most replies fail as written."""
    raw_pass = sum(not v["raw"] for v in EXPECTED.values())
    trimmed_pass = sum(not v["trimmed"] for v in EXPECTED.values())
    assert raw_pass < len(EXPECTED) / 2
    assert trimmed_pass >= raw_pass


@pytest.mark.slow
def test_live_round_on_embedded_model() -> None:
    from conftest import BackendClient
    from personaloom.backends.llamacpp import EmbeddedBackend
    from personaloom.config import BackendConfig, GenerateConfig, RunConfig
    from personaloom.stages.round import generate_and_critique

    backend = EmbeddedBackend(BackendConfig(n_ctx=4096, n_threads=1))
    client = BackendClient(backend)
    # Few-shot examples are essential: zero-shot, SmolLM2-135M writes prose without speaker prefixes.
    cfg = RunConfig(generate=GenerateConfig(candidates=2, few_shot=2, max_tokens=200, temperature=1.0))
    out = asyncio.run(generate_and_critique(PAIR, POOL, lambda role: client, cfg, 1))
    assert len(out.candidates) + sum(f.stage == "generate" for f in out.failures) == 2
    assert {v.expert for v in out.verdicts} >= {"format"}
    if len([v for v in out.verdicts if v.expert == "format" and v.decision == "pass"]) == 2:
        assert {v.expert for v in out.verdicts} == set(EXPERTS)
    # grammar-constrained judges always answer in the schema
    assert not [f for f in out.failures if f.reason == "unparseable"]
    assert out.tokens["generate"].completion_tokens > 0
