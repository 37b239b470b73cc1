"""report.html sections of the optional features (metrics.json "big_five", "languages", "scenarios", "sessions").

In: the metrics dict; out: HTML strings (empty when the dataset does not use a feature). Every
string from the data is escaped; figures are inline PNG like the rest of the report.
"""

from __future__ import annotations

from typing import Any

from personaloom.evaluate.html import DATA_COLOUR, REF_COLOUR, esc, figure, num, pct, plt_headless, table
from personaloom.records import TRAITS


def _agreement_figure(rows: list[tuple[str, dict[str, Any]]]) -> str:
    plt = plt_headless()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / max(1, len(rows))
    for s, ((label, block), colour) in enumerate(zip(rows, (DATA_COLOUR, REF_COLOUR), strict=False)):
        values = [100 * float(block["traits"].get(t, {}).get("agreement") or 0.0) for t in TRAITS]
        xs = [i + (s - (len(rows) - 1) / 2) * width for i in range(len(TRAITS))]
        bars = ax.bar(xs, values, width=width, color=colour, label=label)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.axhline(50, color="#8a93a3", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(TRAITS)), list(TRAITS), fontsize=9)
    ax.set_ylim(0, 110)
    ax.set_ylabel("% of speakers read as set")
    ax.set_title("Big Five: set level vs the judge's reading (dashed: chance)")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return figure(fig, "Big Five agreement per trait")


def big_five_section(m: dict[str, Any] | None) -> str:
    if not isinstance(m, dict):
        return ""
    head = (
        "<h2>Big Five personality</h2>"
        f'<p class="note">{num(m.get("conversations"))} conversations whose speakers were given Big Five levels. '
        "Agreement: the share of (speaker, trait) readings in which the traits expert, not told the levels, "
        "read from the utterances the level the speaker was given (chance: 50%). <i>critic</i>: the readings "
        "the critic made while choosing the kept conversations (they passed its threshold, so this is an "
        "upper bound); <i>judge</i>: a fresh reading by the evaluation judge.</p>"
    )
    blocks = [(name, m[name]) for name in ("critic", "judge") if isinstance(m.get(name), dict) and m[name]["traits"]]
    if not blocks:
        return head + '<p class="missing">no readings: the traits expert was off and no judge ran</p>'
    header = ["trait", *[f"{esc(name)} agreement" for name, _ in blocks], *[f"{esc(name)} n" for name, _ in blocks]]
    rows = []
    for trait in TRAITS:
        cells = [b["traits"].get(trait, {}) for _, b in blocks]
        rows.append([esc(trait), *[pct(c.get("agreement")) for c in cells], *[num(c.get("judged")) for c in cells]])
    rows.append(["<b>all traits</b>", *[pct(b.get("overall")) for _, b in blocks], *["" for _ in blocks]])
    levels = ", ".join(f"{esc(k)}: {num(v)}" for k, v in (m.get("levels") or {}).items())
    return (
        head + table(header, rows) + _agreement_figure(blocks)
        + f'<p class="note">levels given (speakers): {levels or "–"}</p>'
    )


def languages_section(m: dict[str, Any] | None) -> str:
    if not isinstance(m, dict):
        return ""
    rows = []
    for code, row in (m.get("by_language") or {}).items():
        utt, att = row.get("utterances") or {}, row.get("attributes") or {}
        seen = ", ".join(f"{esc(k)} {num(v)}" for k, v in (row.get("identified_as") or {}).items())
        rows.append([
            esc(code), num(row.get("conversations")), pct(utt.get("rate")), num(utt.get("unknown")),
            pct(att.get("rate")), seen,
        ])
    return (
        "<h2>Language</h2>"
        '<p class="note">Conversations by their <code>language</code> field, and the share of utterances and '
        "persona attributes identified as written in it (by script, then frequent function words and "
        "distinctive letters; lines it cannot tell are left out of the rate). Distinct-n above uses "
        "Unicode word tokens (one token per Han/kana character). Persona coverage uses the configured "
        "embedding model: the default all-MiniLM-L6-v2 is English-only, so read coverage in other "
        "languages with care.</p>"
        + table(["language", "conversations", "utterances in it", "utterances unclear", "attributes in it",
                 "utterances identified as"], rows)
    )


def scenarios_section(m: dict[str, Any] | None) -> str:
    if not isinstance(m, dict):
        return ""
    rows = [[esc(text), num(n)] for text, n in (m.get("by_scenario") or {}).items()]
    return (
        "<h2>Scenarios</h2>"
        f'<p class="note">{num(m.get("conversations"))} conversations generated for {num(m.get("scenarios"))} '
        "scenarios (generate.scenarios), by their <code>scenario</code> field.</p>"
        + table(["scenario", "conversations"], rows)
    )


def sessions_section(m: dict[str, Any] | None, run_verdicts: dict[str, Any] | None = None) -> str:
    if not isinstance(m, dict):
        return ""
    dist = ", ".join(f"{esc(k)} sessions: {num(v)}" for k, v in (m.get("sessions_per_conversation") or {}).items())
    gaps = ", ".join(f"{esc(k)}: {num(v)}" for k, v in (m.get("gaps") or {}).items())
    rows = [
        ["conversations with sessions", num(m.get("conversations"))],
        ["sessions per conversation", dist or "–"],
        ["utterances per session (mean)", num(m.get("utterances_per_session"), 1)],
        ["later sessions / with a memory summary", f"{num(m.get('later_sessions'))} / {num(m.get('with_memory'))}"],
        ["gaps", gaps or "–"],
    ]
    critic = (run_verdicts or {}).get("cross_session")
    if critic:
        judged = sum(v for k, v in critic.items() if k != "abstain")
        rows.append([
            "critic: candidate sessions found consistent",
            f"{pct(critic.get('pass', 0) / judged if judged else None)} of {num(judged)} "
            f"(rejected {num(critic.get('reject', 0))})",
        ])
    judge = m.get("judge")
    if isinstance(judge, dict):
        rows.append([
            "judge: kept later sessions consistent with the earlier ones",
            f"{pct(judge.get('consistent_rate'))} of {num(judge.get('judged'))}",
        ])
    else:
        rows.append(["judge: cross-session consistency", "not run (no judge)"])
    return "<h2>Multi-session conversations</h2>" + table(["", "value"], rows)


def feature_sections(metrics: dict[str, Any], run_verdicts: dict[str, Any] | None = None) -> str:
    return "".join(
        (
            big_five_section(metrics.get("big_five")),
            languages_section(metrics.get("languages")),
            scenarios_section(metrics.get("scenarios")),
            sessions_section(metrics.get("sessions"), run_verdicts),
        )
    )
