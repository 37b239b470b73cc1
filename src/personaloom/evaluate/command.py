"""`personaloom evaluate`'s work: judge client, metrics.json + report.html (`aevaluate`), the printed table.

In: the data and reference paths, the output folder, the judge kind (none | embedded | openai | fake), its
model and server, a conversation limit and the seed. Out: the metrics dict (also written by
evaluate.suite.evaluate); LLM tests go through a cached client (`executors.clients.Clients`) like every call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personaloom.config import RunConfig
from personaloom.console import console
from personaloom.errors import ConfigError, InputError
from personaloom.fsutil import ensure_dir
from personaloom.stats import Stats


async def aevaluate(
    data: str,
    reference: str | None,
    out: Path | None,
    judge: str,
    model: str | None,
    base_url: str | None,
    limit: int | None,
    seed: int,
    calibrate: bool = False,
    decontaminate: list[str] | None = None,
) -> tuple[dict[str, Any], Path]:
    """(metrics, the folder metrics.json and report.html went to); LLM tests through a cached judge client.
    With `calibrate`, the judge is first measured on labelled probes (calibration.json beside metrics.json)."""
    from personaloom.embed import Embedder
    from personaloom.evaluate.suite import evaluate
    from personaloom.executors.clients import Clients

    data_path = Path(data)
    if not data_path.exists():
        raise InputError("no such file or directory", path=data_path)
    if reference is not None and not Path(reference).exists():
        raise InputError("no such file or directory (--reference)", path=reference)
    out_dir = ensure_dir(out if out is not None else (data_path if data_path.is_dir() else Path("eval")))
    if judge not in ("none", "embedded", "openai", "fake"):
        raise ConfigError(f"--judge {judge!r}: expected none, embedded, openai or fake")
    config = RunConfig.model_validate(
        {"seed": seed, "out": str(out_dir), "backend": {"kind": "embedded" if judge == "none" else judge,
                                                       "model": model, "base_url": base_url}}
    )
    if calibrate and judge != "none":
        from personaloom.calibrate.command import acalibrate

        # Probes from the human reference when there is one; the evaluated data is the machine side of the
        # Turing probes.
        human = reference if reference is not None else str(data_path)
        await acalibrate(config, out_dir, human, str(data_path) if reference is not None else None, limit or 10)
    clients = Clients(config, out_dir, Stats())
    embedder = Embedder(config.embed.model, cache_path=out_dir / "embeddings.sqlite")
    try:
        client = None if judge == "none" else clients.main
        metrics = await evaluate(data_path, reference, out_dir, client, limit=limit, seed=seed, embedder=embedder,
                                 decontaminate=decontaminate or [])
    finally:
        await clients.aclose()
    return metrics, out_dir


def print_metrics(m: dict[str, Any]) -> None:
    """The metrics table `personaloom evaluate` prints (data beside reference)."""
    from rich.table import Table

    t = Table(title="Evaluation")
    t.add_column("metric")
    t.add_column("data", justify="right")
    t.add_column("reference", justify="right")
    ref = m.get("reference") or {}

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    rows = [("conversations", "conversations"), ("distinct-1", "distinct_1"), ("distinct-2", "distinct_2")]
    for label, key in rows:
        t.add_row(label, fmt(m.get(key)), fmt(ref.get(key)))
    for kind, n in (m.get("defects") or {}).items():
        t.add_row(f"defect: {kind}", fmt(n), fmt((ref.get("defects") or {}).get(kind)))
    for key in ("without_persona", "with_persona"):
        t.add_row(f"hits@1 {key.replace('_', ' ')}", fmt((m.get("ir_hits_at_1") or {}).get(key)),
                  fmt((ref.get("ir_hits_at_1") or {}).get(key)))
    console.print(t)
    if m.get("duplicates"):
        d = m["duplicates"]
        console.print(f"duplicates: {d['exact']} exact, {d['near']} near (similarity >= {d['threshold']}) of "
                      f"{d['checked']}")
    if m.get("contamination"):
        c = m["contamination"]
        console.print(f"contamination: {c['contaminated']} of {c['checked']} share a {c['ngram']}-gram with an "
                      f"utterance of {', '.join(c['sources'])} (contamination.jsonl); persona sentences also in "
                      f"them: {c['persona_overlap']['sentences']} of {c['persona_overlap']['of']}")
    for name in ("turing", "faithfulness", "toxicity"):
        if m.get(name):
            console.print(f"{name}: {json.dumps(m[name], default=str)[:300]}")
