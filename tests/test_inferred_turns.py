"""A conversation with no speaker label anywhere, written as paragraphs separated by blank lines (a row of the
released SPC test split is one): read as alternating turns from User 1, flagged `unprefixed` with the label form
`inferred`, instead of an empty conversation whose content `convert` would lose."""

from __future__ import annotations

import csv
from pathlib import Path

import personaloom as pl
from personaloom.dialogue import alternating_paragraphs
from personaloom.io.spc_csv import read_spc_csv

PARAGRAPHS = [f"Paragraph {i}: I {verb} every weekend." for i, verb in
              enumerate(["hike", "bake", "paint", "swim", "read", "cycle", "garden", "sing", "fish", "knit"])]


def write(path: Path, cells: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        for cell in cells:
            writer.writerow(["I hike.", "I bake.", cell])
    return path


def test_a_row_without_labels_reads_as_alternating_turns(tmp_path: Path) -> None:
    unlabelled = "\n\n".join(PARAGRAPHS) + "\n"
    labelled = "User 1: Hi!\nUser 2: Hello!"
    convs = read_spc_csv(write(tmp_path / "spc.csv", [unlabelled, labelled, "Just one paragraph, no label."]))
    first = convs[0]
    assert [t.text for t in first.turns] == PARAGRAPHS and [t.speaker for t in first.turns] == [1, 2] * 5
    assert "unprefixed" in first.defects and first.label_forms == ["inferred"] and first.raw == unlabelled
    assert [t.text for t in convs[1].turns] == ["Hi!", "Hello!"] and convs[1].label_forms is None
    assert convs[2].turns == [] and "empty" in convs[2].defects  # one paragraph: nothing to alternate
    # Nothing is lost on convert: the turns are written with their labels.
    pl.convert(tmp_path / "spc.csv", tmp_path / "out.jsonl")
    assert [t.text for t in pl.read(tmp_path / "out.jsonl")[0].turns] == PARAGRAPHS
    assert alternating_paragraphs("User 1: Hi\n\nUser 2: Hello") is None


def test_no_released_spc_conversation_ends_empty_unless_its_text_is(spc_path: Path) -> None:
    convs = read_spc_csv(spc_path)
    empty = [c for c in convs if not c.turns and (c.raw or "").strip()]
    assert len(convs) > 900 and empty == []
