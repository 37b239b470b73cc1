"""Scenarios and the three recipes of examples/: scenario files and their errors, seeded balanced assignment,
`scenarios: auto` (cached, near-duplicates dropped, counted), every example end to end on the fake backend and
against a loopback server (the Generator told the scenario, its fields and the instructions; the record, the HF
column, the SPC CSV column, the card and the report), the scenario expert rejecting an off-scenario candidate
and calibrated, and one example on the embedded model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import personaloom as pl
from personaloom.records import Pair, Scenario
from personaloom.stages.scenarios import assign, read_scenarios
from pipeline_server import cli_env, demo_reply, demo_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("customer_support", "french_tutoring", "topics")
# Small upstream stages: the examples' own generate settings stay as written.
SMALL: dict[str, Any] = {"expand": {"new_attributes": 4, "bootstrap_steps": 1}}
GENERATOR = "You write realistic chat conversations"


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "personaloom.cli", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=cwd, timeout=1200, check=False)


def test_assignment_is_seeded_and_balanced() -> None:
    pairs = [Pair(id=f"p{i}", user1_persona=["I run."], user2_persona=["I swim."]) for i in range(11)]
    scenarios = [Scenario(id=f"s{i}", text=f"scenario {i}") for i in range(4)]
    got = assign(pairs, scenarios, seed=7)
    counts = Counter(p.scenario.text for p in got if p.scenario)
    assert sum(counts.values()) == 11 and max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 4
    assert [p.scenario for p in assign(pairs, scenarios, seed=7)] == [p.scenario for p in got]
    assert [p.scenario for p in assign(pairs, scenarios, seed=8)] != [p.scenario for p in got]
    assert assign(pairs, [], seed=7) == pairs


def test_scenario_files_and_their_errors(tmp_path: Path) -> None:
    txt = tmp_path / "s.txt"
    txt.write_text("# support cases\nA late parcel.\n\nA double charge.\n")
    assert [s.text for s in read_scenarios(txt)] == ["A late parcel.", "A double charge."]
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text('{"scenario": "A late parcel.", "product": "grinder"}\n{"scenario": "A refund."}\n')
    found = read_scenarios(jsonl)
    assert found[0].fields == {"product": "grinder"} and found[1].fields is None
    shipped = read_scenarios(ROOT / "examples" / "support_scenarios.csv")
    assert len(shipped) == 4 and shipped[0].fields == {"product": "coffee grinder", "channel": "chat"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scenario": "ok"}\n{"scenario": \n')
    with pytest.raises(pl.InputError, match=r"bad.jsonl:2: not JSON"):
        read_scenarios(bad)
    nocol = tmp_path / "bad.csv"
    nocol.write_text("situation,product\nA late parcel.,grinder\n")
    with pytest.raises(pl.InputError, match=r'bad.csv:1: no "scenario" column \(columns: situation, product\)'):
        read_scenarios(nocol)
    with pytest.raises(pl.InputError, match=r"nowhere.txt: cannot read the scenarios"):
        pl.run(SMALL, out=tmp_path / "out", backend="fake", progress=False,
               **{"generate.scenarios": str(tmp_path / "nowhere.txt")})


@pytest.fixture(scope="module")
def fake_examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.Run]:
    """Each example run on the fake backend through the Python API, from the repository root (the examples'
    file paths are relative to it)."""
    base = tmp_path_factory.mktemp("examples")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        runs = {}
        for name in EXAMPLES:
            config = pl.configure(ROOT / "examples" / f"{name}.yaml", **SMALL)
            runs[name] = pl.run(config, out=base / name, backend="fake", progress=False)
    for name, run in runs.items():  # for the closing note: what each example keeps, and for how many calls
        print(f"{name}: {run.stats.conversations} kept, {run.stats.total.calls} calls")
    return runs


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_runs_on_the_fake_backend(fake_examples: dict[str, pl.Run], name: str) -> None:
    run = fake_examples[name]
    out = run.out
    scenarios = {s["text"] for s in rows(out / "scenarios.jsonl")}
    kept = list(run.conversations())
    assert kept and all(c.scenario in scenarios for c in kept)
    # Every pair generated for got a scenario, balanced across them.
    candidates = [c for p in sorted(out.glob("iterations/*/candidates.jsonl")) for c in rows(p)]
    per_pair = {c["pair_id"]: c["scenario"] for c in candidates}
    counts = Counter(per_pair.values())
    assert set(counts) <= scenarios and max(counts.values()) - min(counts.values()) <= 1
    assert len(counts) == min(len(scenarios), len(per_pair))
    config = pl.configure(ROOT / "examples" / f"{name}.yaml")
    assert all(len(c.turns) >= config.generate.min_utterances for c in kept)
    if config.generate.max_utterances is not None:
        assert all(len(c.turns) <= config.generate.max_utterances for c in kept)
    # The record everywhere the dataset goes: the HF column, the SPC CSV column (read back), card and report.
    dataset = run.to_hf()
    assert "scenario" in dataset.column_names and set(dataset["scenario"]) <= scenarios
    with (out / "spc.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["scenario"] for r in table] == [c.scenario for c in kept]
    assert [c.scenario for c in pl.read(out / "spc.csv")] == [c.scenario for c in kept]
    card = (out / "README.md").read_text()
    assert "Conversations per scenario" in card and all(c.scenario and c.scenario[:40] in card for c in kept)
    report = (out / "report.html").read_text()
    assert "<h2>Scenarios</h2>" in report
    verdicts = [v for p in out.glob("iterations/*/verdicts.jsonl") for v in rows(p) if v["expert"] == "scenario"]
    assert len(verdicts) == len(candidates) - sum(1 for c in candidates if not c["turns"])


def test_auto_scenarios_are_counted_cached_and_deduplicated(fake_examples: dict[str, pl.Run], tmp_path: Path) -> None:
    stages = fake_examples["topics"].stats.stages
    counts = stages["scenarios"]
    assert counts["topics"] == 3 and counts["subtopics"] == 6 and counts["drafted"] == 12
    assert counts["scenarios"] == counts["drafted"] - counts["near_duplicates"] == len(
        rows(fake_examples["topics"].out / "scenarios.jsonl"))
    assert stages["scenarios.subtopics"]["calls"] == 3 and stages["scenarios.expand"]["calls"] == 6
    scenarios = rows(fake_examples["topics"].out / "scenarios.jsonl")
    assert {s["topic"] for s in scenarios} == {"home cooking on a budget", "training for a first marathon",
                                               "adopting a rescue dog"}
    # The same topic twice: its scenarios are drafted twice and the copies dropped as near-duplicates.
    twice = {"generate": {"scenarios": "auto", "topics": ["adopting a rescue dog", "adopting a rescue dog"],
                          "subtopics": 2, "scenarios_per_subtopic": 2, "pairs": 2, "iterations": 1}, **SMALL}
    first = pl.run(twice, out=tmp_path / "twice", backend="fake", progress=False)
    dropped = first.stats.stages["scenarios"]
    assert dropped["drafted"] == 8 and dropped["near_duplicates"] >= 4
    again = pl.run(twice, out=tmp_path / "twice", backend="fake", progress=False)
    assert again.stats.latest.calls == 0 and "scenarios.subtopics" not in again.stats.stages


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_against_a_loopback_server(tmp_path: Path, name: str) -> None:
    with demo_server(keep_bodies=True) as server:
        result = cli("run", "--config", f"examples/{name}.yaml", "--backend", "openai", "--base-url", server.url,
                     "--model", "m", "--out", str(tmp_path / "out"), "--set", "expand.new_attributes=4",
                     "--set", "expand.bootstrap_steps=1")
        bodies = list(server.bodies)
    assert result.returncode == 0, result.stderr
    kept = rows(tmp_path / "out" / "conversations.jsonl")
    assert kept and all(c.get("scenario") for c in kept)
    config = pl.configure(ROOT / "examples" / f"{name}.yaml")
    generator = [b["messages"] for b in bodies if b["messages"][0]["content"].startswith(GENERATOR)]
    assert generator
    for messages in generator:
        target = messages[-1]["content"]
        assert "What their conversation is about: " in target
        if config.generate.instructions:
            assert messages[0]["content"].endswith(config.generate.instructions)
        if name == "customer_support":
            assert 'product: "' in target and 'channel: "' in target


def off_scenario(first_pair: list[str]) -> Any:
    """The demo model, except that the first pair's Generator requests are answered as if no scenario was given."""

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages", [])
        if messages and messages[0]["content"].startswith(GENERATOR):
            target = messages[-1]["content"]
            if not first_pair:
                first_pair.append(target)
            if target == first_pair[0]:
                stripped = "\n".join(ln for ln in target.splitlines() if not ln.startswith("What their conversation"))
                return demo_reply({**body, "messages": [*messages[:-1], {**messages[-1], "content": stripped}]},
                                  index)
        return demo_reply(body, index)

    return reply


