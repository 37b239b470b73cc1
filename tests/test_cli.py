"""Every command of DESIGN.md §3 exists and has --help; errors are one line without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ("run", "expand", "profiles", "pair", "generate", "evaluate", "convert", "annotate", "report")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "personaloom.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_convert_real_persona_chat(tmp_path: Path, persona_chat_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    result = cli("convert", str(persona_chat_path), str(out))
    assert result.returncode == 0, result.stderr
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1000


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"\n', encoding="utf-8")
    result = cli("convert", str(bad), str(tmp_path / "o.csv"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.jsonl:1" in lines[0] and "Traceback" not in result.stderr


def test_debug_env_shows_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "personaloom.cli", "convert", str(empty), str(tmp_path / "o.jsonl")],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "PERSONALOOM_DEBUG": "1"},
    )
    assert result.returncode == 1 and "Traceback" in result.stderr
