"""Backend faults (issue 7 item 2): a flaky server costs retries and Failure records, never the run.

In: the CLI as a subprocess against a loopback OpenAI-compatible server (the demo model) that injects
20% HTTP 500, 5% 429 + Retry-After, 5% hangs past the client timeout, 5% truncated JSON bodies and 5%
well-formed replies whose content cannot be parsed; then a server that goes away mid-run.
Out: assertions that the run completes, that every pair ends as a conversation or a Failure with its
reason, that retries and failures are in stats.json, and that an unreachable server gives one error
line and exit code 2 after bounded retries while finished stages are kept and resumed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_server import check_jsonl_files, cli_command, cli_env, demo_server, garble_first_pair, read_jsonl, run_cli
from servers import Faults

FAST_RETRIES = ("--set", "backend.timeout_s=1", "--set", "backend.retry_base_s=0.05",
                "--set", "backend.retry_max_s=0.5", "--set", "backend.max_retries=5")
TRANSPORT = ("http_500", "http_429", "hang", "truncated")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_completes_through_injected_faults(tmp_path: Path) -> None:
    started = time.perf_counter()
    faults = Faults(http_500=0.20, http_429=0.05, hang=0.05, truncated=0.05, bad_content=0.05,
                    retry_after_s=0.2, hang_s=30)
    out = tmp_path / "run"
    # On top of the random faults, every Generator reply for the first pair is unparseable.
    with demo_server(garble_first_pair(), latency_s=0.01, faults=faults, seed=11) as srv:
        done = run_cli(out, srv.url, *FAST_RETRIES)
        server = srv.stats()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    stats = json.loads((out / "stats.json").read_text())
    llm = stats["llm"]
    injected = server["faults"]
    transport = sum(injected.get(k, 0) for k in TRANSPORT)
    assert all(injected.get(k, 0) > 0 for k in (*TRANSPORT, "bad_content")), injected
    # Every transport fault was absorbed by a retry, or ended its request as an error (after max_retries).
    assert llm["retries"] + llm["errors"] >= transport, (llm, injected)
    assert llm["retries"] > 0

    # Every pair ends as a conversation or as a Failure naming its reason.
    pairs = [p["id"] for p in read_jsonl(out / "pairs.jsonl")][:3]
    selected: set[str] = set()
    failed: dict[str, list[str]] = {}
    n_failures = 0
    for folder in sorted((out / "iterations").iterdir()):
        selected |= {c["pair_id"] for c in read_jsonl(folder / "selected.jsonl")}
        for f in read_jsonl(folder / "failures.jsonl"):
            assert f["reason"], f
            n_failures += 1
            owner = next((p for p in pairs if f["item_id"] == p or f["item_id"].startswith(p + "-")), None)
            if owner is not None:
                failed.setdefault(owner, []).append(f["reason"])
    for pair in pairs:
        assert pair in selected or pair in failed, (pair, selected, failed)
    assert len(failed) >= 1 and any("no_candidate_survived" in r for r in failed.values()), failed
    conversations = read_jsonl(out / "conversations.jsonl")
    assert {c["pair_id"] for c in conversations} == selected
    assert stats["conversations"] == len(conversations)
    assert sum(stats["failures"].values()) == n_failures
    check_jsonl_files(out)
    print("RELIABILITY faults:", json.dumps({
        "requests": server["total"], "faults_injected": injected, "retries": llm["retries"],
        "errors_after_retries": llm["errors"], "calls": llm["calls"], "conversations": len(conversations),
        "failures": stats["failures"], "pairs_failed": failed, "wall_s": round(time.perf_counter() - started, 1)}))


def _wait_until(proc: subprocess.Popen[bytes], ready: object, limit_s: float = 300) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        assert proc.poll() is None, "the run ended before the server was stopped"
        if callable(ready) and ready():
            return
        time.sleep(0.01)
    raise AssertionError("stage expand did not finish in time")


def _expand_done(out: Path) -> bool:
    try:
        return "expand" in json.loads((out / "state.json").read_text()).get("done", {})
    except (OSError, ValueError):
        return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_server_gone_mid_run_exits_2_with_one_line_and_keeps_finished_work(tmp_path: Path) -> None:
    started = time.perf_counter()
    out = tmp_path / "run"
    err_log = tmp_path / "stderr.log"
    srv = demo_server(latency_s=0.02).start()
    port = srv.port
    try:
        with err_log.open("wb") as err:
            proc = subprocess.Popen(cli_command(out, srv.url, *FAST_RETRIES), stdout=subprocess.PIPE,
                                    stderr=err, env=cli_env())
        _wait_until(proc, lambda: _expand_done(out))
        attributes = (out / "attributes.jsonl").read_bytes()
    finally:
        srv.stop()  # the port closes: connections are refused from now on
    stopped = time.monotonic()
    stdout, _ = proc.communicate(timeout=300)
    gave_up_s = time.monotonic() - stopped
    stderr = err_log.read_text()
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout.decode()
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("personaloom: error: "), errors
    assert "127.0.0.1" in errors[0] and "base-url" in errors[0]
    # What stopped it is in stats.json, and the calls that met it are counted and listed.
    stats = json.loads((out / "stats.json").read_text())
    # Bounded retries, not a hang (communicate's timeout catches that): at most max_retries (5) per failed call.
    assert stats["llm"]["retries"] <= 5 * stats["llm"]["errors"], stats["llm"]
    assert stats["partial"] is True and "cannot reach" in stats["stopped_by"] and stats["llm"]["errors"] >= 1
    assert any("cannot reach" in f["detail"] for f in read_jsonl(out / "failures.jsonl"))
    # Finished work is kept, intact.
    assert (out / "attributes.jsonl").read_bytes() == attributes
    assert read_jsonl(out / "attributes.jsonl")
    check_jsonl_files(out)

    # The server comes back on the same address: the re-run resumes and completes.
    with demo_server(latency_s=0.0, port=port) as again:
        done = run_cli(out, again.url, *FAST_RETRIES)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "expand: up to date" in done.stderr
    assert (out / "attributes.jsonl").read_bytes() == attributes
    assert read_jsonl(out / "conversations.jsonl")
    print("RELIABILITY unreachable:", json.dumps({"exit_code": proc.returncode, "error_line": errors[0],
                                                 "gave_up_after_s": round(gave_up_s, 1),
                                                 "wall_s": round(time.perf_counter() - started, 1)}))
