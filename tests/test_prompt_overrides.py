"""Prompt overrides (`prompts.dir`, `--prompts DIR`): a broken replacement template is one line naming the file and
line before any request reaches the server; a replaced Generator template is what the Generator's requests carry;
a changed template recomputes the stages that render it and nothing upstream; `personaloom prompts list/show/copy`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import personaloom as pl
from personaloom import prompts
from personaloom.prompts import catalog
from pipeline_server import cli_env, demo_server
from test_api import fake_run
from test_credentials import ONE_PAIR

MARKER = "Mention the weather at least once."


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "personaloom.cli", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=cwd, timeout=300, check=False)


def with_marker(folder: Path) -> Path:
    """`folder` holding generator.j2 as shipped plus one more rule (the demo model still answers it)."""
    catalog.copy(folder, ["generator.j2"])
    path = folder / "generator.j2"
    path.write_text(path.read_text() + f"\n- {MARKER}\n")
    return folder


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("generatr.j2", "Hi", "generatr.j2: no shipped template is called generatr.j2 (did you mean generator.j2?)"),
    ("generator.j2", "Write {{ min_utterances }} lines.\n{% if met_before %}\nAgain.\n",
     "generator.j2:3: Unexpected end of template"),
    ("generator_pair.j2", "{{ user1 | persona_block }}\nAbout {{ scenrio }}.",
     "generator_pair.j2:2: generator_pair.j2 receives no variable 'scenrio' (did you mean 'scenario'?); it "
     "receives: language, scenario, scenario_fields, session, style1, style2, user1, user2"),
    ("critic_depth.j2", "{% extends 'critic_qualty.j2' %}", "uses template 'critic_qualty.j2'"),
])
def test_a_broken_template_is_one_line_before_any_request(tmp_path: Path, name: str, text: str,
                                                          expected: str) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_text(text)
    with demo_server() as server:
        result = cli("run", "--backend", "openai", "--base-url", server.url, "--model", "m", "--out", "out",
                     "--prompts", "mine", *ONE_PAIR, cwd=tmp_path)
        assert server.stats()["total"] == 0  # nothing paid
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"personaloom: error: mine/{name}") and expected in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_missing_folder_and_the_python_api_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(pl.ConfigError, match=r"prompts.dir: .*nowhere is not a folder .*prompts copy"):
        fake_run(tmp_path / "out", prompts=str(tmp_path / "nowhere"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "nli.j2").write_text("{{ premise }} / {{ hypothesis }} / {{ premis }}")
    with pytest.raises(pl.ConfigError, match=r"nli.j2:1: nli.j2 receives no variable 'premis' \(did you mean "
                                             r"'premise'\?\)"):
        fake_run(tmp_path / "out", prompts=str(tmp_path / "mine"))
    assert not (tmp_path / "out" / "cache.sqlite").exists()


def test_the_generator_requests_carry_the_replaced_template(tmp_path: Path) -> None:
    with_marker(tmp_path / "mine")
    with demo_server(keep_bodies=True) as server:
        result = cli("run", "--backend", "openai", "--base-url", server.url, "--model", "m", "--out", "out",
                     "--prompts", "mine", *ONE_PAIR, cwd=tmp_path)
        bodies = list(server.bodies)
    assert result.returncode == 0, result.stderr
    kept = [json.loads(line) for line in (tmp_path / "out" / "conversations.jsonl").read_text().splitlines()]
    assert kept
    systems = [b["messages"][0]["content"] for b in bodies if b["messages"][0]["role"] == "system"]
    generator = [s for s in systems if s.startswith("You write realistic chat conversations")]
    assert generator and all(s.endswith(MARKER) for s in generator)
    assert sum(MARKER in json.dumps(b) for b in bodies) == len(generator)  # no other stage's prompt changed
    assert "mine" in (tmp_path / "out" / "config.yaml").read_text()


def test_a_changed_template_recomputes_generate_only(tmp_path: Path) -> None:
    out, mine = tmp_path / "out", tmp_path / "mine"
    catalog.copy(mine)  # the shipped templates, unchanged: the same run as without the folder
    first_calls = fake_run(out).stats.latest.calls
    state = json.loads((out / "state.json").read_text())["done"]
    same = fake_run(out, prompts=str(mine))
    assert same.stats.latest.calls == 0 and json.loads((out / "state.json").read_text())["done"] == state
    # Edited in place between two runs of one process (as in a notebook): generate is recomputed, with the edit.
    path = mine / "generator.j2"
    path.write_text(path.read_text() + f"\n- {MARKER}\n")
    changed = fake_run(out, prompts=str(mine))
    after = json.loads((out / "state.json").read_text())["done"]
    assert {k for k in state if after[k] != state[k]} == {"generate.1"}  # its one iteration
    stages = changed.stats.stages
    assert stages["generate"]["calls"] > 0
    assert not any(stages.get(s, {}).get("calls") for s in stages if s.startswith(("expand", "profiles")))
    # Only the Generator's requests are new: the Critic's requests for candidates it judged before (the demo model
    # writes the same ones) came from the cache.
    assert changed.stats.latest.calls == stages["generate"]["calls"] < first_calls
    assert changed.stats.latest.cache_hits > 0
    assert prompts.source("generator.j2") == prompts.shipped("generator.j2")  # nothing left in effect


def test_prompts_list_show_and_copy(tmp_path: Path) -> None:
    listed = cli("prompts", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in listed.stdout.splitlines()}
    assert set(rows) == set(prompts.names()) and len(rows) >= 37
    assert rows["generator.j2"] == ["generate", "instructions, language, max_utterances, met_before, min_utterances"]
    assert rows["nli.j2"] == ["profiles", "hypothesis, premise"]
    assert rows["judge_turing.j2"][0] == "evaluate,calibrate"
    shown = cli("prompts", "show", "generator.j2", cwd=tmp_path)
    assert shown.stdout.strip() == prompts.shipped("generator.j2").strip()
    wrong = cli("prompts", "show", "generater.j2", cwd=tmp_path)
    assert wrong.returncode == 1 and "did you mean generator.j2?" in wrong.stderr
    copied = cli("prompts", "copy", "mine", cwd=tmp_path)
    assert copied.returncode == 0 and sorted(p.name for p in (tmp_path / "mine").iterdir()) == prompts.names()
    assert catalog.check(tmp_path / "mine") == prompts.names()  # every shipped template passes its own check
