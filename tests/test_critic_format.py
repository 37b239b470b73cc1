"""The rule-based format expert: every rejection reason, and no false alarms on real conversations."""

from __future__ import annotations

from pathlib import Path

import pytest

from personaloom.records import Conversation, Pair, Turn
from personaloom.stages.critic.format_expert import check_format
from personaloom.stages.generator import parse_candidate

PAIR = Pair(id="p", user1_persona=["I have a cat."], user2_persona=["I run."])
GOOD = "\n".join(
    [
        "User 1: Hi! How was your weekend?",
        "User 2: Great, I ran a half marathon on Sunday.",
        "User 1: Wow, that is impressive. Was it your first one?",
        "User 2: My third, but my best time so far.",
        "User 1: My cat would never let me train that much, she wants attention all day.",
        "User 2: Ha, maybe she could be your coach.",
    ]
)


def format_reasons(conv: Conversation, min_utterances: int) -> list[str]:
    """The format expert's rejection codes (its verdict's typed `reasons`)."""
    return check_format(conv, min_utterances).reasons or []


def conv(text: str) -> Conversation:
    out = parse_candidate(PAIR, text, 0, 0)
    assert isinstance(out, Conversation)
    return out


def test_clean_conversation_passes() -> None:
    v = check_format(conv(GOOD), min_utterances=6)
    assert v.decision == "pass" and v.expert == "format" and v.conversation_id == "p-i0-c0"
    assert v.pair_id == "p" and v.iteration == 0


@pytest.mark.parametrize(
    "text,reason",
    [
        (GOOD.replace("Hi!", "Hi [User 2's name]!"), "placeholders"),
        (GOOD.replace("Was it", "Congrats, {country} is proud. Was it"), "placeholders"),
        (GOOD.replace("\nUser 2: My third", "\n[Later]\nUser 2: My third"), "stage_directions"),
        (GOOD.replace("\nUser 2: My third", "\n* * *\nUser 2: My third"), "unprefixed"),
        (GOOD.replace("Hi!", "Hi (user 2's name)!"), "placeholders"),
        (GOOD.replace("Hi!", "Hi, I live in (city)!"), "placeholders"),
        (GOOD.replace("User 2: Great", "User 1: Great"), "same_speaker"),
        ("\n".join(GOOD.splitlines()[:4]), "too_short"),
        (GOOD + "\nUser 1:\nUser 2: Bye.", "empty_utterance"),
        (
            GOOD + "\nUser 1: My cat would never let me train that much, she wants attention all day.",
            "repetition",
        ),
        (GOOD + "\nUser 1: Yes.\nUser 2: Yes.\nUser 1: Yes.\nUser 2: Yes.", "repetition"),
        (
            GOOD.replace("Ha, maybe", "I love to run. I love to run. I love to run. I love to run. Maybe"),
            "repetition",
        ),
    ],
)
def test_each_reason_is_recorded(text: str, reason: str) -> None:
    c = conv(text)
    assert reason in format_reasons(c, 6)
    v = check_format(c, 6)
    assert v.decision == "reject"
    assert reason in v.rationale.split(":", 1)[0].split(",")


def test_loop_detected_by_low_distinct_2() -> None:
    lines = [f"User {1 + i % 2}: I like to go to the park with my dog and my cat {i % 3}" for i in range(12)]
    assert "repetition" in format_reasons(conv("\n".join(lines)), 6)


def test_empty_conversation_rejected() -> None:
    c = Conversation(id="x", user1_persona=[], user2_persona=[], turns=[])
    v = check_format(c, 6)
    assert v.decision == "reject" and v.rationale.startswith("empty")


def test_short_repeats_allowed_once() -> None:
    text = GOOD + "\nUser 1: Yes.\nUser 2: Cool, see you.\nUser 1: Yes."
    assert format_reasons(conv(text), 6) == []


def test_min_utterances_configurable() -> None:
    c = conv("User 1: Hi!\nUser 2: Hello, nice to meet you.")
    assert format_reasons(c, 2) == []
    assert format_reasons(c, 3) == ["too_short"]


def test_no_false_repetition_on_real_persona_chat(persona_chat_path: Path) -> None:
    """Human conversations must not be flagged as loops (the format expert's false-alarm rate)."""
    flagged = total = 0
    turns: list[Turn] = []
    for line in persona_chat_path.read_text(encoding="utf-8").splitlines():
        _, _, body = line.partition(" ")
        if line.startswith("1 ") and turns:
            total += 1
            c = Conversation(id="h", user1_persona=[], user2_persona=[], turns=turns)
            flagged += "repetition" in format_reasons(c, 1)
            turns = []
        if "persona:" in body:
            continue
        for k, utt in enumerate(body.split("\t")[:2]):
            if utt.strip():
                turns.append(Turn(speaker=2 if k == 0 else 1, text=utt.strip()))
    assert total > 900
    assert flagged / total < 0.02, (flagged, total)


def test_spc_released_data_is_mostly_rejected_for_placeholders(spc_path: Path) -> None:
    import csv

    with spc_path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    reasons: dict[str, int] = {}
    for i, row in enumerate(rows):
        out = parse_candidate(PAIR, row["Best Generated Conversation"], 0, i)
        if not isinstance(out, Conversation):
            reasons["empty"] = reasons.get("empty", 0) + 1
            continue
        for r in format_reasons(out, 6):
            reasons[r] = reasons.get(r, 0) + 1
    assert reasons.get("placeholders", 0) >= 300
    # ~4% of the released SPC conversations loop ("It is." nine times); that is what it should catch.
    assert 10 <= reasons.get("repetition", 0) < 60, reasons


def test_trimmed_candidate_rejection_names_root_cause() -> None:
    text = "User 1: Hi! I love my cat.\nUser 2: Hello, I run every day.\nUser 2: I run every day.\nUser 1: ok"
    out = parse_candidate(PAIR, text, 0, 0, trim=True)
    assert isinstance(out, Conversation) and len(out.turns) == 2
    v = check_format(out, 6)
    assert v.decision == "reject"
    assert v.rationale.split(":", 1)[0] == "same_speaker,too_short"
    assert "cut before its first defect" in v.rationale


def test_trimmed_candidate_that_passes_says_so() -> None:
    out = parse_candidate(PAIR, GOOD + "\nUser 2: Ha, maybe she could be your coach.", 0, 0, trim=True)
    assert isinstance(out, Conversation)
    v = check_format(out, 6)
    assert v.decision == "pass" and "cut before its first defect (same_speaker)" in v.rationale


@pytest.mark.parametrize("utterance", ["Hey I'm (User 1).", "Hi, I am (your name)!", "Call me (name)."])
def test_parenthesised_slots_are_placeholders(utterance: str) -> None:
    assert "placeholders" in format_reasons(conv(GOOD.replace("Hi! How was your weekend?", utterance)), 6)


def test_parentheses_in_prose_are_fine() -> None:
    assert format_reasons(conv(GOOD.replace("Was it", "(It is hard.) Was it")), 6) == []
