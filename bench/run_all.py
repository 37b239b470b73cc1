"""`make bench`: run every benchmark under bench/ and print one table (benchmark, goal, measured, result).

In: nothing (`--only NAME ...` runs a subset, `--list` lists them). Out: each benchmark's own output
as it runs, then the table. A benchmark is any bench/*.py whose last output line is `ratio=<x>` or
`seconds=<x>` (other `key=<x>` lines it prints, such as `memory_growth_mb=`, can carry goals too).
Exit status 1 if a benchmark crashed or printed no result; a missed goal shows as FAIL in the table.

    .venv/bin/python bench/run_all.py [--only scheduler vs_peers]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"run_all.py", "loopback.py"}
RESULT = re.compile(r"^[a-z_]+=(?:[-+0-9.eE]+|inf|nan)\b")  # a result line starts with key=<number>
PAIR = re.compile(r"\b([a-z_]+)=([-+0-9.eE]+|inf|nan)\b")


@dataclass(frozen=True)
class Goal:
    label: str
    key: str  # the `key=<x>` line it reads
    op: str | None  # ">=", "<=", or None (reported, no goal)
    target: float = 0.0

    def text(self) -> str:
        return f"{self.key} {self.op} {self.target:g}" if self.op else "(reported)"

    def check(self, value: float) -> str:
        if self.op is None:
            return "info"
        ok = value >= self.target if self.op == ">=" else value <= self.target
        return "PASS" if ok else "FAIL"


GOALS: dict[str, list[Goal]] = {
    "backend_throughput": [Goal("P-1 embedded: through / raw decode rate", "ratio", ">=", 0.9)],
    "scheduler": [Goal("P-2 scheduler: measured / ideal time, 10k requests", "ratio", "<=", 1.1),
                  Goal("P-2 memory: peak RSS growth 1k -> 10k conversations (MB)", "memory_growth_mb", "<=", 100)],
    "vs_peers": [Goal("P-3 peer: personaloom / distilabel conversations/s", "ratio_distilabel", ">=", 2.0),
                 Goal("P-7 peers: personaloom / fastest peer conversations/s", "ratio", ">=", 1.0),
                 Goal("P-7 peers: personaloom busy window / ideal", "ratio_ideal", "<=", 1.1)],
    "critic_cost": [Goal("P-4 critic cost: listwise / pairwise tokens per kept conv", "ratio", None)],
    "consistency": [Goal("Profile consistency calls per profile: listwise / paper's pairwise", "ratio", None),
                    Goal("Profile consistency calls per profile (listwise)", "calls_per_profile", "<=", 8)],
    "calibrated_vote": [Goal("Calibrated / majority vote: original picked among degraded", "ratio", ">=", 1.0)],
    "persona_scale": [Goal("Persona stages at 100k attributes: total seconds", "seconds", None),
                      Goal("Persona stages at 100k attributes: peak RSS (MB)", "peak_mb", "<=", 4096)],
    "persona_stream": [Goal("Persona collection: sample 200 of 1M lines, seconds", "seconds", None),
                       Goal("Persona collection: peak RSS (MB), file 110 MB", "peak_mb", "<=", 100)],
}


def benchmarks() -> list[Path]:
    found = []
    for path in sorted(BENCH.glob("*.py")):
        if path.name in NOT_BENCHMARKS or path.name.startswith("_"):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        if "ratio=" in source or "seconds=" in source:
            found.append(path)
    return found


def run(path: Path, timeout: float) -> tuple[dict[str, float], str, float]:
    """Run one benchmark, echoing its output; returns its `key=value` results, its last line, seconds."""
    start = time.perf_counter()
    lines: list[str] = []
    proc = subprocess.Popen([sys.executable, "-u", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=BENCH.parent)
    assert proc.stdout is not None
    try:
        deadline = start + timeout
        for line in proc.stdout:
            print(f"  {line}", end="", flush=True)
            lines.append(line.rstrip("\n"))
            if time.perf_counter() > deadline:
                raise subprocess.TimeoutExpired(proc.args, timeout)
        proc.wait()
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        lines.append(f"timed out after {timeout:g} s")
    values: dict[str, float] = {}
    for line in lines:
        if RESULT.match(line.strip()):
            for key, value in PAIR.findall(line):
                values[key] = float(value)
    last = next((ln for ln in reversed(lines) if ln.strip()), "")
    if proc.returncode != 0 or not RESULT.match(last.strip()):
        values = {}  # a crashed run's partial numbers are not results
    return values, last, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (file stems) to run")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    args = parser.parse_args()
    paths = benchmarks()
    if args.only:
        paths = [p for p in paths if p.stem in set(args.only)]
    if args.list:
        print("\n".join(p.stem for p in paths))
        return
    rows: list[tuple[str, str, str, str]] = []
    failed = False
    load_before = os.getloadavg()
    for path in paths:
        print(f"== {path.name} (load average {os.getloadavg()[0]:.2f})", flush=True)
        values, last, seconds = run(path, args.timeout)
        goals = GOALS.get(path.stem) or [Goal(path.stem, "ratio" if "ratio" in values else "seconds", None)]
        for goal in goals:
            if goal.key in values:
                value = values[goal.key]
                rows.append((goal.label, goal.text(), f"{value:.3f}", goal.check(value)))
            else:
                failed = True
                rows.append((goal.label, goal.text(), "-", f"ERROR: {last[-60:]}"))
        print(f"== {path.name}: {seconds:.0f} s", flush=True)
    width = [max(len(r[i]) for r in [("benchmark", "goal", "measured", "result"), *rows]) for i in range(4)]
    print()
    for i, row in enumerate([("benchmark", "goal", "measured", "result"), *rows]):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in width))
    cores = os.cpu_count()
    print(f"\nload average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after ({cores} cores): timings "
          "on a busy machine understate what the code does; rerun when it is quiet.")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
