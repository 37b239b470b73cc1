"""Scores of an annotation study: what the paper reports from its human raters.

In: a Session (its SQLite store). Out: `results()` -> dict, `results_csv()` -> one CSV row per answer.

- AI detection: each rater's answer is "spotted" (picked the machine-made side), "fooled" (picked the
  human one) or "cant_tell". An item's outcome is the raters' plurality: spotted -> lose, fooled -> win,
  cant_tell or no single plurality -> tie (lose = the generated conversation was spotted, as in the paper).
  Rates are over items with at least one answer.
- Faithfulness: precision = true statements picked / statements picked and recall = true statements
  picked / true statements shown, micro-averaged over all answers; the "majority" variants score the
  statements that a strict majority of an item's raters picked. picked_rate: share picked per kind.
- Fleiss' kappa per task (subjects: detection items; faithfulness (item, statement) pairs, picked or not),
  over subjects with at least two ratings, allowing a varying number of raters per subject.
- Per rater: answers given, median seconds per item (answered_at - the last time the item was served).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from personaloom.annotate.store import Session, connect
from personaloom.fsutil import atomic_open

LABEL_OUTCOME = {"spotted": "lose", "fooled": "win", "cant_tell": "tie"}
CSV_FIELDS = [
    "item_id", "task", "rater", "answer", "label", "picked_true", "picked_false", "true_shown",
    "served_at", "answered_at", "seconds", "generated_id", "reference_id", "conversation_id",
]  # fmt: skip


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of a subjects x categories count table; None when undefined.

    Rows with fewer than two ratings are ignored; rows may have different totals (each row's
    agreement is computed with its own number of raters).
    """
    rows = [list(r) for r in table if sum(r) >= 2]
    if not rows:
        return None
    total = sum(sum(r) for r in rows)
    p_bar = statistics.fmean(sum(c * (c - 1) for c in r) / (sum(r) * (sum(r) - 1)) for r in rows)
    p_e = sum((sum(r[j] for r in rows) / total) ** 2 for j in range(len(rows[0])))
    if p_e >= 1.0:
        return None  # every rating in one category: agreement is not measurable
    return (p_bar - p_e) / (1.0 - p_e)


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 6) if n else None


def _label(payload: dict[str, Any], answer: dict[str, Any]) -> str:
    choice = answer.get("choice")
    if choice == "cant_tell":
        return "cant_tell"
    return "spotted" if choice == payload["machine"] else "fooled"


def _plurality(labels: list[str]) -> str:
    ranked = Counter(labels).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return "tie"
    return LABEL_OUTCOME[ranked[0][0]]


def _load(session: Session) -> tuple[dict[int, tuple[str, dict[str, Any]]], list[dict[str, Any]], dict[int, str]]:
    conn = connect(session.db_path)
    try:
        items = {i: (t, json.loads(p)) for i, t, p in conn.execute("SELECT id, task, payload FROM items")}
        names = {i: n for i, n in conn.execute("SELECT id, name FROM raters")}
        answers = [
            {"rater_id": r, "item_id": i, "answer": json.loads(a), "served_at": s, "answered_at": t}
            for r, i, a, s, t in conn.execute(
                "SELECT rater_id, item_id, answer, served_at, answered_at FROM answers ORDER BY item_id, rater_id"
            )
        ]
    finally:
        conn.close()
    return items, answers, names


def _seconds(a: dict[str, Any]) -> float | None:
    if a["served_at"] is None:
        return None
    return max(0.0, float(a["answered_at"]) - float(a["served_at"]))


