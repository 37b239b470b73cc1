"""Bad input: each case is one InputError whose one-line message names the file and line/row."""

from __future__ import annotations

from pathlib import Path

import pytest

from personaloom.errors import InputError
from personaloom.io import read_conversations, read_jsonl
from personaloom.records import Attribute

SPC_HEADER = "user 1 personas,user 2 personas,Best Generated Conversation\n"
GOOD_ROW = '"I run.","I swim.","User 1: Hi\nUser 2: Hello"\n'

# name -> (file name, content, expected line or None, fragment of the message)
CASES: dict[str, tuple[str, bytes, int | None, str]] = {
    "empty file": ("empty.txt", b"", None, "empty file"),
    "whitespace only": ("blank.csv", b"\n \n", None, "empty file"),
    "truncated csv": (
        "t.csv",
        (SPC_HEADER + GOOD_ROW + GOOD_ROW + '"I cut.","I am cut off.","User 1: Hi\nUs').encode(),
        6,
        "row 3",
    ),
    "missing columns": ("m.csv", b"user 1 personas,conversation\nx,y\n", 1, "'user 2 personas'"),
    "short row": ("s.csv", (SPC_HEADER + '"a","b"\n').encode(), 2, "row 1 has 2 field"),
    "header only": ("h.csv", SPC_HEADER.encode(), 2, "no conversations"),
    "non-utf8 parlai": ("n.txt", b"1 your persona: i ski.\n2 caf\xe9\thi\n", 2, "not UTF-8"),
    "non-utf8 csv": ("n.csv", (SPC_HEADER + GOOD_ROW).encode() + b'"\xff","b","c"\n', 4, "not UTF-8"),
    "persona no dialogue": (
        "p.txt",
        b"1 your persona: i ski.\n2 hi\tyo\n1 your persona: i run.\n2 partner's persona: x.\n",
        3,
        "persona lines with no dialogue",
    ),
    "persona after dialogue": (
        "a.txt",
        b"1 your persona: i ski.\n2 hi\tyo\n3 your persona: late.\n",
        3,
        "persona line after",
    ),
    "unnumbered line": ("u.txt", b"1 your persona: i ski.\nhi\tyo\n", 2, "numbered line"),
    "jsonl broken line": (
        "b.jsonl",
        b'{"id": "a", "user1_persona": [], "user2_persona": [], "turns": []}\n{"id": \n',
        2,
        "not valid JSON",
    ),
    "jsonl bad record": (
        "r.jsonl",
        b'{"id": "a", "user1_persona": [], "user2_persona": [], "turns": [{"speaker": 3, "text": "x"}]}\n',
        1,
        "turns.0.speaker",
    ),
    "hf json invalid": ("h.json", b'[\n  {"personality": ["a"],\n  "utterances": [}\n]', 3, "invalid JSON"),
    "hf json no persona": (
        "h2.json",
        b'[\n{"personality": ["a"], "utterances": [{"history": ["x"], "candidates": ["y"]}]},'
        b'\n{"personality": [], "utterances": [{"history": ["x"], "candidates": ["y"]}]}]',
        3,
        "no persona",
    ),
    "hf json no dialogue": (
        "h3.json",
        b'{"train": [\n{"personality": ["a"], "utterances": []}]}',
        2,
        "persona with no dialogue",
    ),
    "hf json missing key": ("h4.json", b'[{"personality": ["a"]}]', 1, "'utterances'"),
    "undetectable": ("x.bin", b"hello world\n", None, "--format"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(tmp_path: Path, name: str) -> None:
    fname, content, line, fragment = CASES[name]
    p = tmp_path / fname
    p.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_conversations(p)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert err.path == str(p) and message.startswith(str(p))
    assert err.line == line, message
    assert fragment in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_conversations(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="is a directory"):
        read_conversations(tmp_path)
    with pytest.raises(InputError, match="is a directory"):
        read_jsonl(tmp_path, Attribute)


def test_jsonl_strict_empty(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty file"):
        read_jsonl(p, Attribute, allow_empty=False)


def test_cli_bad_input_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = pytest.importorskip("personaloom.cli")
    bad = tmp_path / "bad.csv"
    bad.write_text(SPC_HEADER + '"unterminated', encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        cli.main(["convert", str(bad), str(tmp_path / "out.jsonl")])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2:" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()
