"""Crash safety (issue 7 item 1): SIGKILL `personaloom run` at 10 seeded random moments, resume each time.

In: the CLI as a subprocess against a loopback OpenAI-compatible server that answers like the demo model
after a small delay (so kills land mid-stage). Out: assertions that the resumed run's dataset is
byte-identical to an uninterrupted run's, that every JSONL file parses, and that LLM calls paid twice
(identical request bodies seen again by the server) never exceed the calls in flight at the kills.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline_server import DemoServer, check_jsonl_files, cli_command, cli_env, demo_server, read_jsonl, run_cli

KILLS = 10
SEED = 2024
CONCURRENCY = 16  # backend.concurrency's default
ARTIFACTS = ("attributes.jsonl", "questions.jsonl", "profiles.jsonl", "pairs.jsonl", "conversations.jsonl")


ORDER = ("expand", "profiles", "pair", "generate.1", "generate.2", "write")


def _stage_reached(out: Path) -> str:
    """The stage a run in `out` is in: the first one state.json does not list as done."""
    try:
        done = json.loads((out / "state.json").read_text()).get("done", {})
    except (OSError, ValueError):
        done = {}
    return next((stage for stage in ORDER[:-1] if stage not in done), "write")


def _cached(out: Path) -> int:
    """Results committed to the run's response cache (the killed process is gone: nothing is writing)."""
    if not (out / "cache.sqlite").exists():
        return 0
    with contextlib.closing(sqlite3.connect(str(out / "cache.sqlite"))) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def _wait_for(proc: subprocess.Popen[bytes], ready: Any, deadline_s: float = 240) -> bool:
    """Poll until ready() or the process exits; False when it exited first."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.01)
    raise AssertionError("run neither reached the kill point nor finished")


def _kill_once(srv: DemoServer, out: Path, log: Path, plan: tuple[str, int, float]) -> dict[str, Any] | None:
    """Start a run; kill it once it is in stage `plan[0]` and sent `plan[1]` requests (+ jitter seconds).

    Returns the kill's accounting, or None when the run finished before the kill."""
    stage, calls, jitter = plan
    start_total, start_cached = srv.total, _cached(out)
    with log.open("wb") as err:
        proc = subprocess.Popen(cli_command(out, srv.url), stdout=subprocess.DEVNULL, stderr=err, env=cli_env())
    try:
        if stage == "startup":
            time.sleep(jitter)
        else:
            def ready() -> bool:
                now = ORDER.index(_stage_reached(out))
                want = ORDER.index(stage)
                return now > want or (now == want and srv.total - start_total >= calls)

            _wait_for(proc, ready)
            time.sleep(jitter)
        reached = _stage_reached(out)
        server_in_flight = srv.in_flight
        if proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        time.sleep(0.3)  # requests the dead client had already sent still arrive
        # In flight at the kill, as the client saw it: requests this run sent whose result it never
        # committed to the cache (those, and only those, a later run has to pay for again).
        sent, committed = srv.total - start_total, _cached(out) - start_cached
        return {"planned": stage, "stage": reached, "server_in_flight": server_in_flight,
                "sent": sent, "committed": committed, "in_flight": sent - committed}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_ten_times_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    started = time.perf_counter()
    rng = random.Random(SEED)
    srv = demo_server(latency_s=0.03, latency_sigma=0.5, seed=SEED)
    with srv:
        # 1. An uninterrupted run: the reference dataset and the number of calls a whole run makes.
        ref = tmp_path / "ref"
        done = run_cli(ref, srv.url)
        assert done.returncode == 0, done.stderr[-2000:]
        calls = srv.stats()["total"]
        assert srv.stats()["repeated"] == 0
        srv.reset()

        # 2. The same run, killed at 10 seeded moments spread over the stages: start-up (imports, models),
        # LLM traffic of every stage (after a random number of requests), and writing the dataset.
        plans = [("startup", 0, rng.uniform(0.5, 3.0))]
        for stage, kills_there in (("expand", 2), ("profiles", 3), ("generate.1", 2), ("generate.2", 1)):
            plans += [(stage, rng.randint(1, 12), rng.uniform(0.0, 0.1)) for _ in range(kills_there)]
        plans += [("write", 0, rng.uniform(0.0, 1.5))]
        out = tmp_path / "killed"
        kills: list[dict[str, Any]] = []
        for i, plan in enumerate(plans):
            kill = _kill_once(srv, out, tmp_path / f"kill{i}.log", plan)
            if kill is not None:
                kills.append(kill)
            if out.exists():
                check_jsonl_files(out)  # a killed run never leaves a corrupt JSONL file behind
        final = run_cli(out, srv.url)
        assert final.returncode == 0, final.stderr[-2000:]
        stats = srv.stats()

    convs = read_jsonl(out / "conversations.jsonl")
    ids = [c["id"] for c in convs]
    assert ids and len(ids) == len(set(ids))
    n_files = check_jsonl_files(out)
    json.loads((out / "stats.json").read_text())

    # Nothing paid twice beyond what was in flight when the process died.
    bound = sum(k["in_flight"] for k in kills)
    repeated = stats["repeated"]
    leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp"))
    summary = {"kills_landed": len(kills), "stages": [k["stage"] for k in kills], "calls_per_run": calls,
               "calls_total_killed_sequence": stats["total"], "paid_twice": repeated,
               "in_flight_bound": bound, "per_kill": kills, "jsonl_files": n_files,
               "temp_leftovers": leftovers, "wall_s": round(time.perf_counter() - started, 1)}
    print("RELIABILITY crash:", json.dumps(summary))
    assert len(kills) == KILLS
    assert repeated <= bound, summary
    # In flight never exceeds the client's concurrency: a kill costs at most `concurrency` calls.
    assert all(0 <= k["in_flight"] <= CONCURRENCY for k in kills), summary
    # A kill during an atomic write may leave its hidden temp file; it must never be a data file.
    assert all(Path(p).name.startswith(".") for p in leftovers), leftovers
    # Resumed == uninterrupted: same ids, same content, same order; every artifact, not only the dataset.
    for name in ARTIFACTS:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
