"""Resume never reuses another model's or another setting's work (issue 15 item 5), and sampling is
resolved in one place with a documented precedence (item 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from personaloom.config import GREEDY, build_config, dump_config
from personaloom.fingerprint import fingerprint
from personaloom.stages import expansion, pairing, profiles, sessions
from pipeline_server import cli_env

SETS = ("--set", "expand.new_attributes=4", "--set", "expand.bootstrap_steps=1",
        "--set", "expand.max_clusters_for_questions=4", "--set", "profiles.profiles=4")
SIZE = ("--pairs", "2", "--iterations", "1", "--candidates", "2")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "personaloom.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False, env=cli_env())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp") / "run"
    done = cli("run", "--backend", "fake", "--model", "model-a", "--out", str(out), *SETS, *SIZE)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize(
    ("command", "stage_line"),
    [("expand", "expand: up to date"), ("profiles", "profiles: up to date"), ("generate", "iteration 1: up to date")],
)
def test_another_model_recomputes_each_llm_stage(finished: Path, command: str, stage_line: str) -> None:
    same = cli(command, "--backend", "fake", "--model", "model-a", "--out", str(finished), *_flags(command))
    assert same.returncode == 0, same.stderr
    assert stage_line in same.stderr, same.stderr
    other = cli(command, "--backend", "fake", "--model", "model-b", "--out", str(finished), *_flags(command))
    assert other.returncode == 0, other.stderr
    assert stage_line not in other.stderr, other.stderr
    # Put it back for the next case (model-a's calls all come from the cache).
    back = cli(command, "--backend", "fake", "--model", "model-a", "--out", str(finished), *_flags(command))
    assert back.returncode == 0, back.stderr


def _flags(command: str) -> tuple[str, ...]:
    return (*SETS, *SIZE) if command == "generate" else SETS


def test_fingerprints_cover_backend_sampling_templates_and_settings() -> None:
    base = build_config(flags={"backend.kind": "fake", "backend.model": "a"})
    specs = [expansion.INPUTS, profiles.INPUTS, sessions.INPUTS]
    for spec in specs:
        fp = fingerprint(spec, base, "up")
        assert fingerprint(spec, base, "up") == fp
        assert fingerprint(spec, build_config(flags={"backend.kind": "fake", "backend.model": "b"}), "up") != fp
        assert fingerprint(spec, build_config(overrides=["sampling.top_k=null"], flags={"backend.kind": "fake",
                                                                         "backend.model": "a"}), "up") != fp
        assert fingerprint(spec, base, "other-upstream") != fp
        # Keys, timeouts and concurrency do not change a reply.
        same = build_config(overrides=["backend.concurrency=3", "backend.timeout_s=9"], flags={"backend.kind": "fake",
                                                                                "backend.model": "a"})
        assert fingerprint(spec, same, "up") == fp
    # An expert's own judge is part of the generate stage's identity.
    judged = build_config(overrides=["critic.experts.faithfulness.backend.kind=fake",
                           "critic.experts.faithfulness.backend.model=j"],
                          flags={"backend.kind": "fake", "backend.model": "a"})
    assert fingerprint(sessions.INPUTS, judged, "up") != fingerprint(sessions.INPUTS, base, "up")
    assert fingerprint(pairing.INPUTS, judged, "up") == fingerprint(pairing.INPUTS, base, "up")
    assert fingerprint(pairing.INPUTS, build_config(overrides=["pair.threshold=1"]), "up") != fingerprint(
        pairing.INPUTS, build_config(), "up")


def test_sampling_precedence_is_resolved_in_one_place() -> None:
    embedded = build_config()
    # The small model's generator default is visible in the resolved config...
    assert embedded.generate.temperature == 1.0
    assert embedded.sampling_for("generator").temperature == 1.0
    assert embedded.sampling_for("critic").temperature == 0.7
    # ...and sampling.temperature overrides it for every role, as a user expects.
    user = build_config(overrides=["sampling.temperature=0.2"])
    assert user.generate.temperature is None
    assert {user.sampling_for(r).temperature for r in ("generator", "critic", "expansion")} == {0.2}
    # The generator's own setting wins over the section; judges are always greedy.
    both = build_config(overrides=["sampling.temperature=0.2", "generate.temperature=0.9"])
    assert both.sampling_for("generator").temperature == 0.9 and both.sampling_for("critic").temperature == 0.2
    assert both.sampling_for("judge") == GREEDY
    # A server run gets the paper's settings everywhere.
    server = build_config(flags={"backend.kind": "openai", "backend.model": "m"})
    assert server.sampling_for("generator").temperature == 0.7 and server.sampling_for("generator").top_k == 40
    # Written into config.yaml (the run directory's resolved config) where the user can see it.
    assert yaml.safe_load(dump_config(embedded))["generate"]["temperature"] == 1.0
    assert yaml.safe_load(dump_config(user))["sampling"]["temperature"] == 0.2
