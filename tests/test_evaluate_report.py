"""report.html opened in headless Chromium: it renders, and every embedded plot is a real, non-blank image."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import BackendClient

from personaloom.backends.base import ChatRequest
from personaloom.backends.fake import FakeBackend
from personaloom.evaluate.suite import evaluate
from personaloom.records import Conversation, Turn


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); report not rendered")


def _run_dir(tmp_path: Path) -> tuple[Path, Path]:
    topics = ["dogs", "jazz", "tennis", "baking", "paris", "chess", "opera", "surfing"]
    convs, refs = [], []
    for i, topic in enumerate(topics):
        p1, p2 = [f"I love {topic}.", f"I am {20 + i} years old."], [f"I live in town {i}.", "I have a cat."]
        lines = [f"Hi! Do you like {topic}?", "Yes! I have a cat.", f"I am {20 + i}.", f"I live in town {i}."] * 2
        convs.append(
            Conversation(
                id=f"g{i}",
                user1_persona=p1,
                user2_persona=p2,
                iteration=1 + i % 2,
                turns=[Turn(speaker=1 + j % 2, text=t) for j, t in enumerate(lines)],
            )
        )
        human = [f"hi , i love {topic} .", "cool , my cat is asleep .", "what do you do ?", "i work in town ."]
        refs.append(
            Conversation(
                id=f"r{i}",
                user1_persona=p2,
                user2_persona=p1,
                turns=[Turn(speaker=1 + j % 2, text=t) for j, t in enumerate(human)],
            )
        )
    run = tmp_path / "run"
    for k in (1, 2):
        folder = run / "iterations" / str(k)
        folder.mkdir(parents=True)
        mine = [c for c in convs if c.iteration == k]
        (folder / "candidates.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in mine * 3))
        (folder / "selected.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in mine))
        verdicts = [
            {"conversation_id": c.id, "expert": e, "decision": d, "rationale": ""}
            for c in mine
            for e, d in (
                ("depth", "win"),
                ("coherency", "lose"),
                ("faithfulness", "pass"),
                ("toxicity", "reject" if c.id == "g0" else "pass"),
            )
        ]
        (folder / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    (run / "conversations.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in convs))
    (run / "stats.json").write_text(
        json.dumps(
            {
                "llm": {"calls": 10, "cache_hits": 2},
                "stages": {},
                "conversations": 8,
                "failures": {"no_candidate_survived": 1},
            }
        )
    )
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(c.model_dump_json() + "\n" for c in refs))
    return run, ref


def _judge(req: ChatRequest) -> str:
    stage = req.metadata["stage"]
    if stage == "evaluate.turing":
        return '{"machine_written": "A"}' if req.metadata["id"] in ("g0", "g1", "g2") else '{"machine_written": "B"}'
    if stage.startswith("evaluate.faithfulness."):
        return '{"statement": "I have never left my house."}'
    if stage == "evaluate.faithfulness":
        return '{"belongs": [1, 3, 5]}'
    return '{"label": "safe", "rationale": "ok"}'


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    chromium = _chromium()
    run, ref = _run_dir(tmp_path)
    asyncio.run(evaluate(run, ref, run, BackendClient(FakeBackend(_judge)), seed=0))
    report = run / "report.html"
    html = report.read_text(encoding="utf-8")
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html), "report must be self-contained"
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', html)
    alts = [a for a, _ in images]
    for expected in (
        "format defects",
        "length distributions",
        "distinct-n",
        "Turing test",
        "critic verdict",
        "per iteration",
    ):
        assert any(expected in a for a in alts), f"missing plot {expected!r}: {alts}"
    for alt, data in images:
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 200, alt
        assert float(np.var(pixels[..., :3])) > 1e-3, f"blank plot: {alt}"
    for table_header in ("Turing", "faithfulness", "hits@1", "candidates rejected by"):
        assert table_header in html

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            report.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1100
    rgb = pixels[..., :3]
    assert float(np.var(rgb)) > 1e-3, "screenshot is blank"
    # Plots render as images: a good share of rows is not plain white.
    non_white_rows = float(np.mean((rgb < 0.9).any(axis=2).any(axis=1)))
    assert non_white_rows > 0.3
    print(f"\nscreenshot {shot} ({pixels.shape[1]}x{pixels.shape[0]}), non-white rows {non_white_rows:.2f}")
