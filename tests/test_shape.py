"""A conversation's shape: generate.min_utterances / generate.max_utterances (told to the Generator; a longer reply
cut at a turn boundary with generate.trim; the format expert's typed "too_long" otherwise) and
generate.instructions (added to the Generator's instruction), end to end against a loopback server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import personaloom as pl
from personaloom.records import Pair
from personaloom.stages.critic.format_expert import check_format
from personaloom.stages.generator import parse_candidate
from pipeline_server import cli_env, demo_server
from test_credentials import ONE_PAIR

LINES = ["Hi! Do you grow anything at home?", "Tomatoes and basil on my balcony. You?",
         "Roses, mostly. My grandmother taught me.", "That is lovely. Do you drink tea from your herbs?",
         "Mint tea every morning, fresh from the pot.", "I should try that with my basil.",
         "Basil tea is odd, but lemon balm is great.", "Noted! What else do you do on weekends?"]
EIGHT = "\n".join(f"User {1 + i % 2}: {line}" for i, line in enumerate(LINES))
PAIR = Pair(id="p1", user1_persona=["I garden."], user2_persona=["I drink tea."])


def test_a_long_reply_is_cut_at_a_turn_boundary_or_rejected_as_too_long() -> None:
    cut = parse_candidate(PAIR, EIGHT, 1, 0, trim=True, max_utterances=5)
    assert isinstance(cut, pl.Conversation)
    assert [t.text for t in cut.turns] == LINES[:5]
    assert cut.trimmed is not None and (cut.trimmed.kept, cut.trimmed.of, cut.trimmed.at) == (5, 8, "too_long")
    verdict = check_format(cut, 4, max_utterances=5)
    assert verdict.decision == "pass" and "cut at max_utterances after 5 of 8" in verdict.rationale
    whole = parse_candidate(PAIR, EIGHT, 1, 0, trim=False, max_utterances=5)
    assert isinstance(whole, pl.Conversation) and len(whole.turns) == 8
    rejected = check_format(whole, 4, max_utterances=5)
    assert rejected.decision == "reject" and rejected.reasons == ["too_long"]
    assert "8 utterances > 5" in rejected.rationale
    assert check_format(whole, 4).decision == "pass"  # no bound, no rejection


def test_bounds_that_cannot_both_hold_are_a_config_error() -> None:
    with pytest.raises(pl.ConfigError, match="setting generate: max_utterances 3 < min_utterances 6"):
        pl.configure(generate={"max_utterances": 3})


def test_shape_and_instructions_reach_the_generator_and_bound_the_kept_conversations(tmp_path: Path) -> None:
    instruction = "User 2 is a support agent for a garden shop and answers User 1's questions."
    with demo_server(keep_bodies=True) as server:
        result = subprocess.run(
            [sys.executable, "-m", "personaloom.cli", "run", "--backend", "openai", "--base-url", server.url,
             "--model", "m", "--out", "out", *ONE_PAIR, "--set", "generate.min_utterances=4",
             "--set", "generate.max_utterances=5", "--set", f"generate.instructions={instruction}"],
            capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300, check=False)
        bodies = list(server.bodies)
    assert result.returncode == 0, result.stderr
    systems = [b["messages"][0]["content"] for b in bodies if b["messages"][0]["role"] == "system"]
    generator = [s for s in systems if s.startswith("You write realistic chat conversations")]
    assert generator and all("at least 4 and at most 5 lines" in s and s.endswith(instruction) for s in generator)
    kept = [json.loads(line) for line in (tmp_path / "out" / "conversations.jsonl").read_text().splitlines()]
    assert kept and all(4 <= len(c["turns"]) <= 5 for c in kept)
    verdicts = [json.loads(line) for p in (tmp_path / "out" / "iterations").glob("*/verdicts.jsonl")
                for line in p.read_text().splitlines()]
    formats = [v for v in verdicts if v["expert"] == "format"]
    assert formats and all(v["decision"] == "pass" or "too_long" not in (v["reasons"] or []) for v in formats)
    # The demo model writes more than 5 utterances: what was kept was cut at the bound, and says so.
    assert any("cut at max_utterances" in v["rationale"] for v in formats)