def results(session: Session) -> dict[str, Any]:
    """Lose/win/tie, faithfulness precision/recall, Fleiss' kappa, per-rater counts and times."""
    items, answers, names = _load(session)
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in answers:
        by_item[a["item_id"]].append(a)
    n_raters = len(names)

    # AI detection
    outcomes: Counter[str] = Counter()
    turing_table: list[list[int]] = []
    turing_secs: list[float] = []
    turing_ids = [i for i, (t, _) in items.items() if t == "turing"]
    for i in turing_ids:
        got = by_item.get(i, [])
        labels = [_label(items[i][1], a["answer"]) for a in got]
        if labels:
            outcomes[_plurality(labels)] += 1
            turing_table.append([labels.count(x) for x in LABEL_OUTCOME])
        turing_secs.extend(s for a in got if (s := _seconds(a)) is not None)
    answered_t = sum(outcomes.values())
    turing: dict[str, Any] = {
        "items": len(turing_ids),
        "items_answered": answered_t,
        "items_complete": sum(1 for i in turing_ids if len(by_item.get(i, [])) >= n_raters),
        **{o: _rate(outcomes[o], answered_t) for o in ("lose", "win", "tie")},
        "counts": {o: outcomes[o] for o in ("lose", "win", "tie")},
        "answers": sum(len(by_item.get(i, [])) for i in turing_ids),
        "kappa": fleiss_kappa(turing_table),
        "median_s": _median(turing_secs),
    }

    # Faithfulness
    tp = picked = shown_true = 0
    mtp = mpicked = mshown = 0
    kind_picked: Counter[str] = Counter()
    kind_shown: Counter[str] = Counter()
    faith_table: list[list[int]] = []
    faith_secs: list[float] = []
    faith_ids = [i for i, (t, _) in items.items() if t == "faithfulness"]
    for i in faith_ids:
        got = by_item.get(i, [])
        if not got:
            continue
        cands = items[i][1]["candidates"]
        votes = [0] * len(cands)
        for a in got:
            chosen = set(a["answer"].get("picked", []))
            for k, c in enumerate(cands):
                kind_shown[c["kind"]] += 1
                if k in chosen:
                    votes[k] += 1
                    kind_picked[c["kind"]] += 1
            picked += len(chosen)
            tp += sum(1 for k in chosen if cands[k]["kind"] == "true")
            shown_true += sum(1 for c in cands if c["kind"] == "true")
            if (s := _seconds(a)) is not None:
                faith_secs.append(s)
        majority = {k for k, v in enumerate(votes) if v * 2 > len(got)}
        mpicked += len(majority)
        mtp += sum(1 for k in majority if cands[k]["kind"] == "true")
        mshown += sum(1 for c in cands if c["kind"] == "true")
        faith_table.extend([v, len(got) - v] for v in votes)
    faithfulness: dict[str, Any] = {
        "items": len(faith_ids),
        "items_answered": sum(1 for i in faith_ids if by_item.get(i)),
        "items_complete": sum(1 for i in faith_ids if len(by_item.get(i, [])) >= n_raters),
        "answers": sum(len(by_item.get(i, [])) for i in faith_ids),
        "precision": _rate(tp, picked),
        "recall": _rate(tp, shown_true),
        "majority_precision": _rate(mtp, mpicked),
        "majority_recall": _rate(mtp, mshown),
        "picked_rate": {k: _rate(kind_picked[k], kind_shown[k]) for k in sorted(kind_shown)},
        "kappa": fleiss_kappa(faith_table),
        "median_s": _median(faith_secs),
    }

    per_rater = []
    for rid, name in sorted(names.items()):
        mine = [a for a in answers if a["rater_id"] == rid]
        per_rater.append(
            {
                "rater": name,
                "answered": len(mine),
                "of": len(items),
                "median_s": _median([s for a in mine if (s := _seconds(a)) is not None]),
            }
        )
    return {
        "items": len(items),
        "raters": n_raters,
        "answers": len(answers),
        "turing": turing,
        "faithfulness": faithfulness,
        "per_rater": per_rater,
        "median_s": _median([s for a in answers if (s := _seconds(a)) is not None]),
    }


def _write_csv(fh: IO[str], session: Session) -> int:
    items, answers, names = _load(session)
    writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for a in answers:
        task, payload = items[a["item_id"]]
        row: dict[str, Any] = {
            "item_id": a["item_id"],
            "task": task,
            "rater": names[a["rater_id"]],
            "answer": json.dumps(a["answer"], sort_keys=True),
            "served_at": a["served_at"],
            "answered_at": a["answered_at"],
            "seconds": _seconds(a),
        }
        if task == "turing":
            row.update(
                label=_label(payload, a["answer"]),
                generated_id=payload["generated_id"],
                reference_id=payload["reference_id"],
            )
        else:
            chosen = set(a["answer"].get("picked", []))
            kinds = [c["kind"] for c in payload["candidates"]]
            row.update(
                picked_true=sum(1 for k in chosen if kinds[k] == "true"),
                picked_false=sum(1 for k in chosen if kinds[k] != "true"),
                true_shown=kinds.count("true"),
                conversation_id=payload["conversation_id"],
            )
        writer.writerow(row)
    return len(answers)


def results_csv(session: Session, path: str | Path) -> int:
    """Write one row per answer (rater names, never tokens) atomically; returns the number of rows."""
    with atomic_open(path) as fh:
        return _write_csv(fh, session)


def csv_text(session: Session) -> str:
    """The same CSV as a string (the results page's download)."""
    buf = io.StringIO()
    _write_csv(buf, session)
    return buf.getvalue()
