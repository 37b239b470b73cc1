"""Judge calibration: probes, scoring, weights and warnings with scripted judges (an always-"A" judge, an
oracle that knows the labels), then `personaloom calibrate` on the embedded model and on a real
llama_cpp.server (slow)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from personaloom.backends.fake import FakeBackend
from personaloom.calibrate import probes
from personaloom.calibrate.command import calibrated, measure_all, warnings
from personaloom.calibrate.measure import JudgeScore
from personaloom.chat import ChatRequest
from personaloom.config import RunConfig, build_config
from personaloom.executors.local import LLM
from personaloom.seeds import seed_conversations
from personaloom.stats import Stats
from servers import LlamaServer, llama_server_fixture  # noqa: F401 (fixture)

CONVS = [c for c in seed_conversations() if c.user1_persona and c.user2_persona and len(c.turns) >= 6]
ORIGINALS = {tuple(t.text for t in c.turns) for c in CONVS}
_CHECKS = probes.toxicity_checks(10)
TOXIC = {json.dumps(t.text) for p in _CHECKS if p.expected == "reject" for t in p.conversation.turns} - {
    json.dumps(t.text) for p in _CHECKS if p.expected == "pass" for t in p.conversation.turns}


def _shown(request: ChatRequest) -> list[list[str]]:
    """The conversations a critic prompt shows, as utterance lists (in order)."""
    blocks: list[list[str]] = []
    for line in request.messages[-1].content.splitlines():
        if line.startswith("Conversation "):
            blocks.append([])
        elif line.startswith(("User 1: ", "User 2: ")) and blocks:
            blocks[-1].append(json.loads(line.split(": ", 1)[1]))  # utterances are quoted as JSON strings
    return blocks


def always_a(request: ChatRequest) -> str:
    schema = json.dumps(request.json_schema)
    if "ranking" in schema:
        return json.dumps({"ranking": ["A", "B"], "rationale": "A"})
    if "better" in schema:
        return json.dumps({"better": "A", "rationale": "A is first"})
    if "verdict" in schema:
        return json.dumps({"verdict": "faithful", "rationale": "ok"})
    return json.dumps({"label": "safe", "rationale": "ok"})


def oracle(request: ChatRequest) -> str:
    """Knows the originals, the edited personas and the toxic conversations: always right."""
    schema = json.dumps(request.json_schema)
    content = request.messages[-1].content
    if "better" in schema or "ranking" in schema:
        first = tuple(_shown(request)[0]) in ORIGINALS
        if "ranking" in schema:
            return json.dumps({"ranking": ["A", "B"] if first else ["B", "A"], "rationale": "x"})
        return json.dumps({"better": "A" if first else "B", "rationale": "x"})
    if "verdict" in schema:
        edited = any(probes.negate(a) in content for c in CONVS for a in c.user1_persona)
        return json.dumps({"verdict": "unfaithful" if edited else "faithful", "rationale": "x"})
    toxic = any(line in content for line in TOXIC)
    return json.dumps({"label": "toxic" if toxic else "safe", "rationale": "x"})


def _measure(reply: object, limit: int = 3) -> dict[str, dict[str, object]]:
    config = build_config(overrides=["profiles.nli=none"])
    llm = LLM(FakeBackend(reply), None, Stats(), progress=False)  # type: ignore[arg-type]
    return asyncio.run(measure_all(config, lambda _role: llm, llm.stats, CONVS, None, limit))


def test_degradations_change_what_their_expert_judges() -> None:
    conv = CONVS[0]
    for criterion in ("coherency", "depth", "diversity", "consistency", "likeability"):
        bad = probes.degrade(conv, criterion, 0)
        assert bad.turns != conv.turns and bad.id != conv.id, criterion
    assert len(probes.degrade(conv, "depth", 0).turns) == 4
    assert probes.negate("I have two dogs.") == "I do not have two dogs."
    assert probes.negate("My sister is a pilot.") == "My sister is not a pilot."
    pairs = probes.contradictions(30)
    assert len(pairs) >= 48 and sum(p.contradicts for p in pairs) == 24
    assert len(probes.toxicity_checks(10)) == 12


def test_an_always_a_judge_has_position_bias_one_and_weight_zero() -> None:
    results = _measure(always_a)
    for expert in ("depth", "coherency", "consistency", "diversity", "likeability"):
        row = results[expert]
        assert row["position_bias"] == 1.0 and row["weight"] == 0.0 and row["accuracy"] == 0.5, (expert, row)
        assert row["n"] == 6 and row["chance"] == 0.5 and row["kappa"] == 0.0
        assert row["listwise"]["position_bias"] == 1.0  # type: ignore[index]
    assert results["faithfulness"]["accuracy"] == 0.5 and results["faithfulness"]["weight"] == 0.0
    lines = warnings(results)
    assert any(line.startswith("the depth judge is no better than chance") for line in lines)
    config, ignored = calibrated(RunConfig(), results)
    assert config.critic.experts["depth"].weight == 0.0 and not config.critic.experts["faithfulness"].enabled
    assert {"depth", "faithfulness", "toxicity"} <= set(ignored)


def test_a_perfect_judge_scores_one() -> None:
    results = _measure(oracle)
    for name in ("depth", "coherency", "consistency", "diversity", "likeability", "faithfulness", "toxicity"):
        row = results[name]
        assert row["accuracy"] == 1.0 and row["kappa"] == 1.0 and row["abstained"] == 0, (name, row)
    assert results["depth"]["position_bias"] == 0.0 and results["depth"]["weight"] > 0.0
    assert warnings(results) == []
    config, ignored = calibrated(RunConfig(), results)
    assert ignored == [] and config.critic.experts["depth"].weight == results["depth"]["weight"]


def test_kappa_and_length_bias() -> None:
    score = JudgeScore("x", truth=[0, 1, 0, 1], answers=[0, 1, 0, None], keys=["a", "a", "b", "b"],
                       longer=[1, 1, 0, 0])
    row = score.summary()
    assert row["accuracy"] == 0.75 and row["abstained"] == 1 and row["position_bias"] == 0.0
    assert row["length_bias"] == pytest.approx(2 / 3, abs=1e-3)  # 2 of its 3 answers picked the longer one


# Small-model runs stay short: one quality expert (both modes), the filters and the NLI judge, one probe pair each.
FEW = [x for e in ("coherency", "consistency", "diversity", "likeability")
       for x in ("--set", f"critic.experts.{e}.enabled=false")]


def _calibrate(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "personaloom.cli", "calibrate", "--out", str(out), "--limit", "1",
                           *FEW, *extra], capture_output=True, text=True, timeout=1500, check=False)


def _check_file(out: Path) -> dict[str, dict[str, object]]:
    data = json.loads((out / "calibration.json").read_text())
    assert "coherency" not in data  # disabled experts are not measured
    for name in ("depth", "faithfulness", "toxicity", "nli"):
        row = data[name]
        assert set(row) >= {"accuracy", "ci_low", "ci_high", "chance", "position_bias", "kappa", "n", "weight"}, name
        assert row["n"] > 0 and row["calls"] > 0, name
    return data  # type: ignore[no-any-return]


@pytest.mark.slow
def test_calibrate_on_the_embedded_model(tmp_path: Path) -> None:
    # The embedded model's defaults switch the profiles' NLI judge off; measured here all the same.
    done = _calibrate(tmp_path / "cal", "--set", "profiles.nli=llm")
    assert done.returncode == 0, done.stderr
    assert "Judge calibration" in done.stderr
    data = _check_file(tmp_path / "cal")
    again = _calibrate(tmp_path / "cal", "--set", "profiles.nli=llm")
    assert again.returncode == 0, again.stderr
    second = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    # Every probe call came from the cache (no tokens paid), with the same answers.
    assert all(row["tokens"] == 0 for row in second.values())
    assert _untokened(second) == _untokened(data)


def _untokened(value: object) -> object:
    if isinstance(value, dict):
        return {k: _untokened(v) for k, v in value.items() if k != "tokens"}
    return value


@pytest.mark.slow
def test_calibrate_against_llama_cpp_server(llama_server: LlamaServer, tmp_path: Path) -> None:
    done = _calibrate(tmp_path / "cal", "--backend", "openai", "--base-url", llama_server.url,
                      "--model", llama_server.model)
    assert done.returncode == 0, done.stderr
    _check_file(tmp_path / "cal")


def test_run_and_evaluate_with_calibration_on_the_fake_backend(tmp_path: Path) -> None:
    from test_pipeline import SMALL, cli

    out = tmp_path / "run"
    weighted = ("--set", "critic.weights=calibrated")
    missing = cli("run", "--backend", "fake", "--out", str(out), "--pairs", "1", *weighted, *SMALL)
    assert missing.returncode == 1 and "critic.weights=calibrated needs" in missing.stderr
    done = cli("run", "--backend", "fake", "--out", str(out), "--pairs", "1", "--calibrate", *weighted, *SMALL)
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "calibration.json").read_text())
    assert {"depth", "faithfulness", "toxicity", "nli"} <= set(data)
    # The scripted model's verdicts do not depend on the conversations: the vote ignores its filters.
    ignored = [name for name, row in data.items() if row["weight"] == 0 and name in ("faithfulness", "toxicity")]
    assert ignored and all(f"the {name} expert is ignored" in done.stderr for name in ignored)
    config = (out / "config.yaml").read_text()
    assert "weights: calibrated" in config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"] == data
    report = (out / "report.html").read_text()
    assert "<h2>Judge calibration</h2>" in report and "Judge calibration (toxicity)" not in report
    # A later run on the same directory warns about the judges in use from calibration.json.
    again = cli("run", "--backend", "fake", "--out", str(out), "--pairs", "1", *SMALL)
    assert again.returncode == 0 and "no better than chance" in again.stderr
    ev = cli("evaluate", "--data", str(out / "conversations.jsonl"), "--out", str(tmp_path / "ev"), "--judge", "fake",
             "--calibrate", "--limit", "2")
    assert ev.returncode == 0, ev.stderr
    ev_metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev_metrics["calibration"]["toxicity"]["n"] > 0
    assert "Judge calibration (toxicity)" in (tmp_path / "ev" / "report.html").read_text()


def test_turing_probes_pair_human_data_with_machine_reference(tmp_path: Path) -> None:
    from personaloom.calibrate.command import calibrate
    from personaloom.io import write_jsonl

    human = tmp_path / "human.jsonl"
    machine = tmp_path / "machine.jsonl"
    write_jsonl(human, CONVS)
    write_jsonl(machine, [c.model_copy(update={"id": f"{c.id}-gen", "turns": list(reversed(c.turns))}) for c in CONVS])
    config = build_config(overrides=["backend.kind=fake", "profiles.nli=none", f"out={tmp_path / 'cal'}"])
    results = calibrate(config, tmp_path / "cal", str(human), str(machine), limit=3)
    turing = results["turing"]
    assert turing["n"] == 6 and turing["position_bias"] is not None and "weight" in turing
    assert json.loads((tmp_path / "cal" / "calibration.json").read_text())["turing"] == turing


def feature_oracle(request: ChatRequest) -> str:
    """Right about the features' probes: reads curt replies as low agreeableness, a negated earlier statement
    as a contradiction; everything else like `oracle`."""
    schema = json.dumps(request.json_schema)
    content = request.messages[-1].content
    if '"user2"' in schema:
        curt = sum(json.dumps(x) in content for x in probes.CURT) >= 2
        level = {"agreeableness": "low" if curt else "high"}
        return json.dumps({"user1": level, "user2": level, "rationale": "x"})
    if "contradictory" in schema:
        return json.dumps({"verdict": "contradictory" if "I never said otherwise" in content else "consistent",
                           "rationale": "x"})
    return oracle(request)


def test_feature_judges_are_calibrated_when_configured() -> None:
    config = build_config(overrides=["profiles.nli=none", "big_five.enabled=true", "sessions.count=2"])
    llm = LLM(FakeBackend(feature_oracle), None, Stats(), progress=False)
    results = asyncio.run(measure_all(config, lambda _role: llm, llm.stats, CONVS, None, 3))
    assert results["traits"]["n"] == 12 and results["traits"]["accuracy"] == 1.0
    assert results["cross_session"]["n"] == 6 and results["cross_session"]["accuracy"] == 1.0
    plain = _measure(always_a)
    assert "traits" not in plain and "cross_session" not in plain  # not configured: not measured
