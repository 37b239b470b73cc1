"""Graceful stop with real signals: the first SIGINT (Ctrl-C) or SIGTERM lets the calls in flight finish
and writes what was kept so far, marked partial, exit 130; a second one exits at once; a re-run resumes.

A real `personaloom run` subprocess against a loopback server answering like the demo model, with latency,
so that the signal lands while the second iteration's calls are in flight.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_server import cli_command, cli_env, demo_server, read_jsonl

pytestmark = pytest.mark.slow

RUN = ("--pairs", "6", "--iterations", "2", "--candidates", "2")


def _start(out: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(cli_command(out, url, *RUN), stdout=subprocess.DEVNULL, stderr=err, env=cli_env())


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, needle: str, deadline_s: float = 240) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if needle in log.read_text(encoding="utf-8", errors="replace"):
            return
        assert proc.poll() is None, f"the run ended before {needle!r}: {log.read_text()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never came")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_writes_the_kept_conversations_and_a_rerun_resumes(tmp_path: Path, sig: signal.Signals) -> None:
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    with demo_server(latency_s=0.15) as srv:
        proc = _start(out, srv.url, log)
        _wait_for_line(proc, log, "iteration 1:")  # iteration 1 is done; iteration 2's calls are going out
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 130
        said = log.read_text()
        assert "stopping: no new LLM calls" in said and "Traceback" not in said
        assert "kept so far are written (partial)" in said
        stats = json.loads((out / "stats.json").read_text())
        assert stats["partial"] is True
        kept = read_jsonl(out / "conversations.jsonl")
        first = read_jsonl(out / "iterations" / "1" / "selected.jsonl")
        assert first and len(kept) >= len(first) and stats["conversations"] == len(kept)
        assert "Partial dataset" in (out / "README.md").read_text()
        assert json.loads((out / "state.json").read_text())["done"].get("generate.2") is None
        paid = srv.stats()["total"]

        again = subprocess.run(cli_command(out, srv.url, *RUN), capture_output=True, text=True, env=cli_env(),
                               timeout=300, check=False)
        assert again.returncode == 0, again.stderr
        final = json.loads((out / "stats.json").read_text())
        assert final["partial"] is False and "Partial dataset" not in (out / "README.md").read_text()
        assert final["llm"]["cache_hits"] > 0  # the calls finished before the stop were not paid again
        assert len(read_jsonl(out / "conversations.jsonl")) >= len(kept)
        assert srv.stats()["total"] > paid


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    with demo_server(latency_s=2.0) as srv:  # slow calls: the first stop would wait for them
        proc = _start(out, srv.url, log)
        _wait_for_line(proc, log, "Expansion statistics")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _wait_for_line(proc, log, "stopping: no new LLM calls")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert "stopped at once" in log.read_text()
