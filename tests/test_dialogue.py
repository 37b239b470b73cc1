"""Speaker-prefix parsing and the DESIGN.md §3 format defects, on hand-written text and the real SPC file."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from personaloom.dialogue import (
    describe_non_dialogue,
    find_slots,
    is_stage_direction,
    parse_dialogue,
    render_dialogue,
    split_label,
    split_prefix,
    turn_defects,
)
from personaloom.records import Turn


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("User 1: Hi there", (1, "Hi there")),
        ("**User 2:** Hello", (2, "Hello")),
        ("**User 2**: Hello", (2, "Hello")),
        ("Person 1 - Yes", (1, "Yes")),
        ("user1:   spaced   out ", (1, "spaced out")),
        ("Speaker 2: ok", (2, "ok")),
        ("- User 2: bullet", (2, "bullet")),
        ("* * *", None),
        ("[Later]", None),
        ("* * User 1: * * Hi, I'm Sam.", (1, "Hi, I'm Sam.")),
        ("1. User 2: numbered", (2, "numbered")),
        ("User 1 (Maya): named", (1, "named")),
        ("Person B: lettered", (2, "lettered")),
        ("User 2： 全角", (2, "全角")),
        ("User 3: nobody", None),
        ("The user 1: said", None),
    ],
)
def test_split_prefix(line: str, expected: tuple[int, str] | None) -> None:
    assert split_prefix(line) == expected


def test_defects_by_kind() -> None:
    clean = parse_dialogue("User 1: Hi!\nUser 2: Hello, how are you?\nUser 1: Fine.")
    assert clean.defects == [] and len(clean.turns) == 3
    assert parse_dialogue("").defects == ["empty"]
    assert parse_dialogue("User 1: a\n\nUser 2: b").defects == ["blank_lines"]
    assert parse_dialogue("User 1: a\nUser 2: b\n").defects == ["blank_lines"]  # trailing newline, as in SPC
    broken = parse_dialogue("User 1: a\n* * *\nUser 2: b")
    assert broken.defects == ["unprefixed"] and broken.unprefixed_lines == [(2, "* * *")]
    assert parse_dialogue("User 1: I'm [User 1's name]\nUser 2: hi [name]").defects == ["placeholders"]
    assert parse_dialogue("User 1: a\nUser 1: b\nUser 2: c").defects == ["same_speaker"]
    # Attributed by parsing, but not the canonical label: recorded with its form.
    loose = parse_dialogue("* User 1: Hi! *\n* User 2: Hello! *")
    assert loose.defects == ["nonstandard_labels"] and loose.label_forms == ["emphasis"]
    assert [t.text for t in loose.turns] == ["Hi!", "Hello!"]
    assert parse_dialogue("User 1: a\n[Later that week]\nUser 2: b").defects == ["stage_directions"]
    assert parse_dialogue("User 1: I'm from (city).\nUser 2: hi (user 1's name)").defects == ["placeholders"]


@pytest.mark.parametrize(
    ("line", "form"),
    [
        ("User 1: canonical", None),
        ("User 1：canonical", None),
        ("**User 1:** x", "emphasis"),
        ("* * User 1: * * x", "emphasis"),
        ("__User 2__: x", "emphasis"),
        ("1. User 1: x", "numbered"),
        ("2) User 2: x", "numbered"),
        ("- User 1: x", "bulleted"),
        ("• User 2: x", "bulleted"),
        ("User 1 (Maya): x", "named"),
        ("Person A: x", "letter"),
        ("Speaker B - x", "letter"),
        ("Person 1: x", "variant"),
        ("user1: x", "variant"),
        ("U2: x", "variant"),
        ("User 2 - x", "variant"),
    ],
)
def test_every_label_form_parses_and_is_recorded(line: str, form: str | None) -> None:
    found = split_label(line)
    assert found is not None and found[1] == ("canonical" if form is None else "x") and found[2] == form
    parsed = parse_dialogue(f"{line}\nUser 2: reply" if found[0] == 1 else f"User 1: opener\n{line}")
    assert len(parsed.turns) == 2 and parsed.label_forms == ([form] if form else [])
    assert ("nonstandard_labels" in parsed.defects) == (form is not None)


def test_two_names_as_labels_map_to_users_in_order() -> None:
    parsed = parse_dialogue("Maya: Hi, I'm Maya.\nTom: Hey Maya!\nMaya: Nice dogs.\nTom: Thanks.\nNote: end.")
    assert [(t.speaker, t.text) for t in parsed.turns] == [
        (1, "Hi, I'm Maya."), (2, "Hey Maya!"), (1, "Nice dogs."), (2, "Thanks.")]
    assert parsed.label_forms == ["names"] and parsed.unprefixed_lines == [(5, "Note: end.")]
    # Three names is not a two-person dialogue: nothing is guessed, and the failure says what was there.
    three = "Maya: hi\nTom: hey\nAnn: yo"
    assert parse_dialogue(three).turns == []
    assert "3 names (Ann, Maya, Tom)" in describe_non_dialogue(three)
    assert "JSON" in describe_non_dialogue('{"a": 1}') and "prose" in describe_non_dialogue("Just text.")


@pytest.mark.parametrize(
    ("text", "slots"),
    [
        ("[name]", ["[name]"]), ("[User 1's name]", ["[User 1's name]"]), ("(user 1's name)", ["(user 1's name)"]),
        ("I live in (city).", ["(city)"]), ("{friend's name}", ["{friend's name}"]), ("<NAME>", ["<NAME>"]),
        ("[имя]", ["[имя]"]), ("(your name)", ["(your name)"]), ("(User 2)", ["(User 2)"]),
        ("I love (hiking) too", []), ("Ha (laughs) yes", []), ("[Later that week]", []), ("(The next day)", []),
    ],
)
def test_one_slot_detector(text: str, slots: list[str]) -> None:
    assert find_slots(text) == slots


@pytest.mark.parametrize("line", ["[Later that week]", "(The next day)", "(laughs)", "[A few minutes later]"])
def test_stage_directions(line: str) -> None:
    assert is_stage_direction(line) and not find_slots(line)


def test_render_round_trip() -> None:
    turns = [Turn(speaker=1, text="Hi."), Turn(speaker=2, text="Hello [there]?")]
    parsed = parse_dialogue(render_dialogue(turns))
    assert parsed.turns == turns
    assert turn_defects(turns) == ["placeholders"]


def test_released_spc_valid_defect_counts(spc_path: Path) -> None:
    """DESIGN.md §3's definitions on the released SPC valid split (README's numbers): every conversation
    keeps its turns, and the defects are counted by kind."""
    with spc_path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kinds: Counter[str] = Counter()
    forms: Counter[str] = Counter()
    any_defect = round_slots = 0
    for row in rows:
        parsed = parse_dialogue(row["Best Generated Conversation"])
        assert parsed.turns, row["Best Generated Conversation"][:200]
        kinds.update(parsed.defects)
        forms.update(parsed.label_forms)
        any_defect += bool(parsed.defects)
        round_slots += any(s.startswith("(") for t in parsed.turns for s in find_slots(t.text))
    print(f"SPC valid: {any_defect} of {len(rows)} with defects; {dict(kinds)}; label forms {dict(forms)}; "
          f"round-bracket slots in {round_slots}")
    assert len(rows) == 1000
    assert any_defect == 442
    assert kinds["placeholders"] == 405 and round_slots == 79
    assert kinds["stage_directions"] == 14 and kinds["unprefixed"] == 15
    assert forms == {"emphasis": 3}
