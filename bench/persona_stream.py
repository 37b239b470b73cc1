"""Persona collections stream: sample k personas from a 1,000,000-line PersonaHub-style JSONL file.

Writes the file (once, into a temp folder), then in a child process times `sample_personas(path, k)` and
reads its peak RSS (ru_maxrss). Goal: the file is never held in memory: peak RSS well under the file's
size plus the interpreter (the last line `seconds=<time>`; the RSS line says MB). `--lines N`, `--k K`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROLES = ["retired nurse", "software engineer", "teacher", "chef", "farmer", "librarian", "pilot", "designer"]
DOINGS = ["volunteers at an animal shelter", "collects vintage maps", "runs marathons", "grows orchids"]


def write(path: Path, lines: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(lines):
            text = f"A {ROLES[i % len(ROLES)]} from town {i} who {DOINGS[i % len(DOINGS)]} and likes number {i}."
            fh.write(json.dumps({"id": f"p{i}", "persona": text}) + "\n")


def child(path: str, k: int) -> None:
    from personaloom.io.personas import sample_personas

    start = time.perf_counter()
    picked = sample_personas(path, k, seed=0)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": took, "peak_mb": peak, "picked": len(picked)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "personas.jsonl"
        write(path, args.lines)
        size_mb = path.stat().st_size / 1e6
        done = subprocess.run([sys.executable, __file__, "--child", str(path), str(args.k)], capture_output=True,
                              text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"file: {args.lines:,} lines, {size_mb:.0f} MB; sampled {result['picked']} personas")
    print(f"peak RSS (the import of personaloom included): peak_mb={result['peak_mb']:.0f}")
    print(f"seconds={result['seconds']:.2f}")


if __name__ == "__main__":
    main()
