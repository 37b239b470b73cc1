"""Evaluation suite: arithmetic with known inputs, scripted judges, and the suite on tiny files."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import BackendClient

from personaloom.backends.base import ChatRequest
from personaloom.backends.fake import FakeBackend
from personaloom.errors import InputError
from personaloom.evaluate import faithfulness as F
from personaloom.evaluate import turing as T
from personaloom.evaluate.metrics import (
    coverage_from_similarities,
    defect_counts,
    deterministic_metrics,
    distinct_n,
    persona_coverage,
    tokens,
)
from personaloom.evaluate.report import load_run_info
from personaloom.evaluate.retrieval import hits_at_1, hits_from_scores
from personaloom.evaluate.suite import build_report, evaluate, judge_sample
from personaloom.evaluate.toxicity import run_toxicity
from personaloom.records import Conversation, Turn


def conv(cid: str, p1: list[str], p2: list[str], lines: list[str], raw: str | None = None) -> Conversation:
    turns = [Turn(speaker=1 if i % 2 == 0 else 2, text=t) for i, t in enumerate(lines)]
    return Conversation(id=cid, user1_persona=p1, user2_persona=p2, turns=turns, raw=raw)


# ---- deterministic metrics ------------------------------------------------------------------------


def test_tokens_ignore_case_and_punctuation() -> None:
    assert tokens("I'm   GOOD , thanks !") == tokens("i'm good, thanks!") == ["i'm", "good", "thanks"]


def test_distinct_n_known_values() -> None:
    toks = [["a", "b", "a"], ["a", "b"]]
    assert distinct_n(toks, 1) == pytest.approx(2 / 5)
    assert distinct_n(toks, 2) == pytest.approx(2 / 3)  # (a,b) (b,a) (a,b)
    assert distinct_n(toks, 3) == pytest.approx(1.0)
    assert distinct_n([], 2) == 0.0


def test_defect_counts_from_raw_and_turns() -> None:
    clean = conv("c", ["a"], ["b"], ["hi", "hello"], raw="User 1: hi\nUser 2: hello")
    blank = conv("b", ["a"], ["b"], ["hi", "hello"], raw="User 1: hi\n\nUser 2: hello")
    loose = conv("u", ["a"], ["b"], ["hi", "hello"], raw="User 1: hi\n* * *\nUser 2: hello [User 1's name]")
    same = Conversation(
        id="s", user1_persona=[], user2_persona=[], turns=[Turn(speaker=1, text="a"), Turn(speaker=1, text="b")]
    )
    empty = Conversation(id="e", user1_persona=[], user2_persona=[], turns=[])
    counts = defect_counts([clean, blank, loose, same, empty])
    assert counts == {
        "empty": 1,
        "blank_lines": 1,
        "unprefixed": 1,
        "placeholders": 1,
        "stage_directions": 0,
        "same_speaker": 1,
        "nonstandard_labels": 0,
        "any": 4,
    }


def test_length_stats_and_vocab() -> None:
    m = deterministic_metrics([conv("a", [], [], ["one two", "three"]), conv("b", [], [], ["one", "two", "x y z"])])
    assert m["conversations"] == 2
    assert m["utterances_per_conversation"]["mean"] == 2.5
    assert m["words_per_utterance"]["mean"] == pytest.approx(8 / 5)
    assert m["vocab_size"] == 6
    assert sum(m["words_per_utterance"]["hist"]["counts"]) == 5


class BagOfWords:
    """A stand-in embedder: L2-normalised word counts over a fixed vocabulary."""

    def encode(self, texts: list[str]) -> np.ndarray:
        vocab = sorted({w for t in texts for w in tokens(t)})
        pos = {w: i for i, w in enumerate(vocab)}
        out = np.zeros((len(texts), max(1, len(vocab))), dtype=np.float32)
        for r, t in enumerate(texts):
            for w in tokens(t):
                out[r, pos[w]] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1
        return out / norms


def test_coverage_arithmetic() -> None:
    sims = np.array([[0.9, 0.1], [0.2, 0.3], [0.5, 0.49]])
    assert coverage_from_similarities(sims, 0.5) == (2, 3)
    assert coverage_from_similarities(np.zeros((2, 0)), 0.5) == (0, 2)
    c = conv(
        "a",
        ["i have two dogs", "i like jazz"],
        ["i am a nurse"],
        ["i have two dogs", "i am a nurse at night", "cool", "ok"],
    )
    cov = persona_coverage([c], BagOfWords(), threshold=0.7)
    # user 1 echoes "dogs" (cos 1) but not "jazz"; user 2 echoes "nurse" (cos ~0.77)
    assert (cov["covered"], cov["attributes"]) == (2, 3)
    assert cov["rate"] == pytest.approx(2 / 3, abs=1e-6)


# ---- retrieval ------------------------------------------------------------------------------------


def test_hits_from_scores_shares_ties() -> None:
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [2.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    assert hits_from_scores(scores) == pytest.approx((0.5 + 0 + 1 + 1 / 3) / 4)


def test_hits_persona_helps_when_replies_echo_the_persona() -> None:
    topics = ["guitar", "tennis", "sushi", "paris", "python", "horses", "chess", "surfing", "opera", "baking"]
    convs = []
    for i, a in enumerate(topics):
        b = topics[(i + 3) % len(topics)]
        convs.append(
            conv(
                f"c{i}",
                [f"i love {a}"],
                [f"i love {b}"],
                ["hello there", f"hi i love {b} a lot", "nice what else", f"well i also love {a}"] * 3,
            )
        )
    h = hits_at_1(convs, seed=1, candidates=5)
    assert h["examples"] == len(convs) * 11
    assert h["with_persona"] > h["without_persona"]
    assert h == hits_at_1(convs, seed=1, candidates=5)  # seeded: same candidates, same numbers


# ---- Turing test ----------------------------------------------------------------------------------


def test_outcome_and_wilson() -> None:
    assert T.outcome("A", "B") == "lose"
    assert T.outcome("B", "A") == "win"
    assert T.outcome("A", "A") == "tie"
    assert T.outcome("B", "B") == "tie"
    assert T.outcome(None, "B") == "invalid"
    lo, hi = T.wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert T.wilson(0, 0) == (0.0, 0.0)
    lo, hi = T.wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    r = T.rates(["lose", "lose", "win", "tie", "invalid"])
    assert (r["lose"], r["win"], r["tie"], r["n"], r["invalid"]) == (0.5, 0.25, 0.25, 4, 1)
    assert r["ci95"]["lose"] == [round(x, 6) for x in T.wilson(2, 4)]


def test_parse_choice() -> None:
    assert T.parse_choice('{"machine_written": "B"}') == "B"
    assert T.parse_choice('Sure! {"machine_written":"a"} because') == "A"
    assert T.parse_choice("Conversation B was written by a machine.") == "B"
    assert T.parse_choice("I think A.") == "A"
    assert T.parse_choice("both A and B") is None
    assert T.parse_choice("") is None


def test_persona_key_ignores_order_case_contractions_and_user_numbering() -> None:
    a = conv("a", ["I am a nurse.", "I'll move soon"], ["i like dogs ."], [])
    b = conv("b", ["I like dogs"], ["i will move soon .", "i'm a nurse"], [])
    assert T.persona_key(a) == T.persona_key(b)
    assert T.persona_key(a) != T.persona_key(conv("c", ["I am a nurse."], ["i like dogs ."], []))


def _turing_data() -> tuple[list[Conversation], list[Conversation]]:
    gens, refs = [], []
    for i in range(5):
        p1, p2 = [f"i have {i} cats."], [f"i drive {i} cars."]
        gens.append(conv(f"g{i}", [p.upper() for p in p1], p2, [f"GEN hello {i}", "GEN hi"]))
        refs.append(conv(f"r{i}", p2, p1, [f"human hey {i}", "human yo"]))
    # one generated conversation with no matching reference pair: it gets a sampled one
    gens.append(conv("g5", ["i am unique."], ["so am i."], ["GEN hey", "GEN ho"]))
    return gens, refs


def test_turing_with_scripted_judge() -> None:
    gens, refs = _turing_data()
    # per generated id: what the judge does
    script = {"g0": "spot", "g1": "spot", "g2": "fooled", "g3": "always-A", "g4": "garbage", "g5": "spot"}

    def judge(req: ChatRequest) -> str:
        prompt = req.messages[-1].content
        a, b = prompt.index("Conversation A:"), prompt.index("Conversation B:")
        gen_pos = "A" if a < prompt.index("gen ") < b else "B"  # shown lower-cased
        assert gen_pos == ("A" if req.metadata["order"] == "generated-first" else "B")
        assert req.json_schema == T.SCHEMA
        behaviour = script[req.metadata["id"]]
        if behaviour == "garbage":
            return "I cannot tell."
        if behaviour == "always-A":
            return '{"machine_written": "A"}'
        pick = gen_pos if behaviour == "spot" else ("B" if gen_pos == "A" else "A")
        return json.dumps({"machine_written": pick})

    backend = FakeBackend(judge)
    summary, items = asyncio.run(T.run_turing(gens, refs, BackendClient(backend), seed=0))
    assert [it.outcome for it in items] == ["lose", "lose", "win", "tie", "invalid", "lose"]
    assert summary["counts"] == {"lose": 3, "win": 1, "tie": 1}
    assert (summary["n"], summary["invalid"], summary["lose"]) == (5, 1, 0.6)
    assert summary["matched_pairs"] == 5 and summary["pairs"] == 6
    assert [it.reference_id for it in items[:5]] == ["r0", "r1", "r2", "r3", "r4"]
    assert len(backend.requests) == 12


# ---- faithfulness test ----------------------------------------------------------------------------


def test_parsers() -> None:
    assert F.parse_picks('{"belongs": [2, 5, 9, 2]}', 8) == [1, 4]
    assert F.parse_picks("1, 3 and 4", 8) == [0, 2, 3]
    assert F.parse_picks('{"belongs": []}', 8) == []
    assert F.parse_picks("none of them", 8) is None
    forbidden = {T.normalise_attribute("I have a dog.")}
    assert F.parse_statement('{"statement": "I do not have a dog."}', forbidden) == "I do not have a dog."
    assert F.parse_statement('Answer: "I hate dogs."', forbidden) == "I hate dogs."
    assert F.parse_statement("i have a dog", forbidden) is None  # the true attribute again
    assert F.parse_statement("line one\nline two", forbidden) is None
    assert F.parse_statement("", forbidden) is None
    assert F.parse_statement(" ".join(["word"] * 40), forbidden) is None
    prompt = F.distractor_requests(F.FaithItem(_faith_data()[0], 1, ["I have a cat."], []))[1].messages[-1].content
    copied = "I am allergic to animals and have never had a pet."  # the template's own example
    assert copied in prompt and F.parse_statement(copied, forbidden, prompt) is None
    assert F.parse_statement("I am scared of cats.", forbidden, prompt) == "I am scared of cats."


def _faith_data() -> list[Conversation]:
    out = []
    for i in range(3):
        p1 = [f"i own {i} red bikes.", f"i visited {i} towns.", f"i bake {i} pies.", f"i sing {i} songs."]
        p2 = [f"i read {i} books.", f"i keep {i} fish.", f"i paint {i} walls.", f"i fly {i} kites.", f"i row {i}."]
        out.append(conv(f"c{i}", p1, p2, ["hello", "hi", "how are you", "fine"]))
    return out


def test_faithfulness_with_scripted_judge() -> None:
    convs = _faith_data()
    personas = {(c.id, s): set(p) for c in convs for s, p in ((1, c.user1_persona), (2, c.user2_persona))}

    def judge(req: ChatRequest) -> str:
        stage, item = req.metadata["stage"], req.metadata["id"]
        if stage == "evaluate.faithfulness.negation":
            return "" if item == "c1#2" else json.dumps({"statement": f"I never did anything ({item})."})
        if stage == "evaluate.faithfulness.contradiction":
            return json.dumps({"statement": f"I have been in prison all my life ({item})."})
        cid, speaker = item.split("#")
        listed = re.findall(r'^(\d)\. "(.*)"$', req.messages[-1].content, re.M)
        true = [int(n) for n, text in listed if text in personas[(cid, int(speaker))]]
        neg = [int(n) for n, text in listed if "never did anything" in text]
        if item == "c0#1":  # all 4 true + the negation
            return json.dumps({"belongs": true + neg})
        if item == "c0#2":  # 2 of the 4 true
            return json.dumps({"belongs": true[:2]})
        if item == "c1#1":
            return "no idea"  # unparseable: left out
        return json.dumps({"belongs": true})  # perfect

    summary, items = asyncio.run(F.run_faithfulness(convs, convs, BackendClient(FakeBackend(judge)), seed=3))
    assert len(items) == 6
    assert all(len(it.candidates) == 8 for it in items)
    kinds = {it.key: sorted(k for _, k in it.candidates) for it in items}
    assert kinds["c0#1"] == sorted(["true"] * 4 + ["negation", "contradiction", "other", "other"])
    assert kinds["c1#2"] == sorted(["true"] * 4 + ["other-pad", "contradiction", "other", "other"])
    for it in items:  # the "other" attributes come from another conversation
        own = set(it.conversation.user1_persona) | set(it.conversation.user2_persona)
        assert not any(t in own for t, k in it.candidates if k.startswith("other"))
    # picked: c0#1 4 true + 1 false, c0#2 2 true, c1#2 4, c2#1 4, c2#2 4 (c1#1 unparseable)
    tp, picked, true_total = 4 + 2 + 4 + 4 + 4, 5 + 2 + 4 + 4 + 4, 4 * 5
    assert summary["n"] == 5 and summary["invalid"] == 1
    assert summary["precision"] == pytest.approx(round(tp / picked, 6))
    assert summary["recall"] == pytest.approx(round(tp / true_total, 6))
    assert summary["picked_rate"]["negation"] == 0.25  # shown in 4 parsed items, picked once
    assert summary["picked_rate"]["other"] == 0.0
    assert summary["llm_distractors"] == {"negation": 5, "contradiction": 6}
    # the same seed shows the same candidates in the same order
    _, again = asyncio.run(F.run_faithfulness(convs, convs, BackendClient(FakeBackend(judge)), seed=3))
    assert [it.candidates for it in again] == [it.candidates for it in items]


def test_faithfulness_aggregate_known_values() -> None:
    c = _faith_data()[0]
    it = F.FaithItem(c, 1, ["t1", "t2"], [])
    it.candidates = [("t1", "true"), ("t2", "true"), ("n", "negation"), ("o", "other")]
    it.picked = [0, 2, 3]
    agg = F.aggregate([it])
    assert (agg["precision"], agg["recall"]) == (round(1 / 3, 6), 0.5)
    assert agg["f1"] == pytest.approx(round(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), 6))


# ---- toxicity -------------------------------------------------------------------------------------


def test_toxicity_rate_with_scripted_judge() -> None:
    convs = _faith_data()
    replies = {
        "c0": '{"label": "toxic", "rationale": "insults"}',
        "c1": '{"label": "safe", "rationale": "fine"}',
        "c2": "???",
    }
    backend = FakeBackend(lambda r: replies[r.metadata["id"]])
    summary, verdicts = asyncio.run(run_toxicity(convs, BackendClient(backend)))
    assert summary == {"rate": 0.5, "toxic": 1, "n": 2, "abstain": 1}
    assert [v.decision for v in verdicts] == ["reject", "pass", "abstain"]
    assert all(r.params.temperature == 0.0 for r in backend.requests)


# ---- the suite ------------------------------------------------------------------------------------


def _write_jsonl(path: Path, convs: list[Conversation]) -> Path:
    path.write_text("".join(c.model_dump_json() + "\n" for c in convs), encoding="utf-8")
    return path


def test_judge_sample_is_seeded_and_ordered() -> None:
    convs = [conv(f"c{i}", [], [], ["a", "b"]) for i in range(10)]
    s = judge_sample(convs, 4, seed=1)
    assert len(s) == 4 and s == judge_sample(convs, 4, seed=1)
    assert [c.id for c in s] == sorted((c.id for c in s), key=lambda x: int(x[1:]))
    assert judge_sample(convs, None, 0) == convs


def test_evaluate_without_judge(tmp_path: Path) -> None:
    gens, refs = _turing_data()
    data = _write_jsonl(tmp_path / "gen.jsonl", gens)
    ref = _write_jsonl(tmp_path / "ref.jsonl", refs)
    out = tmp_path / "out"
    metrics = asyncio.run(evaluate(data, ref, out, judge=None))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["conversations"] == 6
    for key in ("empty", "blank_lines", "unprefixed", "placeholders", "same_speaker"):
        assert isinstance(saved["defects"][key], int)
    for key in ("distinct_1", "distinct_2", "distinct_3"):
        assert isinstance(saved[key], float)
    assert set(saved["ir_hits_at_1"]) >= {"with_persona", "without_persona"}
    assert saved["reference"]["conversations"] == 5
    assert "generated->reference" in saved["ir_transfer"]
    assert saved["turing"] is None and saved["faithfulness"] is None and saved["toxicity"] is None
    assert saved["persona_coverage"] is None  # no embedder
    assert metrics["conversations"] == 6
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "not run: no judge" in html


def test_evaluate_with_fake_judge_and_run_dir(tmp_path: Path) -> None:
    gens, refs = _turing_data()
    run = tmp_path / "run"
    (run / "iterations" / "1").mkdir(parents=True)
    _write_jsonl(run / "conversations.jsonl", gens)
    _write_jsonl(run / "iterations" / "1" / "candidates.jsonl", gens + gens[:3])
    _write_jsonl(run / "iterations" / "1" / "selected.jsonl", gens)
    verdicts = [
        {"conversation_id": "g0", "expert": "toxicity", "decision": "reject", "rationale": ""},
        {"conversation_id": "g1", "expert": "depth", "decision": "win", "rationale": "", "opponent_id": "g2"},
        {"conversation_id": "g2", "expert": "depth", "decision": "lose", "rationale": "", "opponent_id": "g1"},
    ]
    (run / "iterations" / "1" / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts) + "{cut\n")
    (run / "stats.json").write_text(json.dumps({"llm": {"calls": 3}, "stages": {"x": {"wall_s": 1.0}}}))
    ref = _write_jsonl(tmp_path / "ref.jsonl", refs)
    info = load_run_info(run)  # read line by line: a 20k-pair round's files are hundreds of MB
    assert info is not None and info.unreadable_lines == 1
    assert info.iterations == {1: {"candidates": 9, "kept": 6, "rejected": {"toxicity": 1}}}
    assert info.verdicts == {"toxicity": {"reject": 1}, "depth": {"win": 1, "lose": 1}}

    def judge(req: ChatRequest) -> str:
        stage = req.metadata["stage"]
        if stage == "evaluate.turing":
            return '{"machine_written": "A"}'
        if stage.startswith("evaluate.faithfulness."):
            return '{"statement": "I dislike everything."}'
        if stage == "evaluate.faithfulness":
            return '{"belongs": [1, 2]}'
        return '{"label": "safe", "rationale": "ok"}'

    metrics = asyncio.run(evaluate(run, ref, run, BackendClient(FakeBackend(judge)), limit=4, seed=2))
    assert metrics["judged_conversations"] == 4
    assert metrics["turing"]["n"] == 4 and metrics["turing"]["tie"] == 1.0
    assert metrics["faithfulness"]["n"] == 8
    assert metrics["toxicity"] == {"rate": 0.0, "toxic": 0, "n": 4, "abstain": 0}
    for name in ("turing", "faithfulness", "toxicity"):
        assert len((run / "judge" / f"{name}.jsonl").read_text().splitlines()) in (4, 8)
    html = (run / "report.html").read_text()
    assert 'alt="critic verdict distribution by expert"' in html
    assert 'alt="kept and rejected candidates per iteration"' in html
    assert "candidates rejected by" in html and "toxicity: 1" in html
    # rebuild from metrics.json + run files
    (run / "report.html").unlink()
    path = build_report(run)
    assert path == run / "report.html" and path.read_text().count("data:image/png;base64,") >= 6


def test_a_large_dataset_is_measured_on_a_seeded_sample_and_counted_whole(tmp_path: Path) -> None:
    # 30 conversations, every third with a defect (same speaker twice): the counts cover all 30, the
    # corpus metrics a seeded sample of 8, the same on a re-run, and the report says so.
    convs = [conv(f"c{i}", ["p"], ["q"], [f"hello {i}", f"reply {i}", "more words"]) for i in range(30)]
    for i in range(0, 30, 3):
        convs[i] = convs[i].model_copy(update={"turns": [Turn(speaker=1, text="a"), Turn(speaker=1, text="b")]})
    data = _write_jsonl(tmp_path / "big.jsonl", convs)
    first = asyncio.run(evaluate(data, data, tmp_path / "a", judge=None, metrics_sample=8))
    again = asyncio.run(evaluate(data, None, tmp_path / "b", judge=None, metrics_sample=8))
    whole = asyncio.run(evaluate(data, None, tmp_path / "c", judge=None, metrics_sample=None))
    assert first["conversations"] == whole["conversations"] == 30
    assert first["defects"]["same_speaker"] == first["defects"]["any"] == whole["defects"]["any"] == 10
    assert first["metrics_sample"] == first["reference"]["metrics_sample"] == 8 and whole["metrics_sample"] is None
    assert first["utterances"] < whole["utterances"]
    assert (first["distinct_2"], first["utterances"]) == (again["distinct_2"], again["utterances"])
    assert "seeded sample of each large dataset (data: 8 of 30; reference: 8 of 30)" in (
        tmp_path / "a" / "report.html").read_text()


def test_run_dir_with_no_conversations_still_gets_a_report(tmp_path: Path) -> None:
    (tmp_path / "conversations.jsonl").write_text("")
    (tmp_path / "stats.json").write_text(json.dumps({"llm": {"calls": 1}, "failures": {"no_candidate_survived": 2}}))
    metrics = asyncio.run(evaluate(tmp_path, None, tmp_path, judge=None))
    assert metrics["conversations"] == 0 and metrics["ir_hits_at_1"]["with_persona"] is None
    assert "no_candidate_survived" in (tmp_path / "report.html").read_text()


def test_build_report_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to report"):
        build_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{oops")
    with pytest.raises(InputError, match=r"metrics\.json"):
        build_report(tmp_path)


def test_evaluate_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"conversations\.jsonl"):
        asyncio.run(evaluate(tmp_path, None, tmp_path / "o", judge=None))
    with pytest.raises(InputError, match=r"missing\.jsonl"):
        asyncio.run(evaluate(tmp_path / "missing.jsonl", None, tmp_path / "o", judge=None))


def test_report_escapes_untrusted_text(tmp_path: Path) -> None:
    bad = conv("x<script>", ["<img src=x onerror=alert(1)>"], ["b"], ["<script>alert(1)</script>", "ok"])
    data = _write_jsonl(tmp_path / "<b>.jsonl", [bad])
    asyncio.run(evaluate(data, None, tmp_path / "o", judge=None))
    html = (tmp_path / "o" / "report.html").read_text()
    assert "<b>.jsonl" not in html and "&lt;b&gt;.jsonl" in html
    assert "<script" not in html
    assert not re.search(r"(?:src|href)=\"https?:", html)
