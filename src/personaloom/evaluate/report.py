"""The self-contained HTML report: metrics.json (+ a run directory's files) in, one HTML file out.

In: the metrics dict that evaluate/suite.py writes, and optionally `RunInfo` read from a run directory
(iterations/<k>/{candidates,verdicts,selected}.jsonl, stats.json). Out: report.html with inline CSS
and matplotlib figures embedded as base64 PNG: no script, no external URL, so it opens anywhere,
offline, and can be mailed as one file. Every string from the data is HTML-escaped.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personaloom.evaluate.html import DATA_COLOUR, REF_COLOUR, esc, figure, num, pct, plt_headless, table
from personaloom.evaluate.report_features import feature_sections
from personaloom.fsutil import atomic_write_text

DEFECT_LABELS = {
    "empty": "empty",
    "blank_lines": "blank lines",
    "unprefixed": "unprefixed lines",
    "placeholders": "placeholders",
    "same_speaker": "same speaker twice",
    "any": "any defect",
}
# Published numbers to read ours against (Jandaghi et al. 2023).
PAPER_HITS = {"without_persona": 0.1869, "with_persona": 0.3686}
PAPER_TURING = "human raters spotted SPC conversations in 17.2% of pairs after iteration 1, 8.8% after iteration 3"

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1d2330;max-width:1100px;
margin:0 auto;padding:24px 32px 64px;line-height:1.45;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:2px solid #e3e7ee;
padding-bottom:4px}h3{font-size:16px;margin:20px 0 6px}
.meta{color:#5a6475;font-size:13px}.note{color:#5a6475;font-size:13px;margin:6px 0 12px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:14px}
th,td{border:1px solid #dde2ea;padding:5px 10px;text-align:right}
th{background:#f3f5f9;font-weight:600}td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fafbfd}
.fig{margin:10px 0 18px}.fig img{max-width:100%;border:1px solid #eef0f4}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #dde2ea;border-radius:6px;padding:10px 14px;min-width:150px;background:#fafbfd}
.card .v{font-size:22px;font-weight:600}.card .k{font-size:12px;color:#5a6475}
.missing{color:#8a93a3;font-style:italic}
"""


@dataclass
class RunInfo:
    """What a run directory adds to the report: the critic's verdicts and per-iteration counts."""

    path: str
    # iteration -> {"candidates": n, "kept": n, "rejected": {reason: n}}
    iterations: dict[int, dict[str, Any]] = field(default_factory=dict)
    # expert -> Counter(decision)
    verdicts: dict[str, Counter[str]] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    unreadable_lines: int = 0


def _read_jsonl(path: Path, info: RunInfo) -> Iterator[dict[str, Any]]:
    """The JSON objects of `path`, one line at a time (a 20k-pair round's verdicts are ~200 MB)."""
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    info.unreadable_lines += 1
                    continue
                if isinstance(value, dict):
                    yield value
    except (OSError, UnicodeDecodeError):
        return


def _count(rows: Iterable[object]) -> int:
    return sum(1 for _ in rows)


