"""Persona collections as seed data (issue 16 item 4): PersonaHub / FinePersonas descriptions and
Nemotron-Personas records, in JSONL, CSV and Parquet, auto-detected or forced with --format; a run seeded
from a 1,000-line description file works end to end on the fake backend, a loopback server and the
embedded model. The sample files are written here (no dataset is copied)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from personaloom.errors import InputError
from personaloom.io.personas import DESCRIPTIONS, RECORDS, iter_personas, persona_kind, sample_personas
from personaloom.stages.describe import from_description, parse_statements
from pipeline_server import cli_env, demo_server, read_jsonl

ROLES = ["retired nurse", "software engineer", "high school teacher", "chef", "farmer", "librarian", "pilot",
         "graphic designer", "firefighter", "marine biologist", "carpenter", "jazz musician"]
DOINGS = ["volunteers at an animal shelter", "collects vintage maps", "runs marathons", "grows orchids",
          "restores old bikes", "writes poetry at night", "coaches a youth soccer team", "loves birdwatching"]


def descriptions_file(path: Path, n: int = 1000) -> Path:
    rnd = random.Random(3)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            role, doing = rnd.choice(ROLES), rnd.choice(DOINGS)
            article = "An" if role[0] in "aeiou" else "A"
            fh.write(json.dumps({"id": f"ph-{i}", "persona": f"{article} {role} who {doing}."}) + "\n")
    return path


def records_rows() -> list[dict[str, object]]:
    return [
        {"uuid": "n1", "age": 34, "sex": "Female", "occupation": "registered_nurse", "city": "Austin",
         "state": "TX", "marital_status": "never_married", "education_level": "bachelors",
         "hobbies_and_interests": "She grows tomatoes and plays chess on weekends.",
         "big_five": {"openness": 80, "conscientiousness": 60, "extraversion": 20, "agreeableness": 90,
                      "neuroticism": 30}},
        {"uuid": "n2", "age": 61, "sex": "Male", "occupation": "carpenter", "city": "Duluth", "state": "MN",
         "marital_status": "married", "education_level": "high_school",
         "hobbies_and_interests": "He builds canoes and fishes on Lake Superior."},
    ]


def test_descriptions_are_detected_and_streamed(tmp_path: Path) -> None:
    path = descriptions_file(tmp_path / "personas.jsonl", 300)
    assert persona_kind(path) == DESCRIPTIONS
    first = next(iter_personas(path))
    assert first.id == "ph-0" and first.text.startswith("A") and first.attributes == []
    picked = sample_personas(path, 20, seed=1)
    assert len(picked) == 20 and [p.line for p in picked] == sorted(p.line for p in picked)
    assert picked == sample_personas(path, 20, seed=1) and picked != sample_personas(path, 20, seed=2)
    # The same collection as CSV and as Parquet.
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    csv_path = tmp_path / "personas.csv"
    csv_path.write_text("id,persona\n" + "".join(f'{r["id"]},"{r["persona"]}"\n' for r in rows), encoding="utf-8")
    assert persona_kind(csv_path) == DESCRIPTIONS and len(list(iter_personas(csv_path))) == 300
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq_path = tmp_path / "personas.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pq_path)
    assert persona_kind(pq_path) == DESCRIPTIONS
    assert [p.text for p in iter_personas(pq_path)] == [p.text for p in iter_personas(path)]


def test_structured_records_give_attributes_and_traits(tmp_path: Path) -> None:
    path = tmp_path / "nemotron.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records_rows()), encoding="utf-8")
    assert persona_kind(path) == RECORDS
    nurse, carpenter = iter_personas(path)
    assert nurse.attributes == ["I am 34 years old.", "I work as a registered nurse.", "I live in Austin, TX.",
                                "I have never been married.", "My highest level of education is bachelors."]
    assert "tomatoes" in nurse.text
    assert nurse.traits == {"openness": 0.8, "conscientiousness": 0.6, "extraversion": 0.2, "agreeableness": 0.9,
                            "neuroticism": 0.3}
    assert carpenter.traits is None and "I work as a carpenter." in carpenter.attributes


def test_statement_parsing_and_the_description_fallback() -> None:
    assert from_description("A retired nurse who volunteers at an animal shelter.", 20) == (
        "I am a retired nurse who volunteers at an animal shelter.")
    assert from_description("Loves dogs and long walks", 20) is None
    kept, dropped = parse_statements("1. I have two dogs.\n- My father was a fisherman.\nWhat do you do?\n"
                                     "I am [name].\nI have two dogs.", 20)
    assert kept == ["I have two dogs.", "My father was a fisherman."]
    assert dropped["not_i_my"] + dropped["placeholder"] + dropped["question"] >= 2


def test_bad_collections_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"persona": "A chef."}\nnot json\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl:2: not a JSON object per line"):
        list(iter_personas(bad))
    empty_text = tmp_path / "e.jsonl"
    empty_text.write_text('{"persona": "A chef."}\n{"persona": ""}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"e.jsonl:2: no persona text"):
        list(iter_personas(empty_text))


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "personaloom.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=cli_env())


SMALL = ("--pairs", "2", "--iterations", "1", "--candidates", "2", "--set", "expand.new_attributes=4",
         "--set", "expand.bootstrap_steps=1", "--set", "expand.max_clusters_for_questions=4",
         "--set", "expand.personas=12", "--set", "pair.threshold=0")


def check_persona_run(out: Path, n_personas: int = 12) -> None:
    personas = read_jsonl(out / "personas.jsonl")
    assert 0 < len(personas) <= n_personas and all(p["source"] == "persona" and p["attributes"] for p in personas)
    profiles = read_jsonl(out / "profiles.jsonl")
    assert profiles and profiles[0]["id"] == personas[0]["id"]
    attributes = {a["text"] for a in read_jsonl(out / "attributes.jsonl")}
    assert all(t in attributes for p in personas for t in p["attributes"])
    convs = read_jsonl(out / "conversations.jsonl")
    assert convs and all(c["turns"] for c in convs)
    persona_texts = {" | ".join(p["attributes"][:5]) for p in personas}
    assert any(" | ".join(c["user1_persona"]) in persona_texts for c in convs), "personas become the profiles"


@pytest.mark.slow
def test_run_seeded_from_1000_descriptions_fake_and_loopback(tmp_path: Path) -> None:
    path = descriptions_file(tmp_path / "personahub.jsonl")
    out = tmp_path / "fake"
    done = cli("run", "--backend", "fake", "--seed-data", str(path), "--out", str(out), *SMALL)
    assert done.returncode == 0, done.stderr[-2000:]
    check_persona_run(out)
    with demo_server() as server:
        srv_out = tmp_path / "loopback"
        done = cli("run", "--backend", "openai", "--base-url", server.url, "--model", "m", "--seed-data", str(path),
                   "--out", str(srv_out), *SMALL)
    assert done.returncode == 0, done.stderr[-2000:]
    check_persona_run(srv_out)
    # Forced format, structured records with Big Five scores: traits reach the profiles.
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in records_rows() * 3), encoding="utf-8")
    rec_out = tmp_path / "records"
    done = cli("run", "--backend", "fake", "--seed-data", str(records), "--format", "persona-records",
               "--out", str(rec_out), *SMALL, "--set", "profiles.profiles=5")
    assert done.returncode == 0, done.stderr[-2000:]
    personas = read_jsonl(rec_out / "personas.jsonl")
    assert personas[0]["traits"]["openness"] == 0.8 and "I am 34 years old." in personas[0]["attributes"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_seeded_from_descriptions_on_the_embedded_model(tmp_path: Path) -> None:
    path = descriptions_file(tmp_path / "personahub.jsonl")
    out = tmp_path / "run"
    done = cli("run", "--seed-data", str(path), "--out", str(out), "--pairs", "2", "--iterations", "1",
               "--candidates", "2", "--set", "expand.personas=6", "--set", "expand.new_attributes=2",
               "--set", "expand.bootstrap_steps=0", "--set", "expand.max_clusters_for_questions=2",
               "--set", "pair.threshold=0", "--set", "critic.mode=listwise", "--set", "generate.max_tokens=200",
               "--set", "generate.few_shot=2", timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    personas = read_jsonl(out / "personas.jsonl")
    assert len(personas) == 6 and all(p["attributes"][0].startswith("I am a") for p in personas)
    candidates = read_jsonl(out / "iterations" / "1" / "candidates.jsonl")
    assert candidates and any(c["turns"] for c in candidates)
