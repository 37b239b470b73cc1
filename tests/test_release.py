"""Release filters: near-duplicate and contaminated conversations.

`personaloom run` against a loopback server whose Generator repeats itself: twelve pairs get, in the order they are
first asked for, six kinds of conversation (each twice): one text verbatim (an exact twin), one base text with its
last two lines made the pair's own (near twins, similarity 0.77), the base text with its last five lines the pair's
own (0.52 to those: below the threshold), one with a 16-word utterance of a benchmark file, one sharing only 12 words of
it, and one all the pair's own. The run removes the exact and the near twin and drops the two copies, nothing else;
duplicates.jsonl and contaminated.jsonl list them, stats.json, the card and report.html count them. Unit tests of
the Deduplicator on planted similarities on both sides of the threshold, of the 13-gram rule, of `personaloom dedup`
on a file and of `evaluate --decontaminate` (counted, not dropped)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personaloom.backends.fake import demo_http_reply, infer_stage
from personaloom.decontaminate import References
from personaloom.dedup import THRESHOLD, BandTable, Deduplicator, band_keys, conversation_words, deduplicate, shingles
from personaloom.io import write_jsonl
from personaloom.records import Conversation, Turn
from pipeline_server import cli_env, demo_server, read_jsonl
from servers import requested_schema

BENCHMARK = ("my grandmother taught me to bake bread every sunday morning before church when i was small "
             "and curious")  # 17 words
TWELVE = " ".join(BENCHMARK.split()[:12])


def line(tag: str, i: int) -> str:
    """Twelve words no other line has."""
    return " ".join(f"{tag}x{i}w{j}" for j in range(12)).capitalize() + "."


BASE = [line("base", i) for i in range(16)]
EXACT = [line("same", i) for i in range(16)]


def conversation_for(kind: int, own: str) -> list[str]:
    """The Generator's lines for a pair of `kind` (see the module docstring); `own`: the pair's own words."""
    mine = [line(own, i) for i in range(16)]
    if kind == 0:
        return EXACT
    if kind == 1:
        return [*BASE[:14], *mine[14:]]
    if kind == 2:
        return [*BASE[:11], *mine[11:]]
    if kind == 3:
        return [*mine[:8], f"{BENCHMARK.capitalize()}.", *mine[9:]]
    if kind == 4:
        return [*mine[:8], f"{TWELVE.capitalize()} but then i stopped going.", *mine[9:]]
    return mine


def repeating() -> Any:
    kinds: dict[str, int] = {}
    lock = threading.Lock()

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages", [])
        if requested_schema(body) is None and infer_stage(body) == "generate" and messages \
                and messages[0].get("role") == "system":
            pair = str(messages[-1].get("content", ""))
            with lock:
                kind = kinds.setdefault(pair, len(kinds) % 6)
            own = "p" + hashlib.blake2b(pair.encode(), digest_size=4).hexdigest()
            return "\n".join(f"User {1 + i % 2}: {text}" for i, text in enumerate(conversation_for(kind, own)))
        return demo_http_reply(body)

    return reply


def similarity(a: list[str], b: list[str]) -> float:
    x, y = set(shingles(a)), set(shingles(b))
    return len(x & y) / len(x | y)


def test_the_planted_similarities_lie_on_both_sides_of_the_threshold() -> None:
    def tokens(lines: list[str]) -> list[str]:
        return conversation_words(conv("x", lines))

    near = similarity(tokens(conversation_for(1, "a")), tokens(conversation_for(1, "b")))
    below = similarity(tokens(conversation_for(1, "a")), tokens(conversation_for(2, "b")))
    apart = similarity(tokens(conversation_for(2, "a")), tokens(conversation_for(2, "b")))
    assert 0.75 <= near < 0.8 and 0.5 < below < 0.55 and apart < 0.55 and THRESHOLD == 0.7


def conv(cid: str, lines: list[str], persona: tuple[str, ...] = ("I like tea.",)) -> Conversation:
    return Conversation(id=cid, user1_persona=list(persona), user2_persona=["I am a nurse."],
                        turns=[Turn(speaker=1 + i % 2, text=t) for i, t in enumerate(lines)])


@pytest.mark.parametrize("replaced, duplicate", [(0, True), (1, True), (2, True), (4, False), (6, False), (16, False)])
def test_a_conversation_is_a_near_duplicate_exactly_above_the_threshold(replaced: int, duplicate: bool) -> None:
    twin = [*BASE[:16 - replaced], *(line("other", i) for i in range(16 - replaced, 16))]
    dedup = Deduplicator()
    assert dedup.check(conv("a", BASE)) is None
    found = dedup.check(conv("b", twin))
    true = similarity(conversation_words(conv("a", BASE)), conversation_words(conv("b", twin)))
    assert (found is not None) == duplicate, (replaced, true)
    if found is not None:
        assert found.kept_id == "a" and found.kind == ("exact" if replaced == 0 else "near")
        assert abs(found.similarity - true) < 0.1  # an estimate of the true Jaccard similarity
    assert dedup.counts()["checked"] == 2


def test_the_band_table_returns_every_row_of_a_key_across_doublings() -> None:
    table = BandTable(capacity=16)
    rng = np.random.default_rng(1)
    keys = rng.integers(1, 2**32, size=(3000, 8), dtype=np.uint32)
    keys[2999] = keys[5]  # one conversation with another's bands: both rows under each key
    for row, own in enumerate(keys):
        table.add(own, np.full(own.size, row, dtype=np.uint32))
    assert table.size == 24_000 and len(table._keys) == 65_536  # doubled 12 times, at most 60% full
    for row in (0, 5, 1234, 2998):
        found = set(table.rows(keys[row]).tolist())
        assert row in found and (row == 5) == (2999 in found)
    assert set(table.rows(keys[5]).tolist()) >= {5, 2999}
    big = BandTable(capacity=10)  # rounded up to a power of two; a batch larger than the table grows it first
    big.add(np.arange(1, 101, dtype=np.uint32), np.arange(100, dtype=np.uint32))
    assert sorted(big.rows(np.array([1, 100], dtype=np.uint32)).tolist()) == [0, 99] and big.size == 100
    absent = np.setdiff1d(rng.integers(1, 2**32, size=100, dtype=np.uint32), keys)
    assert absent.size and table.rows(absent).size == 0  # a key never stored gives no row


def test_band_keys_match_exactly_where_the_signature_bands_match() -> None:
    signature = np.arange(128, dtype=np.uint32) * 7919
    other = signature.copy()
    other[5] += 1  # band 1 of 32 (values 4-7) differs
    a, b = band_keys(signature, 32), band_keys(other, 32)
    assert a.dtype == np.uint32 and a.all() and len(set(a.tolist())) == 32
    assert (a == b).tolist() == [i != 1 for i in range(32)]


def test_exact_duplicates_ignore_case_punctuation_and_speaker_labels() -> None:
    kept, removed = deduplicate([conv("a", ["Hello there!", "Hi."]), conv("b", ["hello, THERE", "hi"]),
                                 conv("c", ["Something else entirely.", "Yes."])])
    assert [c.id for c in kept] == ["a", "c"]
    assert [(d.id, d.kept_id, d.kind, d.similarity) for d in removed] == [("b", "a", "exact", 1.0)]


def test_a_copied_13_word_run_is_contamination_and_12_words_are_not(tmp_path: Path) -> None:
    reference = tmp_path / "test.jsonl"
    write_jsonl(reference, [conv("ref", ["Hi.", f"{BENCHMARK.capitalize()}."], ("I bake bread.",))])
    refs = References([reference])
    copied = refs.match(conv("x", ["Hello.", f"Well, {' '.join(BENCHMARK.split()[2:15])} indeed."]))
    assert copied is not None and copied.source == str(reference) and len(copied.ngram.split()) == 13
    assert copied.utterance.startswith("My grandmother")
    assert refs.match(conv("y", ["Hello.", f"{TWELVE} but then i stopped going."])) is None
    assert refs.persona_overlap(conv("z", ["Hi."], ("I bake bread!", "I like tea."))) == 2  # and "I am a nurse."


def run_repeating(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    reference = tmp_path / "benchmark.jsonl"
    write_jsonl(reference, [conv("ref", ["Hello.", f"{BENCHMARK.capitalize()}."])])
    out = tmp_path / "out"
    with demo_server(repeating()) as server:
        result = subprocess.run(
            [sys.executable, "-m", "personaloom.cli", "run", "--backend", "openai", "--base-url", server.url,
             "--model", "m", "--out", str(out), "--pairs", "12", "--iterations", "1", "--candidates", "2",
             "--set", "expand.new_attributes=4", "--set", "expand.bootstrap_steps=1", "--set",
             "backend.concurrency=1", "--decontaminate", str(reference), *extra],
            capture_output=True, text=True, env=cli_env(), timeout=600, check=False)
    return result, out


def test_a_run_removes_the_planted_duplicates_and_copies_and_nothing_else(tmp_path: Path) -> None:
    result, out = run_repeating(tmp_path)
    assert result.returncode == 0, result.stderr
    selected = read_jsonl(out / "iterations" / "1" / "selected.jsonl")
    kept = read_jsonl(out / "conversations.jsonl")
    assert len(selected) == 12, "every pair kept a conversation before the filters"

    def kind(c: dict[str, Any]) -> str:
        text = " ".join(t["text"] for t in c["turns"]).lower()
        if "samex0w0" in text:
            return "exact"
        if "basex13w0" in text:
            return "near"
        if "basex0w0" in text:
            return "below"
        if BENCHMARK in text:
            return "copied"
        return "twelve" if TWELVE in text else "own"

    assert sorted(kind(c) for c in selected) == sorted(["exact", "near", "below", "copied", "twelve", "own"] * 2)
    assert sorted(kind(c) for c in kept) == sorted(["exact", "near", "below", "below", "twelve", "twelve", "own",
                                                    "own"])
    duplicates = read_jsonl(out / "duplicates.jsonl")
    by_id = {c["id"]: c for c in selected}
    assert sorted(d["kind"] for d in duplicates) == ["exact", "near"]
    for d in duplicates:
        assert kind(by_id[d["id"]]) == kind(by_id[d["kept_id"]]) and d["kept_id"] in {c["id"] for c in kept}
        assert d["similarity"] == 1.0 if d["kind"] == "exact" else 0.7 <= d["similarity"] < 0.9
    contaminated = read_jsonl(out / "contaminated.jsonl")
    assert len(contaminated) == 2 and all(kind(by_id[c["id"]]) == "copied" for c in contaminated)
    assert all(c["source"].endswith("benchmark.jsonl") and len(c["ngram"].split()) == 13 for c in contaminated)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["conversations"] == 8
    assert (stats["dedup"]["exact"], stats["dedup"]["near"], stats["dedup"]["checked"]) == (1, 1, 10)
    assert (stats["decontamination"]["contaminated"], stats["decontamination"]["dropped"]) == (2, 2)
    card = (out / "README.md").read_text()
    assert "| exact duplicates | 1 |" in card and "| near duplicates" in card and "benchmark.jsonl | 2 |" in card
    report = (out / "report.html").read_text()
    assert "removed by the run before its dataset was written" in report
    assert "1 exact and 1 near duplicates" in " ".join(result.stdout.split() + result.stderr.split())
    assert (out / "spc.csv").read_text().lower().count("basex13w0") == 1


def test_dedup_command_and_evaluate_count_without_dropping(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [conv("a", BASE), conv("b", [*BASE[:15], line("other", 15)]), conv("c", EXACT),
                       conv("d", [*EXACT[:8], f"{BENCHMARK}.", *EXACT[9:]])])
    reference = tmp_path / "benchmark.jsonl"
    write_jsonl(reference, [conv("ref", [f"{BENCHMARK}."])])
    listed = subprocess.run([sys.executable, "-m", "personaloom.cli", "dedup", str(data)], capture_output=True,
                            text=True, env=cli_env(), timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "found 0 exact and 2 near duplicates" in listed.stdout and "b duplicates a (near" in listed.stdout
    assert "2 would be kept (--out to write them)" in listed.stdout
    written = subprocess.run([sys.executable, "-m", "personaloom.cli", "dedup", str(data), "--out",
                              str(tmp_path / "clean.jsonl"), "--decontaminate", str(reference)],
                             capture_output=True, text=True, env=cli_env(), timeout=120, check=False)
    assert written.returncode == 0, written.stderr
    assert [c["id"] for c in read_jsonl(tmp_path / "clean.jsonl")] == ["a", "c"]
    assert [d["id"] for d in read_jsonl(tmp_path / "clean.duplicates.jsonl")] == ["b"]
    assert [c["id"] for c in read_jsonl(tmp_path / "clean.contaminated.jsonl")] == ["d"]
    bad = subprocess.run([sys.executable, "-m", "personaloom.cli", "dedup", str(data), "--threshold", "1.5"],
                         capture_output=True, text=True, env=cli_env(), timeout=120, check=False)
    assert bad.returncode != 0 and "dedup.threshold" in bad.stderr and "Traceback" not in bad.stderr

    import personaloom as pl

    result = pl.evaluate(data, out=tmp_path / "eval", judge="none", decontaminate=[reference])
    assert result.metrics["duplicates"]["near"] == 2 and result.metrics["conversations"] == 4
    assert result.metrics["contamination"]["contaminated"] == 1
    assert [c["id"] for c in read_jsonl(tmp_path / "eval" / "contamination.jsonl")] == ["d"]
    assert "in the data evaluated (counted, not removed)" in (tmp_path / "eval" / "report.html").read_text()