def _from_summary(folder: Path, k: int, info: RunInfo) -> bool:
    """Round k's counts from its summary.json, when it has them (runs since the round writer counts decisions);
    False to read its files instead."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        decisions, rejected = summary["decisions"], summary["rejected_conversations"]
        counts = {"candidates": int(summary["candidates"]), "kept": int(summary["kept"])}
        tally = {str(e): Counter({str(d): int(n) for d, n in by.items()}) for e, by in decisions.items()}
        rejected_by = {str(e): int(n) for e, n in sorted(rejected.items())}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return False
    for expert, by_decision in tally.items():
        info.verdicts.setdefault(expert, Counter()).update(by_decision)
    info.iterations[k] = {**counts, "rejected": rejected_by}
    return True


def load_run_info(run_dir: Path) -> RunInfo | None:
    """RunInfo from a run directory, or None when it has neither iterations/ nor stats.json."""
    iterations_dir = run_dir / "iterations"
    stats_path = run_dir / "stats.json"
    if not iterations_dir.is_dir() and not stats_path.is_file():
        return None
    info = RunInfo(path=str(run_dir))
    if iterations_dir.is_dir():
        folders = [p for p in iterations_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        for folder in sorted(folders, key=lambda p: int(p.name)):
            k = int(folder.name)
            if _from_summary(folder, k, info):
                continue
            rejected_ids: dict[str, set[str]] = {}
            for v in _read_jsonl(folder / "verdicts.jsonl", info):
                expert, decision = str(v.get("expert", "?")), str(v.get("decision", "?"))
                info.verdicts.setdefault(expert, Counter())[decision] += 1
                if decision == "reject":
                    rejected_ids.setdefault(expert, set()).add(str(v.get("conversation_id")))
            info.iterations[k] = {
                "candidates": _count(_read_jsonl(folder / "candidates.jsonl", info)),
                "kept": _count(_read_jsonl(folder / "selected.jsonl", info)),
                "rejected": {e: len(ids) for e, ids in sorted(rejected_ids.items())},
            }
    if stats_path.is_file():
        try:
            loaded = json.loads(stats_path.read_text(encoding="utf-8"))
            info.stats = loaded if isinstance(loaded, dict) else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            info.stats = None
    return info


# ---- formatting helpers ------------------------------------------------------------------------


# ---- figures -----------------------------------------------------------------------------------


def defect_figure(data: dict[str, Any], ref: dict[str, Any] | None) -> str:
    plt = plt_headless()
    kinds = list(DEFECT_LABELS)
    fig, ax = plt.subplots(figsize=(9, 3.4))
    series = [("data", data, DATA_COLOUR)] + ([("reference", ref, REF_COLOUR)] if ref else [])
    width = 0.8 / len(series)
    for s, (label, m, colour) in enumerate(series):
        n = max(1, int(m.get("conversations", 0)))
        values = [100 * m.get("defects", {}).get(k, 0) / n for k in kinds]
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(kinds))]
        bars = ax.bar(xs, values, width=width, color=colour, label=label)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(kinds)), [DEFECT_LABELS[k].replace(" ", "\n") for k in kinds], fontsize=9)
    top = max([100 * m.get("defects", {}).get("any", 0) / max(1, int(m.get("conversations", 0))) for _, m, _ in series])
    ax.set_ylim(0, max(1.0, top * 1.15))
    ax.set_ylabel("% of conversations")
    ax.set_title("Format defects (DESIGN.md §3)")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return figure(fig, "format defects, data vs reference")


def _hist_bars(ax: Any, hist: dict[str, Any], colour: str, label: str, offset: float, width: float) -> None:
    counts = hist.get("counts", [])
    total = max(1, sum(counts))
    xs = [i + offset for i in range(len(counts))]
    ax.bar(xs, [100 * c / total for c in counts], width=width, color=colour, label=label)


def _bin_labels(edges: list[float]) -> list[str]:
    out = []
    for lo, hi in itertools.pairwise(edges):
        out.append(f"{int(lo)}+" if hi >= 1000 else f"{int(lo)}–{int(hi) - 1}")
    return out


def length_figure(data: dict[str, Any], ref: dict[str, Any] | None) -> str:
    plt = plt_headless()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, key, title in (
        (axes[0], "utterances_per_conversation", "Utterances per conversation"),
        (axes[1], "words_per_utterance", "Words per utterance"),
    ):
        series = [("data", data, DATA_COLOUR)] + ([("reference", ref, REF_COLOUR)] if ref else [])
        width = 0.8 / len(series)
        edges: list[float] = []
        for s, (label, m, colour) in enumerate(series):
            summ = m.get(key, {})
            hist = summ.get("hist", {"edges": [], "counts": []})
            edges = hist.get("edges", edges)
            mean = summ.get("mean", 0.0)
            _hist_bars(ax, hist, colour, f"{label} (mean {mean:.1f})", (s - (len(series) - 1) / 2) * width, width)
        ax.set_xticks(range(max(0, len(edges) - 1)), _bin_labels(edges), rotation=45, fontsize=8)
        ax.set_ylabel("% of items")
        ax.set_title(title)
        ax.legend(frameon=False, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    return figure(fig, "length distributions, data vs reference")


def distinct_figure(data: dict[str, Any], ref: dict[str, Any] | None) -> str:
    plt = plt_headless()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    keys = ["distinct_1", "distinct_2", "distinct_3"]
    series = [("data", data, DATA_COLOUR)] + ([("reference", ref, REF_COLOUR)] if ref else [])
    width = 0.8 / len(series)
    for s, (label, m, colour) in enumerate(series):
        values = [float(m.get(k) or 0.0) for k in keys]
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(keys))]
        bars = ax.bar(xs, values, width=width, color=colour, label=label)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(keys)), ["distinct-1", "distinct-2", "distinct-3"])
    ax.set_ylabel("unique / total n-grams")
    ax.set_title("Lexical diversity")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return figure(fig, "distinct-n, data vs reference")


def turing_figure(turing: dict[str, Any]) -> str:
    plt = plt_headless()
    fig, ax = plt.subplots(figsize=(6, 3))
    names = ["lose", "win", "tie"]
    values = [100 * float(turing.get(k) or 0.0) for k in names]
    ci = turing.get("ci95", {})
    lo = [v - 100 * ci.get(k, [0, 0])[0] for k, v in zip(names, values, strict=True)]
    hi = [100 * ci.get(k, [0, 0])[1] - v for k, v in zip(names, values, strict=True)]
    ax.bar(names, values, color=["#b5493b", "#4a8f4a", "#8a93a3"], yerr=[lo, hi], capsize=6)
    ax.set_ylabel("% of pairs")
    ax.set_ylim(0, 100)
    ax.set_title(f"Turing test (n = {turing.get('n', 0)}, 95% Wilson intervals)")
    ax.spines[["top", "right"]].set_visible(False)
    return figure(fig, "Turing test outcome rates")


def critic_figures(run: RunInfo) -> str:
    plt = plt_headless()
    parts: list[str] = []
    if run.verdicts:
        experts = sorted(run.verdicts)
        decisions = sorted({d for c in run.verdicts.values() for d in c})
        palette = ["#3b6ea5", "#d08a3c", "#4a8f4a", "#b5493b", "#8a6bb0", "#8a93a3", "#c2b23a", "#3aa3a0"]
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(experts) + 1.4))
        left = [0] * len(experts)
        for i, d in enumerate(decisions):
            values = [run.verdicts[e].get(d, 0) for e in experts]
            ax.barh(experts, values, left=left, color=palette[i % len(palette)], label=d)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.set_xlabel("verdicts")
        ax.set_title("Critic verdicts by expert")
        ax.legend(
            frameon=False, fontsize=8, ncol=min(6, len(decisions)), loc="upper center", bbox_to_anchor=(0.5, -0.25)
        )
        ax.spines[["top", "right"]].set_visible(False)
        parts.append(figure(fig, "critic verdict distribution by expert"))
    if run.iterations:
        ks = sorted(run.iterations)
        kept = [run.iterations[k]["kept"] for k in ks]
        rejected = [max(0, run.iterations[k]["candidates"] - run.iterations[k]["kept"]) for k in ks]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar([str(k) for k in ks], kept, color="#4a8f4a", label="kept")
        ax.bar([str(k) for k in ks], rejected, bottom=kept, color="#b5493b", label="not kept")
        ax.set_xlabel("iteration")
        ax.set_ylabel("candidates")
        ax.set_title("Candidates per iteration")
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        parts.append(figure(fig, "kept and rejected candidates per iteration"))
    return "".join(parts)


# ---- sections ----------------------------------------------------------------------------------


def _summary_rows(data: dict[str, Any], ref: dict[str, Any] | None) -> list[list[str]]:
    def cov(m: dict[str, Any] | None) -> str:
        c = (m or {}).get("persona_coverage")
        return pct(c.get("rate")) if isinstance(c, dict) else "–"

    def hits(m: dict[str, Any] | None, k: str) -> str:
        h = (m or {}).get("ir_hits_at_1")
        return pct(h.get(k), 2) if isinstance(h, dict) else "–"

    def defects_any(m: dict[str, Any] | None) -> str:
        if not m:
            return "–"
        n = m.get("conversations", 0)
        k = m.get("defects", {}).get("any", 0)
        return f"{k:,} ({pct(k / n) if n else '–'})"

    def get(m: dict[str, Any] | None, *path: str) -> Any:
        node: Any = m
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        return node

    rows = [
        ["conversations", num(data.get("conversations")), num(get(ref, "conversations"))],
        ["conversations with a format defect", defects_any(data), defects_any(ref)],
        [
            "utterances per conversation (mean)",
            num(get(data, "utterances_per_conversation", "mean"), 2),
            num(get(ref, "utterances_per_conversation", "mean"), 2),
        ],
        [
            "words per utterance (mean)",
            num(get(data, "words_per_utterance", "mean"), 2),
            num(get(ref, "words_per_utterance", "mean"), 2),
        ],
        ["vocabulary size", num(data.get("vocab_size")), num(get(ref, "vocab_size"))],
        ["distinct-1", num(data.get("distinct_1"), 4), num(get(ref, "distinct_1"), 4)],
        ["distinct-2", num(data.get("distinct_2"), 4), num(get(ref, "distinct_2"), 4)],
        ["distinct-3", num(data.get("distinct_3"), 4), num(get(ref, "distinct_3"), 4)],
        ["persona coverage", cov(data), cov(ref)],
        ["hits@1, with persona", hits(data, "with_persona"), hits(ref, "with_persona")],
        ["hits@1, without persona", hits(data, "without_persona"), hits(ref, "without_persona")],
    ]
    return [[esc(r[0]), r[1], r[2]] for r in rows]


def hits_section(metrics: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    for label, h in (
        ("data (fit and test on data)", metrics.get("ir_hits_at_1")),
        ("reference (fit and test on reference)", (metrics.get("reference") or {}).get("ir_hits_at_1")),
        ("transfer: fit on data, test on reference", (metrics.get("ir_transfer") or {}).get("generated->reference")),
    ):
        if isinstance(h, dict):
            rows.append(
                [esc(label), pct(h.get("with_persona"), 2), pct(h.get("without_persona"), 2), num(h.get("examples"))]
            )
    rows.append(
        [
            esc("paper, Persona-Chat (Jandaghi et al. 2023)"),
            pct(PAPER_HITS["with_persona"], 2),
            pct(PAPER_HITS["without_persona"], 2),
            "–",
        ]
    )
    return (
        "<h2>Next-utterance prediction (tf-idf retrieval, hits@1 of 20)</h2>"
        '<p class="note">Query = the previous utterance, with or without the replying speaker\'s persona '
        "prepended; 19 distractors are utterances of other conversations (seeded). Chance is 5%. Ties share "
        "the credit.</p>" + table(["setting", "with persona", "without persona", "examples"], rows)
    )


def turing_section(turing: dict[str, Any] | None, note: str | None) -> str:
    head = "<h2>AI-detection (Turing) test, LLM judge</h2>"
    if not isinstance(turing, dict):
        return head + f'<p class="missing">{esc(note or "not run (no judge)")}</p>'
    ci = turing.get("ci95", {})
    counts = turing.get("counts", {})
    rows = [
        [esc(k), pct(turing.get(k)), f"{pct(ci.get(k, [0, 0])[0])} – {pct(ci.get(k, [0, 0])[1])}", num(counts.get(k))]
        for k in ("lose", "win", "tie")
    ]
    return (
        head + '<p class="note">Each generated conversation is paired with a human one (the same user pair when the '
        "personas match), shown twice with the positions swapped. lose = the judge spotted the generated one "
        "both times; win = it picked the human one both times; tie = it changed its mind with the order. "
        f"For scale: {esc(PAPER_TURING)}.</p>"
        + table(["outcome", "rate", "95% CI", "pairs"], rows)
        + f'<p class="note">n = {num(turing.get("n"))} pairs judged, {num(turing.get("invalid"))} unparseable, '
        f"{num(turing.get('matched_pairs'))} of {num(turing.get('pairs'))} paired by the same user pair.</p>"
        + turing_figure(turing)
    )


def faithfulness_section(faith: dict[str, Any] | None, note: str | None) -> str:
    head = "<h2>Persona faithfulness test, LLM judge</h2>"
    if not isinstance(faith, dict):
        return head + f'<p class="missing">{esc(note or "not run (no judge)")}</p>'
    picked = faith.get("picked_rate", {})
    shown = faith.get("shown", {})
    rows = [[esc(k), pct(v), num(shown.get(k))] for k, v in picked.items() if shown.get(k)]
    return (
        head + '<p class="note">Per conversation and speaker, 8 statements: 4 true persona attributes and 4 '
        "distractors (an LLM negation of a true one, an LLM-written contradiction, 2 attributes of another "
        "profile; unusable LLM distractors are replaced by other-profile ones). The judge picks those that "
        "belong to the speaker.</p>"
        + table(
            ["precision", "recall", "F1", "items", "unparseable"],
            [
                [
                    pct(faith.get("precision")),
                    pct(faith.get("recall")),
                    pct(faith.get("f1")),
                    num(faith.get("n")),
                    num(faith.get("invalid")),
                ]
            ],
            left_cols=0,
        )
        + "<h3>How often the judge picked each kind of statement</h3>"
        + table(["kind", "picked", "shown"], rows)
    )


def toxicity_section(tox: dict[str, Any] | None, note: str | None) -> str:
    head = "<h2>Toxicity (critic's toxicity expert)</h2>"
    if not isinstance(tox, dict):
        return head + f'<p class="missing">{esc(note or "not run (no judge)")}</p>'
    return head + table(
        ["toxic rate", "toxic", "judged", "abstained"],
        [[pct(tox.get("rate")), num(tox.get("toxic")), num(tox.get("n")), num(tox.get("abstain"))]],
        left_cols=0,
    )


def judge_note(calibration: dict[str, Any], name: str) -> str:
    """One line under an LLM-judged table: how that judge did on its calibration probes."""
    row = calibration.get(name)
    if not isinstance(row, dict):
        return ""
    return (f'<p class="note">Judge calibration ({esc(name)}): accuracy {pct(row.get("accuracy"))} '
            f'(95% CI {pct(row.get("ci_low"))} – {pct(row.get("ci_high"))}, chance {pct(row.get("chance"))}) on '
            f'{num(row.get("n"))} labelled probes; position bias {num(row.get("position_bias"), 2)}.</p>')


def calibration_section(calibration: dict[str, Any]) -> str:
    """Each judge's accuracy on labelled probes with its interval against chance, its biases and kappa, and
    a warning panel for the judges at chance or following the order shown."""
    from personaloom.calibrate.command import warnings

    rows_in = {k: v for k, v in calibration.items() if isinstance(v, dict) and "accuracy" in v}
    if not rows_in:
        return ""
    rows = [[esc(name), pct(r["accuracy"]), f"{pct(r['ci_low'])} – {pct(r['ci_high'])}", pct(r["chance"]),
             num(r.get("position_bias"), 2), num(r.get("length_bias"), 2), num(r.get("kappa"), 2), num(r.get("n")),
             num(r.get("weight"), 2)] for name, r in rows_in.items()]
    plt = plt_headless()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows_in) + 1))
    names = list(rows_in)
    acc = [float(rows_in[n]["accuracy"]) for n in names]
    err = [[a - float(rows_in[n]["ci_low"]) for n, a in zip(names, acc, strict=True)],
           [float(rows_in[n]["ci_high"]) - a for n, a in zip(names, acc, strict=True)]]
    ax.barh(names, acc, xerr=err, color=DATA_COLOUR)
    ax.scatter([float(rows_in[n]["chance"]) for n in names], names, color=REF_COLOUR, marker="|", s=200, label="chance")
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy on labelled probes (95% CI)")
    ax.legend(loc="lower right")
    panel = "".join(f'<p class="missing">{esc(line)}</p>' for line in warnings(rows_in))
    return ("<h2>Judge calibration</h2><p class=\"note\">Every judge in use, asked about labelled probes built from "
            "real conversations (original vs degraded along the expert's criterion, both orders), hand-written "
            "toxic/benign conversations and attribute pairs. Chance: always giving the commonest label. Position "
            "bias: share of probe pairs where the judge picked the same position in both orders. Weight: the "
            "vote weight critic.weights=calibrated gives it (0 at chance).</p>" + panel
            + table(["judge", "accuracy", "95% CI", "chance", "position bias", "length bias", "kappa", "n", "weight"],
                    rows) + figure(fig, "judge accuracy against chance"))


def release_section(dedup: Any, contamination: Any, where: str) -> str:
    """Duplicates (personaloom.dedup) and contamination (personaloom.decontaminate) found `where`; "" when
    neither was measured."""
    rows = []
    if isinstance(dedup, dict):
        rows += [["exact duplicates", num(dedup.get("exact"))],
                 [f"near duplicates (estimated Jaccard of word {esc(dedup.get('shingle', 5))}-grams >= "
                  f"{esc(dedup.get('threshold'))})", num(dedup.get("near"))],
                 ["conversations checked", num(dedup.get("checked"))]]
    if isinstance(contamination, dict):
        sources = ", ".join(str(s) for s in contamination.get("sources", []))
        overlap = contamination.get("persona_overlap") or {}
        rows += [[f"sharing a {esc(contamination.get('ngram'))}-word run with an utterance of {esc(sources)}",
                  num(contamination.get("contaminated"))],
                 ["persona sentences also in those files (expected when seeding from them)",
                  f"{num(overlap.get('sentences'))} of {num(overlap.get('of'))}"]]
    if not rows:
        return ""
    return f'<h3>Duplicates and contamination</h3><p class="note">{esc(where)}</p>' + table(["", "count"], rows)


def run_section(run: RunInfo | None) -> str:
    if run is None:
        return ""
    parts = ["<h2>Generation run</h2>", f'<p class="note">run directory: {esc(run.path)}</p>']
    if run.iterations:
        rows = []
        for k in sorted(run.iterations):
            it = run.iterations[k]
            reasons = ", ".join(f"{esc(e)}: {n}" for e, n in it["rejected"].items()) or "–"
            rows.append([esc(k), num(it["candidates"]), num(it["kept"]), reasons])
        parts.append(table(["iteration", "candidates", "kept", "candidates rejected by"], rows))
    parts.append(critic_figures(run))
    stats = run.stats or {}
    llm = stats.get("llm")
    if isinstance(llm, dict):
        parts.append("<h3>LLM usage</h3>")
        keys = [k for k in llm if k != "retries"] + ["wall_s", "cost"]
        total = stats.get("total") if isinstance(stats.get("total"), dict) else {}
        latest = {**llm, "wall_s": stats.get("wall_s"), "cost": stats.get("cost")}
        rows = [["latest invocation", *(num(latest.get(k)) for k in keys)]]
        if total:
            rows.append([f"all {num(total.get('invocations'))} invocations of this run directory",
                         *(num(total.get(k)) for k in keys)])
        kept = stats.get("per_kept") if isinstance(stats.get("per_kept"), dict) else {}
        if kept:
            rows.append([f"per kept conversation ({num(stats.get('conversations'))} kept, all invocations)",
                         *(num(kept.get(k), 4 if k == "cost" else 2) if k in kept else "" for k in keys)])
        parts.append(table(["", *(esc(k) for k in keys)], rows))
    stages = stats.get("stages")
    if isinstance(stages, dict) and stages:
        rows = [
            [esc(name), num(s.get("wall_s"), 1), num(s.get("calls")), num(s.get("cache_hits"))]
            for name, s in stages.items()
            if isinstance(s, dict)
        ]
        parts.append("<h3>Stages</h3>" + table(["stage", "wall s", "LLM calls", "cache hits"], rows))
        # Requests fitted to the model's context window (executors/window.py), where any were.
        fit_keys = ("refitted", "examples_dropped", "turns_capped", "context_refused", "context_window")
        fitted = [(name, s) for name, s in stages.items() if isinstance(s, dict) and any(s.get(k) for k in fit_keys)]
        if fitted:
            parts.append("<h3>Context window</h3>" + table(
                ["stage", "requests refitted", "few-shot examples dropped", "example cut to fewer turns",
                 "refused for length", "could not fit (a listwise ranking: compared pairwise)"],
                [[esc(name), *(num(s.get(k, 0)) for k in fit_keys)] for name, s in fitted]))
    parts.append(release_section(stats.get("dedup"), stats.get("decontamination"),
                                 "removed by the run before its dataset was written (duplicates.jsonl, "
                                 "contaminated.jsonl)"))
    failures = stats.get("failures")
    if isinstance(failures, dict) and failures:
        parts.append("<h3>Failures</h3>" + table(["reason", "count"], [[esc(k), num(v)] for k, v in failures.items()]))
    if run.unreadable_lines:
        parts.append(f'<p class="note">{run.unreadable_lines} unreadable JSONL lines were skipped.</p>')
    return "".join(parts)


def render_report(metrics: dict[str, Any], run: RunInfo | None = None) -> str:
    source = metrics.get("source", {})
    ref = metrics.get("reference") if isinstance(metrics.get("reference"), dict) else None
    notes = metrics.get("notes", {}) if isinstance(metrics.get("notes"), dict) else {}
    body: list[str] = [
        "<h1>personaloom evaluation report</h1>",
        f'<p class="meta">data: {esc(source.get("data", "–"))}<br>reference: {esc(source.get("reference") or "none")}'
        f"<br>generated {esc(datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC'))}, seed {esc(source.get('seed', 0))}</p>",
    ]
    if metrics.get("conversations") is not None:
        cards = [
            ("conversations", num(metrics.get("conversations"))),
            ("with a format defect", num(metrics.get("defects", {}).get("any"))),
            ("distinct-2", num(metrics.get("distinct_2"), 3)),
            ("hits@1 with persona", pct((metrics.get("ir_hits_at_1") or {}).get("with_persona"), 1)),
        ]
        if isinstance(metrics.get("turing"), dict):
            cards.append(("Turing losing rate", pct(metrics["turing"].get("lose"))))
        if isinstance(metrics.get("faithfulness"), dict):
            cards.append(("faithfulness precision", pct(metrics["faithfulness"].get("precision"))))
        body.append(
            '<div class="cards">'
            + "".join(
                f'<div class="card"><div class="v">{v}</div><div class="k">{esc(k)}</div></div>' for k, v in cards
            )
            + "</div>"
        )
        body.append("<h2>Summary</h2>")
        body.append(table(["metric", "data", "reference"], _summary_rows(metrics, ref)))
        sampled = [(label, m) for label, m in (("data", metrics), ("reference", ref)) if m and m.get("metrics_sample")]
        if sampled:
            of = "; ".join(f"{label}: {num(m['metrics_sample'])} of {num(m.get('conversations'))}"
                           for label, m in sampled)
            body.append(
                f'<p class="note">Conversation and defect counts cover every conversation; the other metrics a '
                f"seeded sample of each large dataset ({of}).</p>"
            )
        cov = metrics.get("persona_coverage")
        if isinstance(cov, dict):
            body.append(
                f'<p class="note">Persona coverage: share of a speaker\'s attributes whose best cosine '
                f"similarity to that speaker's utterances is at least {esc(cov.get('threshold'))} "
                f"(sentence embeddings; a seeded sample of {num(cov.get('conversations'))} conversations "
                "per dataset).</p>"
            )
        body.append("<h2>Format defects</h2>")
        body.append(
            '<p class="note">Conversations having each defect kind: empty, blank lines, lines without a '
            "speaker prefix, name placeholders such as [User 1's name], two consecutive utterances by the "
            "same speaker.</p>"
        )
        body.append(defect_figure(metrics, ref))
        dkeys = list(DEFECT_LABELS)
        drows = [
            [
                esc(DEFECT_LABELS[k]),
                num(metrics.get("defects", {}).get(k)),
                num((ref or {}).get("defects", {}).get(k)) if ref else "–",
            ]
            for k in dkeys
        ]
        body.append(table(["defect", "data", "reference"], drows))
        body.append("<h2>Length and diversity</h2>")
        body.append(length_figure(metrics, ref))
        body.append(distinct_figure(metrics, ref))
        body.append(hits_section(metrics))
        body.append(release_section(metrics.get("duplicates"), metrics.get("contamination"),
                                    "in the data evaluated (counted, not removed)"))
        found = metrics.get("calibration")
        calibration: dict[str, Any] = found if isinstance(found, dict) else {}
        for name, section in (("turing", turing_section), ("faithfulness", faithfulness_section),
                              ("toxicity", toxicity_section)):
            ran = isinstance(metrics.get(name), dict)
            body.append(section(metrics.get(name), notes.get(name)) + (judge_note(calibration, name) if ran else ""))
        body.append(calibration_section(calibration))

        body.append(feature_sections(metrics, run.verdicts if run is not None else None))
    else:
        body.append('<p class="missing">No metrics.json: run `personaloom evaluate` for the dataset metrics.</p>')
    body.append(run_section(run))
    timing = metrics.get("timing")
    if isinstance(timing, dict) and timing:
        body.append(
            '<p class="note">evaluation time: '
            + ", ".join(f"{esc(k)} {float(v):.1f}s" for k, v in timing.items())
            + "</p>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>personaloom evaluation report</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_report(path: Path, metrics: dict[str, Any], run: RunInfo | None = None) -> Path:
    atomic_write_text(path, render_report(metrics, run))
    return path
