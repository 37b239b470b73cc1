"""--target-kept N: rounds over pairs.jsonl until N conversations are kept (sized by the keep rate so far),
exactly N written; the pairs running out is said; the dry run gives the pairs it expects to need."""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_pipeline import SMALL, cli


def _kept(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "conversations.jsonl").read_text().splitlines() if line.strip()]


def test_target_kept_generates_until_enough_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    dry = cli("run", "--dry-run", "--backend", "fake", "--out", str(out), "--target-kept", "5", *SMALL)
    assert dry.returncode == 0 and "--target-kept 5: about 10 pairs at a keep rate of 0.50 (assumed)" in dry.stdout
    assert re.search(r"per kept conversation: about [\d.,]+ calls, [\d,]+ prompt \+ [\d,]+ completion tokens "
                     r"\(about 5 kept at a keep rate of 0\.50, assumed\)", " ".join(dry.stdout.split()))
    # 10 utterances at least: about two in three scripted candidates are too short, so some pairs keep nothing.
    result = cli("run", "--backend", "fake", "--out", str(out), "--target-kept", "5", "--candidates", "1", *SMALL,
                 "--set", "pair.max_pairs=40", "--set", "profiles.profiles=81", "--set", "pair.threshold=0",
                 "--set", "generate.min_utterances=10")
    assert result.returncode == 0, result.stderr
    kept = _kept(out)
    assert len(kept) == 5 and len({c["id"] for c in kept}) == 5
    stats = json.loads((out / "stats.json").read_text())
    rounds = stats["dataset"]["iterations"]
    assert sum(r["kept"] for r in rounds) >= 5 and sum(r["pairs"] for r in rounds) <= 40
    assert rounds[0]["pairs"] == 5  # the first round asks for as many pairs as conversations are wanted
    assert len(rounds) >= 2 and rounds[0]["kept"] < 5  # later rounds are sized by the keep rate so far
    if rounds[0]["kept"]:
        rate = rounds[0]["kept"] / 5
        assert rounds[1]["pairs"] == min(40 - 5, -(-(5 - rounds[0]["kept"]) // rate))
    again = cli("run", "--dry-run", "--backend", "fake", "--out", str(out), "--target-kept", "20", *SMALL)
    rate = sum(r["kept"] for r in rounds) / sum(r["pairs"] for r in rounds)
    assert f"keep rate of {rate:.2f} (measured)" in again.stdout
    capped = cli("run", "--dry-run", "--backend", "fake", "--out", str(out), "--target-kept", "20", *SMALL,
                 "--set", "pair.max_pairs=12")
    said = " ".join(capped.stdout.split())
    assert f"but pair.max_pairs caps them at 12: about {round(12 * rate)} kept; raise --max-pairs to" in said, said
    # Not enough pairs: everything is used, and the shortfall is said.
    short = cli("generate", "--backend", "fake", "--out", str(out), "--target-kept", "40", "--candidates", "1", *SMALL,
                "--set", "pair.max_pairs=40", "--set", "generate.min_utterances=10")
    assert short.returncode == 0, short.stderr
    assert "of the 40 asked for" in short.stderr and "--max-pairs" in short.stderr
    assert 5 <= len(_kept(out)) < 40
