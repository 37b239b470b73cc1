"""Writers and round trips: JSONL, SPC CSV, ParlAI (with candidates), HF datasets, dataset card, convert."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from personaloom.io import (
    convert,
    read_conversations,
    read_jsonl,
    read_parlai,
    write_dataset_card,
    write_hf_dataset,
    write_jsonl,
    write_parlai,
    write_spc_csv,
)
from personaloom.records import Attribute, Conversation, CriticSummary, Trim, Turn


def _conv(i: int, speakers: list[int], **kw: object) -> Conversation:
    return Conversation(
        id=f"c{i}",
        user1_persona=[f"I am user one of {i}."],
        user2_persona=[f"I am user two of {i}.", "I like tea."],
        turns=[Turn(speaker=s, text=f"utterance {i}.{k} by {s}") for k, s in enumerate(speakers)],  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_parlai_roundtrip_real(persona_chat_path: Path, tmp_path: Path) -> None:
    convs = read_conversations(persona_chat_path)
    write_jsonl(tmp_path / "pc.jsonl", convs)
    back = read_conversations(tmp_path / "pc.jsonl")
    assert back == convs
    write_parlai(tmp_path / "pc.txt", back, candidates=0)
    assert (tmp_path / "pc.txt").read_bytes() == persona_chat_path.read_bytes()


def test_spc_roundtrip_real(spc_path: Path, tmp_path: Path) -> None:
    convs = read_conversations(spc_path)
    write_jsonl(tmp_path / "spc.jsonl", convs)
    back = read_conversations(tmp_path / "spc.jsonl")
    assert back == convs
    write_spc_csv(tmp_path / "spc.csv", back)

    def cells(p: Path) -> list[list[str]]:
        with p.open(newline="", encoding="utf-8") as fh:
            return list(csv.reader(fh))

    assert cells(tmp_path / "spc.csv") == cells(spc_path)
    assert (tmp_path / "spc.csv").read_bytes() == spc_path.read_bytes()


def test_parlai_candidates_real(persona_chat_path: Path, tmp_path: Path) -> None:
    convs = read_conversations(persona_chat_path)[:200]
    out = tmp_path / "cands.txt"
    assert write_parlai(out, convs, candidates=19, seed=7) == 200
    back = read_parlai(out)
    assert [(c.turns, c.user1_persona, c.user2_persona) for c in back] == [
        (c.turns, c.user1_persona, c.user2_persona) for c in convs
    ]
    own = {t.text for t in convs[0].turns}
    positions = set()
    for line in out.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) < 4:
            continue
        cands = cols[3].split("|")
        assert len(cands) == 20 and len(set(cands)) == 20 and cols[1] in cands
        positions.add(cands.index(cols[1]))
    assert len(positions) > 10  # the label sits at seeded, varying positions
    first_dialogue = next(line for line in out.read_text().splitlines() if "\t" in line)
    assert not (set(first_dialogue.split("\t")[3].split("|")) - {first_dialogue.split("\t")[1]}) & own
    # same seed -> same file; another seed -> another sample
    write_parlai(tmp_path / "again.txt", convs, candidates=19, seed=7)
    write_parlai(tmp_path / "other.txt", convs, candidates=19, seed=8)
    assert (tmp_path / "again.txt").read_bytes() == out.read_bytes()
    assert (tmp_path / "other.txt").read_bytes() != out.read_bytes()


def test_parlai_irregular_turns_roundtrip(tmp_path: Path) -> None:
    convs = [_conv(0, [2, 1, 1, 2, 2, 1]), _conv(1, [1, 2, 1]), _conv(2, [1])]
    empty = Conversation(id="e", user1_persona=["x"], user2_persona=["y"], turns=[])
    out = tmp_path / "odd.txt"
    assert write_parlai(out, [*convs, empty], candidates=3, seed=0) == 3
    assert [c.turns for c in read_parlai(out)] == [c.turns for c in convs]


def test_jsonl_any_record(tmp_path: Path) -> None:
    attrs = [Attribute(id=f"a{i}", text=f"I have {i} cats.", cluster=i) for i in range(3)]
    assert write_jsonl(tmp_path / "a.jsonl", attrs) == 3
    assert read_jsonl(tmp_path / "a.jsonl", Attribute) == attrs
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    assert read_jsonl(tmp_path / "empty.jsonl", Attribute) == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_spc_writer_renders_changed_turns(tmp_path: Path) -> None:
    c = _conv(0, [1, 2], raw="User 1: something else\nUser 2: entirely")
    write_spc_csv(tmp_path / "x.csv", [c])
    (back,) = read_conversations(tmp_path / "x.csv")
    assert back.turns == c.turns and back.user2_persona == c.user2_persona


def test_hf_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    convs = [_conv(i, [1, 2, 1, 2], iteration=1, critic=CriticSummary(mode="pairwise", votes={"depth": i}))
             for i in range(5)]
    # Fields outside the dataset's schema (a generator's trim, the label forms read) are left out, not an error.
    convs[0] = convs[0].model_copy(update={"trimmed": Trim(kept=4, of=6, at="same_speaker"),
                                           "label_forms": ["emphasis"], "language": "fr"})
    out = tmp_path / "dataset"
    assert write_hf_dataset(out, convs) == 5
    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == 5 and ds[0]["id"] == "c0"
    assert ds[0]["turns"][1] == {"speaker": 2, "text": "utterance 0.1 by 2"}
    assert ds[0]["user2_persona"] == ["I am user two of 0.", "I like tea."]
    pq = datasets.load_dataset("parquet", data_files=str(out / "data.parquet"))["train"]
    assert pq.num_rows == 5 and json.loads(pq[4]["critic"])["votes"] == {"depth": 4}
    assert (ds[0]["language"], ds[2]["language"], ds[0]["sessions"]) == ("fr", None, None)
    # rewriting replaces the directory whole
    write_hf_dataset(out, convs[:2])
    assert datasets.load_from_disk(str(out)).num_rows == 2
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_dataset_card(tmp_path: Path) -> None:
    convs = [_conv(i, [1, 2, 1, 2]) for i in range(3)] + [_conv(9, [1, 1], defects=["same_speaker"])]
    text = write_dataset_card(
        tmp_path / "README.md",
        convs,
        title="Tiny",
        sources=["seed set"],
        config={"generate": {"pairs": 4}},
        stats={"conversations": 4},
        licence="apache-2.0",
    )
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == text
    assert text.startswith("---\nlicense: apache-2.0\n")
    for needle in (
        "| conversations | 4 |",
        "| utterances (turns) | 14 |",
        "| mean utterances per conversation | 3.50 |",
        "| unique personas | 8 |",
        "| conversations with format defects | 1 |",
        "seed set",
        "pairs: 4",
        "load_from_disk",
        "## Licence",
    ):
        assert needle in text, needle


def test_convert_real(persona_chat_path: Path, spc_path: Path, tmp_path: Path) -> None:
    msg = convert(persona_chat_path, tmp_path / "x.jsonl")
    assert msg == f"wrote 1000 conversations (jsonl) to {tmp_path / 'x.jsonl'}; 0 have format defects"
    assert len(read_conversations(tmp_path / "x.jsonl")) == 1000
    msg = convert(spc_path, tmp_path / "s.txt", candidates=0)
    assert msg == f"wrote 1000 conversations (parlai) to {tmp_path / 's.txt'}; 442 have format defects"
    assert [c.turns for c in read_parlai(tmp_path / "s.txt")] == [c.turns for c in read_conversations(spc_path)]
    assert "(spc-csv)" in convert(tmp_path / "x.jsonl", tmp_path / "y.csv")


def test_convert_hf(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    write_jsonl(tmp_path / "c.jsonl", [_conv(i, [1, 2]) for i in range(3)])
    msg = convert(tmp_path / "c.jsonl", tmp_path / "ds")
    assert "(hf)" in msg
    assert datasets.load_from_disk(str(tmp_path / "ds")).num_rows == 3
    assert "| conversations | 3 |" in (tmp_path / "ds" / "README.md").read_text(encoding="utf-8")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def records() -> Iterator[Conversation]:
        yield _conv(0, [1, 2])
        raise RuntimeError("boom")

    target = tmp_path / "out.jsonl"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        write_jsonl(target, records())
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_hf_dataset_empty(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    write_hf_dataset(tmp_path / "ds", [])
    assert datasets.load_from_disk(str(tmp_path / "ds")).num_rows == 0


def test_hf_dataset_reads_back_what_it_writes(tmp_path: Path) -> None:
    """`--to hf` output is input too: the directory, its Parquet file and `convert` all give the same
    conversations back (critic summary and Big Five levels included)."""
    pytest.importorskip("datasets")
    convs = [_conv(i, [1, 2, 1], iteration=1, critic=CriticSummary(mode="pairwise", votes={"depth": i}))
             for i in range(4)]
    convs[1] = convs[1].model_copy(update={"language": "fr"})
    write_hf_dataset(tmp_path / "ds", convs)
    assert read_conversations(tmp_path / "ds") == convs
    assert read_conversations(tmp_path / "ds" / "data.parquet") == convs
    msg = convert(tmp_path / "ds", tmp_path / "back.jsonl")
    assert msg.startswith("wrote 4 conversations (jsonl)") and read_conversations(tmp_path / "back.jsonl") == convs


def test_hf_reader_takes_spc_parquet_and_every_split(spc_path: Path, tmp_path: Path) -> None:
    """Synthetic-Persona-Chat as its Hub Parquet files have it (SPC's columns), and a DatasetDict saved to
    disk: every split, in order."""
    datasets = pytest.importorskip("datasets")
    from personaloom.io.spc_csv import COLUMNS

    with open(spc_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    table = {name: [row[name] for row in rows[:50]] for name in COLUMNS}
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "train.parquet"))
    from_csv = read_conversations(spc_path)[:50]
    from_parquet = read_conversations(tmp_path / "train.parquet")
    assert [(c.turns, c.user1_persona, c.defects) for c in from_parquet] == [
        (c.turns, c.user1_persona, c.defects) for c in from_csv]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({k: v[:30] for k, v in table.items()}),
                                   "test": datasets.Dataset.from_dict({k: v[30:] for k, v in table.items()})})
    splits.save_to_disk(str(tmp_path / "dd"))
    assert [c.turns for c in read_conversations(tmp_path / "dd")] == [c.turns for c in from_csv]


def test_hf_reader_errors_name_the_cause(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from personaloom.errors import InputError

    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="is a directory, expected a file or a Hugging Face dataset directory"):
        read_conversations(tmp_path / "plain")
    datasets.Dataset.from_dict({"prompt": ["hi"], "answer": ["hello"]}).to_parquet(str(tmp_path / "qa.parquet"))
    with pytest.raises(InputError, match="'prompt', 'answer': neither personaloom's"):
        read_conversations(tmp_path / "qa.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="cannot read as a Hugging Face dataset"):
        read_conversations(tmp_path / "broken.parquet")
    bad = {"id": ["x"], "user1_persona": [["a"]], "user2_persona": [["b"]], "turns": [[{"speaker": 7, "text": "t"}]]}
    datasets.Dataset.from_dict(bad).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(InputError, match="row 1 is not a conversation"):
        read_conversations(tmp_path / "bad.parquet")
