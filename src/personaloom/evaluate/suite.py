"""The evaluation suite: a dataset (and human reference data) in, metrics.json and report.html out.

In: `data`, a run directory (its conversations.jsonl; iterations/ and stats.json feed the critic plots)
or any file the readers accept; an optional `reference` file; an optional LLM judge; an optional
embedder for persona coverage. Out (in `out`):
  metrics.json   the DESIGN.md §3 keys (conversations, defects, distinct_1, distinct_2, ir_hits_at_1)
                 plus distinct_3, lengths, vocabulary, persona coverage, the same for the reference
                 under "reference", ir_transfer["generated->reference"], and with a judge turing,
                 faithfulness and toxicity (None when not run, with the reason under "notes")
  report.html    see evaluate/report.py
  big_five, languages, scenarios, sessions   the optional features' lines (evaluate/features.py), None when no
                 conversation uses the feature
  judge/{turing,faithfulness,toxicity,traits,cross_session}.jsonl   every judge decision, when a judge ran
  duplicates, contamination   exact and near duplicates among every conversation (personaloom.dedup, the first
                 20 listed) and, with `decontaminate`, those sharing a long n-gram with the benchmark files
                 (personaloom.decontaminate; each in contamination.jsonl): counted, never dropped
`limit` caps the conversations sent to the judge (a seeded sample). Persona coverage embeds every
utterance, the slowest step on a CPU (measured here: 15-25 sentences/s on 2 cores shared with other
jobs; 100 SPC conversations are ~3,700 texts), so it uses a seeded sample of `coverage_sample`
conversations per dataset (100: ~900 attributes, a rate within about ±3 points). The counts of
conversations and of format defects cover every conversation, read one at a time; every other metric
a seeded sample of `metrics_sample` (METRICS_SAMPLE) conversations per dataset, all of them when fewer
("metrics_sample" in metrics.json: the sample's size when it is one, else null).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personaloom.chat import LLMClient
from personaloom.config import DecontaminateConfig, DedupConfig
from personaloom.dialogue import DEFECT_KINDS
from personaloom.errors import InputError
from personaloom.evaluate import features
from personaloom.evaluate.faithfulness import run_faithfulness
from personaloom.evaluate.metrics import conversation_defects, corpus_metrics, persona_coverage
from personaloom.evaluate.report import load_run_info, write_report
from personaloom.evaluate.retrieval import hits_at_1
from personaloom.evaluate.turing import run_turing
from personaloom.fsutil import atomic_open, atomic_write_text, ensure_dir
from personaloom.records import Conversation
from personaloom.release import screen
from personaloom.rng import rng_for
from personaloom.rundir import read_json

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
CONTAMINATION_FILE = "contamination.jsonl"
COVERAGE_SAMPLE = 100
# Conversations per dataset for every metric but the counts of conversations and defects: a 20k- or
# 1M-conversation run is evaluated in the memory of 5,000 (about 70 MB of records), and distinct-n, which
# falls as a corpus grows, compares two datasets of different sizes at the same size.
METRICS_SAMPLE = 5000


@dataclass
class LoadedDataset:
    """A dataset as the metrics see it: a seeded sample of at most METRICS_SAMPLE conversations (all of
    them when fewer, in file order), how many the file has, and the format defects over all of them."""

    sample: list[Conversation]
    total: int
    defects: dict[str, int]


def _records(path: Path) -> Iterator[Conversation]:
    from personaloom.io import read_conversations
    from personaloom.io.jsonl import iter_jsonl

    if path.is_dir():
        target = path / "conversations.jsonl"
        if not target.is_file():
            raise InputError("not a run directory: no conversations.jsonl in it", path=path)
        # a run that kept nothing still gets a report (its critic plots say why); a run's file streams
        return iter_jsonl(target, Conversation)
    if not path.exists():
        raise InputError("no such file or directory", path=path)
    return iter(read_conversations(path))


def load_dataset(path: Path, cap: int | None, seed: int, name: str) -> LoadedDataset:
    """Read `path` (a run directory or any readable file) once: count its conversations and their defects,
    and keep a uniform seeded sample of `cap` (reservoir sampling, Vitter's algorithm R; None = keep all)."""
    rng = rng_for(seed, "evaluate", "metrics-sample", name)
    reservoir: list[tuple[int, Conversation]] = []
    defects = Counter({kind: 0 for kind in (*DEFECT_KINDS, "any")})
    total = 0
    for i, conv in enumerate(_records(path)):
        total += 1
        found = conversation_defects(conv)
        defects.update([*found, *(["any"] if found else [])])
        if cap is None or i < cap:
            reservoir.append((i, conv))
        elif (j := rng.randrange(i + 1)) < cap:
            reservoir[j] = (i, conv)
    return LoadedDataset([c for _, c in sorted(reservoir, key=lambda x: x[0])], total, dict(defects))


def seeded_sample(convs: list[Conversation], limit: int | None, seed: int, *key: str) -> list[Conversation]:
    """All conversations, or a sample of `limit` of them (seeded by `key`) in their original order."""
    if limit is None or limit >= len(convs):
        return list(convs)
    picks = sorted(rng_for(seed, "evaluate", *key).sample(range(len(convs)), max(0, limit)))
    return [convs[i] for i in picks]


def judge_sample(convs: list[Conversation], limit: int | None, seed: int) -> list[Conversation]:
    return seeded_sample(convs, limit, seed, "judge-sample")


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _dataset_metrics(
    data: LoadedDataset, embedder: Any | None, seed: int, name: str, coverage_sample: int | None
) -> dict[str, Any]:
    convs = data.sample
    m = {"conversations": data.total, "defects": data.defects, **corpus_metrics(convs)}
    m["metrics_sample"] = len(convs) if len(convs) < data.total else None
    if embedder is not None:
        sample = seeded_sample(convs, coverage_sample, seed, "coverage", name)
        m["persona_coverage"] = {**persona_coverage(sample, embedder), "conversations": len(sample)}
    else:
        m["persona_coverage"] = None
    m["ir_hits_at_1"] = hits_at_1(convs, seed=seed, name=name)
    return m


async def evaluate(
    data: str | Path,
    reference: str | Path | None,
    out: Path,
    judge: LLMClient | None,
    limit: int | None = None,
    seed: int = 0,
    embedder: Any | None = None,
    coverage_sample: int | None = COVERAGE_SAMPLE,
    metrics_sample: int | None = METRICS_SAMPLE,
    decontaminate: Sequence[str] = (),
) -> dict[str, Any]:
    """Compute every metric, write out/metrics.json and out/report.html, return the metrics.

    coverage_sample: conversations per dataset for persona coverage; metrics_sample: for every metric but
    the conversation and defect counts (None = all of them). Duplicates are counted over every conversation
    (metrics["duplicates"]); with `decontaminate` (benchmark files) so are the conversations sharing a long
    n-gram with them (metrics["contamination"], out/contamination.jsonl), never dropped here."""
    out = ensure_dir(Path(out))
    data_path = Path(data)
    timing: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timing[name] = round(now - since, 3)
        return now

    loaded = load_dataset(data_path, metrics_sample, seed, "data")
    ref_data = load_dataset(Path(reference), metrics_sample, seed, "reference") if reference is not None else None
    convs, ref = loaded.sample, (ref_data.sample if ref_data is not None else None)
    t = lap("read", started)
    metrics: dict[str, Any] = _dataset_metrics(loaded, embedder, seed, "data", coverage_sample)
    t = lap("data_metrics", t)
    screened = screen(_records(data_path), DedupConfig(), DecontaminateConfig(paths=list(decontaminate)), drop=False)
    examples = [d.model_dump() for d in screened.duplicates[:20]]
    metrics["duplicates"] = {**screened.summary["dedup"], "examples": examples}
    metrics["contamination"] = screened.summary.get("decontamination")
    if decontaminate:
        _write_jsonl(out / CONTAMINATION_FILE, (c.model_dump() for c in screened.contaminated))
    else:  # an earlier evaluation's, of other files
        (out / CONTAMINATION_FILE).unlink(missing_ok=True)
    t = lap("duplicates", t)
    metrics["reference"] = None
    metrics["ir_transfer"] = None
    if ref_data is not None and ref is not None:
        metrics["reference"] = _dataset_metrics(ref_data, embedder, seed, "reference", coverage_sample)
        # Same candidates as the reference's own score (same name), only the tf-idf weights differ.
        metrics["ir_transfer"] = {"generated->reference": hits_at_1(ref, fit_on=convs, seed=seed, name="reference")}
        t = lap("reference_metrics", t)

    notes: dict[str, str] = {}
    metrics["turing"] = metrics["faithfulness"] = metrics["toxicity"] = None
    judged: list[Conversation] | None = None  # what the judge reads (the features' judges too)
    if judge is None:
        notes = {k: "not run: no judge (--judge none)" for k in ("turing", "faithfulness", "toxicity")}
    else:
        sample = judged = judge_sample(convs, limit, seed)
        judge_dir = out / "judge"
        if ref:
            turing, t_items = await run_turing(sample, ref, judge, seed)
            metrics["turing"] = turing
            _write_jsonl(judge_dir / "turing.jsonl", (it.to_dict() for it in t_items))
            t = lap("turing", t)
        else:
            notes["turing"] = "not run: needs --reference"
        faith, f_items = await run_faithfulness(sample, convs, judge, seed)
        metrics["faithfulness"] = faith
        _write_jsonl(judge_dir / "faithfulness.jsonl", (it.to_dict() for it in f_items))
        t = lap("faithfulness", t)
        try:
            from personaloom.evaluate.toxicity import run_toxicity
        except ImportError as exc:  # the critic's expert is not importable: say so, keep the rest
            notes["toxicity"] = f"not run: toxicity expert unavailable ({exc})"
        else:
            tox, verdicts = await run_toxicity(sample, judge, seed)
            metrics["toxicity"] = tox
            _write_jsonl(judge_dir / "toxicity.jsonl", (v.model_dump(mode="json") for v in verdicts))
            t = lap("toxicity", t)
        metrics["judged_conversations"] = len(sample)
    metrics["big_five"], trait_verdicts = await features.big_five(convs, judge, seed, judged)
    metrics["languages"] = features.languages(convs)
    metrics["scenarios"] = features.scenarios(convs)
    metrics["sessions"], session_verdicts = await features.sessions(convs, judge, seed, judged)
    for name, found in (("traits", trait_verdicts), ("cross_session", session_verdicts)):
        if found:
            _write_jsonl(out / "judge" / f"{name}.jsonl", (v.model_dump(mode="json") for v in found))
    t = lap("features", t)
    metrics["notes"] = notes
    # The judges' calibration (personaloom calibrate), here or in the run directory evaluated.
    calibrations = [read_json(d / "calibration.json") for d in (out, data_path) if d.is_dir()]
    metrics["calibration"] = next((c for c in calibrations if c), None)
    metrics["source"] = {
        "data": str(data_path),
        "reference": str(reference) if reference is not None else None,
        "seed": seed,
        "limit": limit,
        "judge": judge is not None,
        "run_dir": str(data_path) if data_path.is_dir() else None,
    }
    timing["total"] = round(time.perf_counter() - started, 3)
    metrics["timing"] = timing
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    run_info = load_run_info(data_path) if data_path.is_dir() else None
    write_report(out / REPORT_FILE, metrics, run_info)
    return metrics


def build_report(run_dir: Path) -> Path:
    """Rebuild run_dir/report.html from run_dir/metrics.json and the run's files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("not a directory", path=run_dir)
    metrics: dict[str, Any] = {}
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        try:
            loaded = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"not valid JSON ({exc})", path=metrics_path) from None
        if not isinstance(loaded, dict):
            raise InputError("expected a JSON object", path=metrics_path)
        metrics = loaded
    run_info = load_run_info(run_dir)
    source_dir = (metrics.get("source") or {}).get("run_dir")
    if run_info is None and isinstance(source_dir, str) and Path(source_dir).is_dir():
        run_info = load_run_info(Path(source_dir))
    if not metrics and run_info is None:
        raise InputError("nothing to report: no metrics.json, stats.json or iterations/ in it", path=run_dir)
    return write_report(run_dir / REPORT_FILE, metrics, run_info)
