"""Speaker-prefix parsing and the DESIGN.md §3 format defects, on hand-written text and the real SPC file."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from personaloom.dialogue import parse_dialogue, render_dialogue, split_prefix, turn_defects
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
    # Attributed by parsing, but not a clean prefix: counted as an unprefixed-line defect.
    assert parse_dialogue("* User 1: Hi! *\n* User 2: Hello! *").defects == ["unprefixed"]


def test_render_round_trip() -> None:
    turns = [Turn(speaker=1, text="Hi."), Turn(speaker=2, text="Hello [there]?")]
    parsed = parse_dialogue(render_dialogue(turns))
    assert parsed.turns == turns
    assert turn_defects(turns) == ["placeholders"]


def test_released_spc_valid_defect_counts(spc_path: Path) -> None:
    """DESIGN.md §3: 367 of 1,000 SPC valid conversations have a defect, 329 with placeholders."""
    with spc_path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kinds: Counter[str] = Counter()
    any_defect = 0
    for row in rows:
        defects = parse_dialogue(row["Best Generated Conversation"]).defects
        kinds.update(defects)
        any_defect += bool(defects)
    print(f"SPC valid: {any_defect} of {len(rows)} with defects; {dict(kinds)}")
    assert len(rows) == 1000
    assert any_defect == 367
    assert kinds["placeholders"] == 329
