"""Usage that survives a resume: stats.json's `total` and the report add up every invocation of one run
directory (calls, cache hits, tokens, wall time, cost at --price-in/--price-out) next to the latest one's."""

from __future__ import annotations

import json
from pathlib import Path

from test_pipeline import SMALL, cli


def _stats(out: Path) -> dict[str, object]:
    data = json.loads((out / "stats.json").read_text())
    assert isinstance(data, dict)
    return data


def test_totals_add_up_across_invocations(tmp_path: Path) -> None:
    out = tmp_path / "run"
    prices = ("--price-in", "0.5", "--price-out", "2")
    first = cli("expand", "--backend", "fake", "--out", str(out), *SMALL)
    assert first.returncode == 0, first.stderr
    one = _stats(out)
    assert one["total"] == {**{k: one["llm"][k] for k in one["total"] if k in one["llm"]},  # type: ignore[index]
                            "wall_s": one["wall_s"], "invocations": 1}
    run = cli("run", "--backend", "fake", "--out", str(out), "--pairs", "2", *prices, *SMALL)
    assert run.returncode == 0, run.stderr
    two = _stats(out)
    again = cli("run", "--backend", "fake", "--out", str(out), "--pairs", "2", *prices, *SMALL)
    assert again.returncode == 0, again.stderr
    three = _stats(out)
    llm = [s["llm"] for s in (one, two, three)]
    total = three["total"]
    assert isinstance(total, dict) and total["invocations"] == 3
    for key in ("calls", "cache_hits", "prompt_tokens", "completion_tokens"):
        assert total[key] == sum(x[key] for x in llm), key  # type: ignore[index]
    assert three["llm"]["calls"] == 0 and total["calls"] > 0  # type: ignore[index]
    assert abs(total["wall_s"] - sum(float(s["wall_s"]) for s in (one, two, three))) < 0.01  # type: ignore[arg-type]
    expected = total["prompt_tokens"] / 1e6 * 0.5 + total["completion_tokens"] / 1e6 * 2
    assert abs(total["cost"] - expected) < 1e-6 and three["cost"] == 0.0
    kept = three["conversations"]
    assert isinstance(kept, int) and kept > 0
    assert three["per_kept"] == {"calls": round(total["calls"] / kept, 2),
                                 "prompt_tokens": round(total["prompt_tokens"] / kept, 2),
                                 "completion_tokens": round(total["completion_tokens"] / kept, 2),
                                 "cost": round(total["cost"] / kept, 4)}
    assert "per_kept" not in one  # expand alone keeps no conversation
    report = (out / "report.html").read_text()
    assert "latest invocation" in report and "all 3 invocations of this run directory" in report
    assert f"per kept conversation ({kept} kept, all invocations)" in report
