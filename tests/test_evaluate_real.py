"""Evaluation metrics on the real data: SPC valid (generated) vs Persona-Chat valid (human)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from personaloom.evaluate.metrics import deterministic_metrics
from personaloom.evaluate.retrieval import hits_at_1
from personaloom.evaluate.suite import evaluate
from personaloom.evaluate.turing import pair_conversations
from personaloom.io import read_conversations


def test_real_deterministic_metrics_and_hits(persona_chat_path: Path, spc_path: Path) -> None:
    pc = read_conversations(persona_chat_path)
    spc = read_conversations(spc_path)
    m_pc, m_spc = deterministic_metrics(pc), deterministic_metrics(spc)
    h_pc = hits_at_1(pc, name="reference")
    h_spc = hits_at_1(spc, name="data")
    h_transfer = hits_at_1(pc, fit_on=spc, name="reference")
    for name, m, h in (("Persona-Chat", m_pc, h_pc), ("SPC", m_spc, h_spc)):
        print(
            f"\n{name}: conversations {m['conversations']}, defects {m['defects']}, distinct-1/2/3 "
            f"{m['distinct_1']:.4f}/{m['distinct_2']:.4f}/{m['distinct_3']:.4f}, utterances/conv "
            f"{m['utterances_per_conversation']['mean']:.2f}, words/utt {m['words_per_utterance']['mean']:.2f}, "
            f"vocab {m['vocab_size']}, hits@1 with persona {100 * h['with_persona']:.2f}, "
            f"without {100 * h['without_persona']:.2f} (paper on Persona-Chat: 36.86 / 18.69)"
        )
    print(
        f"transfer SPC->Persona-Chat: with {100 * h_transfer['with_persona']:.2f}, "
        f"without {100 * h_transfer['without_persona']:.2f}"
    )
    # DESIGN.md §3's definitions: 442 of SPC valid's 1,000 conversations have a defect, 405 with a slot
    # in any bracket (the square-bracket rule alone saw 329, stage directions included).
    assert m_spc["conversations"] == 1000 and m_spc["defects"]["any"] == 442
    assert m_spc["defects"]["placeholders"] == 405 and m_spc["defects"]["stage_directions"] == 14
    assert m_pc["conversations"] == 1000 and m_pc["defects"]["any"] == 0
    # The persona helps on Persona-Chat, where workers were asked to reflect it.
    assert h_pc["with_persona"] > h_pc["without_persona"] + 0.1
    assert 0.05 < h_pc["without_persona"] < 0.5 and 0.05 < h_spc["without_persona"] < 0.5
    assert m_pc["distinct_2"] > m_spc["distinct_2"]  # human data is more diverse
    # Persona-Chat and SPC share their user pairs: every SPC conversation finds its human twin.
    assert sum(p.matched for p in pair_conversations(spc, pc)) == 1000


@pytest.mark.slow
def test_evaluate_real_files_without_judge(persona_chat_path: Path, spc_path: Path, tmp_path: Path) -> None:
    from personaloom.embed import Embedder

    start = time.perf_counter()
    metrics = asyncio.run(evaluate(spc_path, persona_chat_path, tmp_path, judge=None, embedder=Embedder()))
    wall = time.perf_counter() - start
    print(f"\nevaluate SPC valid vs Persona-Chat valid, no judge: {wall:.1f}s, timing {metrics['timing']}")
    print(
        f"persona coverage: SPC {metrics['persona_coverage']}, Persona-Chat {metrics['reference']['persona_coverage']}"
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["conversations"] == 1000 and saved["defects"]["any"] == 442
    assert saved["reference"]["persona_coverage"]["rate"] > saved["persona_coverage"]["rate"] > 0
    assert (tmp_path / "report.html").stat().st_size > 10_000
    # The 2-minute goal is measured and reported (README, closing note); no timing assertion here.
