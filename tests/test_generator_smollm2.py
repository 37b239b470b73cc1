"""Real SmolLM2-135M-Instruct outputs: recorded replies through the parser and the format expert,
and (slow) one live generate-and-critique round on the embedded model.

tests/data/smollm2_outputs/*.txt are raw generator replies recorded with the default GGUF
(llama.cpp, temperature 0.7, top-k 40, 3-shot, max_tokens 240/400). expected.json holds the format
expert's reasons for each, judged as written ("raw") and after trimming the tail at the first defect
("trimmed", the default).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from personaloom.dialogue import parse_dialogue
from personaloom.records import EXPERTS, Conversation, Pair
from personaloom.stages.critic.format_expert import format_reasons
from personaloom.stages.generator import parse_candidate

DATA = Path(__file__).parent / "data" / "smollm2_outputs"
EXPECTED = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
PAIR = Pair(id="t", user1_persona=["I love to bake cookies."], user2_persona=["I am a boy."])


def reasons(text: str, trim: bool) -> list[str]:
    out = parse_candidate(PAIR, text, 1, 0, truncated=True, trim=trim)
    return ["empty"] if not isinstance(out, Conversation) else format_reasons(out, 6)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_output(name: str) -> None:
    text = (DATA / name).read_text(encoding="utf-8")
    assert reasons(text, trim=False) == EXPECTED[name]["raw"]
    assert reasons(text, trim=True) == EXPECTED[name]["trimmed"]
    out = parse_candidate(PAIR, text, 1, 0, truncated=True, trim=True)
    if isinstance(out, Conversation) and not format_reasons(out, 6):
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
    from personaloom.stages.critic import generate_and_critique

    backend = EmbeddedBackend(BackendConfig(n_ctx=4096))
    client = BackendClient(backend)
    cfg = RunConfig(generate=GenerateConfig(candidates=2, few_shot=0, max_tokens=200))
    out = asyncio.run(generate_and_critique(PAIR, [], lambda role: client, cfg, 1))
    assert len(out.candidates) + sum(f.stage == "generate" for f in out.failures) == 2
    assert {v.expert for v in out.verdicts} >= {"format"}
    if len([v for v in out.verdicts if v.expert == "format" and v.decision == "pass"]) == 2:
        assert {v.expert for v in out.verdicts} == set(EXPERTS)
    # grammar-constrained judges always answer in the schema
    assert not [f for f in out.failures if f.reason == "unparseable"]
    assert out.tokens["generate"]["completion_tokens"] > 0
