"""A whole personaloom run at scale against an emulated vLLM pool: wall / ideal, peak RSS, calls per kept, CPU.

In: nothing (settings on the command line). Out: one line per stage and the totals; last line
`ratio=<window / ideal> peak_mb=<MB> calls_per_kept=<n> cpu_ms_per_call=<ms>`.

The server is bench/loopback.py with `--replies demo` (what `--backend fake` answers, so every stage parses
its replies), `--slots` requests served at once (vLLM's max_num_seqs) and a per-request latency of
`--latency` + `--per-token` x reply words, lognormal jitter `--sigma`. personaloom runs its stages as the CLI
does, one command each in the same run directory (expand, profiles, pair, generate: 1 iteration, 3
candidates, `--pairs N`, profiles 2N), `backend.concurrency` = slots, against that server.

- ratio: the server's busy windows (first arrival to last answer, per stage; process start-up is not in
  them) over the ideal: per stage, the server's summed service seconds / slots + its longest single request
  (the last one cannot finish sooner). Expansion's bootstrap steps run one after another: they are where
  the window exceeds that ideal most (see the per-stage lines).
- peak_mb: the largest peak RSS of the processes (each measured alone).
- calls_per_kept: stats.json per_kept.calls (all invocations / kept conversations).
- cpu_ms_per_call: personaloom's own CPU per LLM call (everything but the HTTP transport): the same work as
  one `personaloom run --backend fake` (in-process scripted model; start-up, embeddings, dataset and report
  included), user + system CPU / calls. The CPU per call over HTTP (client transport included) is printed too.
  So is the split of that CPU into a fixed part and a part per call, from a second fake run of `--small`
  pairs: per call = (CPU(N) - CPU(small)) / (calls(N) - calls(small)); fixed = the rest (start-up, imports
  of torch / sentence-transformers / scikit-learn / matplotlib, the embedding model, the report's figures).

    .venv/bin/python bench/e2e_scale.py --pairs 2000 [--slots 256] [--per-token 0.02] [--cpu-only] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import server_stats, spawn

EXE = str(Path(sys.executable).with_name("personaloom"))


def stages(pairs: int) -> list[tuple[str, list[str]]]:
    return [("expand", []), ("profiles", ["--profiles", str(2 * pairs + 1)]), ("pair", ["--max-pairs", str(pairs)]),
            ("generate", ["--pairs", str(pairs), "--candidates", "3", "--iterations", "1"])]


def run(stage: str, extra: list[str], out: Path, backend: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one personaloom command (its own rusage: os.wait4)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([EXE, stage, "--out", str(out), *backend, *extra], stdout=subprocess.DEVNULL,
                                stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"personaloom {stage} failed ({proc.returncode}): {err.read()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # ru_maxrss in KiB


def calls_of(out: Path) -> tuple[int, dict[str, Any]]:
    stats = json.loads((out / "stats.json").read_text())
    return int(stats["total"]["calls"]) + int(stats["total"]["cache_hits"]), stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per request before the first token")
    ap.add_argument("--per-token", type=float, default=0.02, help="seconds per reply word (one sequence)")
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--small", type=int, default=100, help="pairs of the run that measures the fixed CPU")
    ap.add_argument("--cpu-only", action="store_true", help="only the fake-backend runs (last line: cpu_ms_per_call=)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="e2e-scale-"))
    for sub in ("http", "fake", "fake-small"):
        shutil.rmtree(root / sub, ignore_errors=True)
    print(f"settings: {args.pairs} pairs (profiles {2 * args.pairs + 1}), 3 candidates, 1 iteration; server "
          f"{args.slots} slots, latency {args.latency:g} s + {args.per_token:g} s/word x lognormal({args.sigma:g}); "
          f"concurrency {args.slots}; load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)

    # 1. Own CPU: one `personaloom run` on the in-process scripted backend, no HTTP.
    _, fake_cpu, peak_fake = run("run", ["--pairs", str(args.pairs), "--candidates", "3", "--iterations", "1"],
                                 root / "fake", ["--backend", "fake"])
    fake_calls, _ = calls_of(root / "fake")
    cpu_ms = 1000 * fake_cpu / fake_calls
    print(f"in-process fake backend: {fake_calls:,} calls, CPU {fake_cpu:.1f} s = {cpu_ms:.3f} ms per call, "
          f"peak RSS {peak_fake:.0f} MB", flush=True)
    _, small_cpu, _ = run("run", ["--pairs", str(args.small), "--candidates", "3", "--iterations", "1"],
                          root / "fake-small", ["--backend", "fake"])
    small_calls, _ = calls_of(root / "fake-small")
    slope = (fake_cpu - small_cpu) / max(1, fake_calls - small_calls)
    print(f"split: {args.small} pairs take {small_calls:,} calls and {small_cpu:.1f} s CPU; per call "
          f"{1000 * slope:.3f} ms, fixed {fake_cpu - slope * fake_calls:.1f} s", flush=True)
    if args.cpu_only:
        print(f"cpu_ms_per_call={cpu_ms:.3f}")
        return

    # 2. Over HTTP against the emulated pool.
    window = ideal = wall = cpu_http = 0.0
    peak = 0.0
    backend = ["--backend", "openai", "--model", "loopback", "--set", f"backend.concurrency={args.slots}"]
    with spawn(latency=args.latency, per_token=args.per_token, sigma=args.sigma, slots=args.slots,
               replies="demo") as url:
        for stage, extra in stages(args.pairs):
            server_stats(url, reset=True)
            w, cpu, rss = run(stage, extra, root / "http", [*backend, "--base-url", url])
            s = server_stats(url)
            busy = s["window_s"]
            best = s["busy_s"] / args.slots + s["max_latency_s"] if s["total"] else 0.0
            window, ideal, wall, cpu_http, peak = window + busy, ideal + best, wall + w, cpu_http + cpu, max(peak, rss)
            print(f"{stage}: {s['total']:,} requests, server window {busy:.1f} s, ideal {best:.1f} s "
                  f"({s['busy_s']:.0f} busy s / {args.slots} + longest {s['max_latency_s']:.2f} s), wall {w:.1f} s, "
                  f"max in flight {s['max_in_flight']}, peak RSS {rss:.0f} MB", flush=True)
    calls, stats = calls_of(root / "http")
    per_kept = stats.get("per_kept", {}).get("calls")
    kept = stats.get("conversations")
    print(f"over HTTP: {calls:,} calls, {kept} kept, client CPU {cpu_http:.1f} s = {1000 * cpu_http / calls:.3f} ms "
          f"per call (transport included); wall {wall:.1f} s with process start-ups; window {window:.1f} s vs ideal "
          f"{ideal:.1f} s", flush=True)
    print(f"ratio={window / ideal:.3f} peak_mb={max(peak, peak_fake):.0f} calls_per_kept={per_kept} "
          f"cpu_ms_per_call={cpu_ms:.3f}")


if __name__ == "__main__":
    main()
