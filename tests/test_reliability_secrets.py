"""Secrets (issue 7 item 5): the API key is sent to the server and written nowhere else.

In: `personaloom run --backend openai` with a sentinel OPENAI_API_KEY against loopback servers: one that
answers (and checks the Authorization header arrived), one that answers every call with HTTP 500, and
a closed port with PERSONALOOM_DEBUG=1 (the traceback path). Out: assertions that the sentinel is in
no byte of any file of the run directories (cache.sqlite, embeddings.sqlite and their WAL files
included) and in no stdout/stderr.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_server import cli_env, demo_server, run_cli
from servers import Faults, unreachable_url

SENTINEL = "sk-SENTINEL-1234567890abcdef"
FAST_FAIL = ("--set", "backend.timeout_s=2", "--set", "backend.retry_base_s=0.01",
             "--set", "backend.retry_max_s=0.05", "--set", "backend.max_retries=1")


def _leaks(paths: list[Path], outputs: list[str]) -> list[str]:
    needles = [SENTINEL.encode(), SENTINEL.encode("utf-16-le"), SENTINEL[3:].encode()]
    found = [str(p) for p in paths if p.is_file() and any(n in p.read_bytes() for n in needles)]
    found += [f"output {i}" for i, text in enumerate(outputs) if SENTINEL[3:] in text]
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_api_key_reaches_the_server_and_nothing_else(tmp_path: Path) -> None:
    started = time.perf_counter()
    env = cli_env(OPENAI_API_KEY=SENTINEL)
    runs: list[subprocess.CompletedProcess[str]] = []
    with demo_server(latency_s=0.0, log_auth=True) as srv:
        runs.append(run_cli(tmp_path / "ok", srv.url, env=env))
        headers = list(srv.auth_headers)
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    assert headers and set(headers) == {f"Bearer {SENTINEL}"}  # the key was used, on every call

    with demo_server(faults=Faults(http_500=1.0), log_auth=True) as failing:
        runs.append(run_cli(tmp_path / "failing", failing.url, *FAST_FAIL, env=env))
        assert set(failing.auth_headers) == {f"Bearer {SENTINEL}"}
        assert failing.stats()["faults"].get("http_500", 0) > 0
    debug_env = cli_env(OPENAI_API_KEY=SENTINEL, PERSONALOOM_DEBUG="1")
    runs.append(run_cli(tmp_path / "refused", unreachable_url(), *FAST_FAIL, env=debug_env))
    assert runs[2].returncode != 0 and "Traceback" in runs[2].stderr  # the debug path ran

    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert any(p.name == "cache.sqlite" for p in files)
    assert any(p.name.startswith("embeddings.sqlite") for p in files)
    outputs = [text for r in runs for text in (r.stdout, r.stderr)]
    assert _leaks(files, outputs) == []
    print("RELIABILITY secrets:", json.dumps({
        "files_scanned": len(files), "bytes_scanned": sum(p.stat().st_size for p in files),
        "auth_headers_seen": len(headers), "exit_codes": [r.returncode for r in runs],
        "wall_s": round(time.perf_counter() - started, 1)}))