def test_the_scenario_expert_rejects_an_off_scenario_candidate_and_is_calibrated(tmp_path: Path) -> None:
    first: list[str] = []
    with demo_server(reply=off_scenario(first)) as server:
        result = cli("run", "--config", "examples/french_tutoring.yaml", "--backend", "openai", "--base-url",
                     server.url, "--model", "m", "--out", str(tmp_path / "out"), "--set", "expand.new_attributes=4",
                     "--set", "expand.bootstrap_steps=1", "--set", "generate.iterations=1")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    candidates = {c["id"]: c for p in out.glob("iterations/*/candidates.jsonl") for c in rows(p)}
    verdicts = [v for p in out.glob("iterations/*/verdicts.jsonl") for v in rows(p) if v["expert"] == "scenario"]
    off = [v for v in verdicts if not candidates[v["conversation_id"]]["turns"][0]["text"].startswith("I wanted")]
    on = [v for v in verdicts if v not in off]
    assert off and all(v["decision"] == "reject" for v in off)
    assert on and all(v["decision"] == "pass" for v in on)
    kept_pairs = {c["pair_id"] for c in rows(out / "conversations.jsonl")}
    assert not kept_pairs & {v["pair_id"] for v in off}
    # Calibrated on the run's own conversations: each with its scenario (pass) and with another's (reject).
    calibrated = cli("calibrate", "--backend", "fake", "--data", str(out), "--out", str(tmp_path / "cal"),
                     "--limit", "4")
    assert calibrated.returncode == 0, calibrated.stderr
    row = json.loads((tmp_path / "cal" / "calibration.json").read_text())["scenario"]
    assert row["n"] == 2 * len(kept_pairs) and row["accuracy"] == 1.0 and row["chance"] == 0.5


@pytest.mark.slow
def test_an_example_on_the_embedded_model_with_one_pair(tmp_path: Path) -> None:
    result = cli("run", "--config", "examples/customer_support.yaml", "--out", str(tmp_path / "out"),
                 "--pairs", "1", "--iterations", "1", "--candidates", "2", "--set", "expand.new_attributes=0",
                 "--set", "expand.bootstrap_steps=0", "--set", "expand.max_clusters_for_questions=2",
                 "--set", "profiles.profiles=4")
    assert result.returncode == 0, result.stderr
    candidates = [c for p in (tmp_path / "out").glob("iterations/*/candidates.jsonl") for c in rows(p)]
    texts = {s.text for s in read_scenarios(ROOT / "examples" / "support_scenarios.csv")}
    assert len(candidates) == 2 and all(c["scenario"] in texts for c in candidates)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    print(f"embedded customer_support: {stats['conversations']} kept, {stats['llm']['calls']} calls")
