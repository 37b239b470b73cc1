"""Readers: the real Persona-Chat and SPC files, small synthetic files of every format, detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personaloom.io import detect_format, read_conversations, read_hf_json, read_parlai, read_spc_csv
from personaloom.records import Turn


def test_persona_chat_real(persona_chat_path: Path) -> None:
    convs = read_conversations(persona_chat_path)
    assert detect_format(persona_chat_path) == "parlai"
    assert len(convs) == 1000
    assert all(c.user1_persona and c.user2_persona for c in convs)
    assert all(c.turns for c in convs)
    assert len({c.id for c in convs}) == 1000
    first = convs[0]
    assert first.id == "persona-chat-00000" and first.source == "persona-chat"
    # speaker 2 is "self" (your persona); the first column is the partner (speaker 1)
    assert first.user2_persona[0] == "i read twenty books a year."
    assert first.user1_persona[0] == "horror movies are my favorites."
    assert first.turns[0] == Turn(speaker=1, text="hello what are doing today ?")
    assert first.turns[1].speaker == 2
    assert all(a.speaker != b.speaker for c in convs for a, b in zip(c.turns, c.turns[1:], strict=False))


def test_spc_real(spc_path: Path) -> None:
    convs = read_conversations(spc_path)
    assert detect_format(spc_path) == "spc-csv"
    assert len(convs) == 1000
    assert sum(1 for c in convs if c.defects) == 442 and all(c.turns for c in convs)
    assert sum(1 for c in convs if "placeholders" in c.defects) == 405
    assert all(c.raw is not None for c in convs)
    assert all(c.user1_persona and c.user2_persona for c in convs)
    assert convs[0].turns[0] == Turn(speaker=1, text="Hi!")
    assert convs[0].user1_persona[0] == "I love to bake cookies."


PARLAI_CANDS = (
    "1 your persona: i like cats.\n"
    "2 your persona: i live in ohio.\n"
    "3 __SILENCE__\thi there , i like cats .\t\tfoo|hi there , i like cats .|bar\n"
    "4 cool , what kind ?\ta tabby .\t\ta tabby .|baz\n"
    "5 bye\n"
    "1 your persona: i swim.\n"
    "2 partner's persona: i run.\n"
    "3 hello\they\n"
)


def test_parlai_self_only_cands_silence(tmp_path: Path) -> None:
    p = tmp_path / "self_original.txt"
    p.write_text(PARLAI_CANDS, encoding="utf-8")
    convs = read_parlai(p)
    assert len(convs) == 2
    a, b = convs
    assert a.user1_persona == [] and a.user2_persona == ["i like cats.", "i live in ohio."]
    assert [t.speaker for t in a.turns] == [2, 1, 2, 1]
    assert a.turns[0].text == "hi there , i like cats ."
    assert a.turns[-1] == Turn(speaker=1, text="bye")
    assert b.user1_persona == ["i run."] and b.user2_persona == ["i swim."]
    assert b.id == "persona-chat-00001"


def _hf_entry(persona: list[str], history: list[str], gold: str) -> dict[str, object]:
    return {
        "personality": persona,
        "utterances": [
            {"history": history[:1], "candidates": ["x", history[1]]},
            {"history": history, "candidates": ["distractor", gold]},
        ],
    }


def test_hf_json_list_and_splits(tmp_path: Path) -> None:
    entry = _hf_entry(["i like tea."], ["__ SILENCE __", "hello !", "hi , tea ?"], "yes please .")
    p = tmp_path / "personachat.json"
    p.write_text(json.dumps([entry, entry], indent=2), encoding="utf-8")
    assert detect_format(p) == "hf-json"
    convs = read_hf_json(p)
    assert len(convs) == 2
    c = convs[0]
    assert c.user2_persona == ["i like tea."] and c.user1_persona == []
    assert [(t.speaker, t.text) for t in c.turns] == [(2, "hello !"), (1, "hi , tea ?"), (2, "yes please .")]
    q = tmp_path / "splits.json"
    q.write_text(json.dumps({"train": [entry], "valid": [entry, entry]}), encoding="utf-8")
    assert detect_format(q) == "hf-json"
    ids = [c.id for c in read_conversations(q)]
    assert ids == ["hf-personachat-train-00000", "hf-personachat-valid-00000", "hf-personachat-valid-00001"]


def test_spc_extra_columns_and_defects(tmp_path: Path) -> None:
    p = tmp_path / "spc.csv"
    p.write_text(
        ",User 2 Personas,user 1 personas,Best Generated Conversation\n"
        '0,"I swim.","I run.\nI cook.","User 1: Hi [name]!\n\nUser 2: Hello.\n* * *\nUser 2: Bye."\n',
        encoding="utf-8",
    )
    (c,) = read_spc_csv(p)
    assert c.user1_persona == ["I run.", "I cook."] and c.user2_persona == ["I swim."]
    assert [t.speaker for t in c.turns] == [1, 2, 2]
    assert set(c.defects) == {"placeholders", "blank_lines", "unprefixed", "same_speaker"}
    assert c.raw is not None and c.raw.startswith("User 1: Hi [name]!")


def test_detect_and_override(tmp_path: Path) -> None:
    p = tmp_path / "data.weird"
    p.write_text("1 your persona: i ski.\n2 hi\tyo\n", encoding="utf-8")
    assert detect_format(p) == "parlai"
    assert read_conversations(p, fmt="PARLAI")[0].turns[1].text == "yo"
    j = tmp_path / "c.jsonl"
    j.write_text(read_conversations(p)[0].model_dump_json() + "\n", encoding="utf-8")
    assert detect_format(j) == "jsonl"
    assert read_conversations(j)[0].user2_persona == ["i ski."]


@pytest.mark.parametrize("fmt", ["csv", "json", ""])
def test_unknown_format_lists_valid(tmp_path: Path, fmt: str) -> None:
    from personaloom.errors import InputError

    p = tmp_path / "x.txt"
    p.write_text("1 hi\n", encoding="utf-8")
    with pytest.raises(InputError, match="parlai, hf-json, spc-csv, jsonl"):
        read_conversations(p, fmt=fmt)
