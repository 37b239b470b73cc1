"""Evaluation lines of the optional features: Big Five, native multilingual generation, multi-session.

In: conversations (and optionally an LLM judge, which decodes greedily). Out: one JSON-ready dict per
feature, or None when no conversation uses it:
- `big_five(convs)`: per-trait agreement between the level a speaker was given and the level the
  traits expert read from their utterances ({trait: {"agreement", "matches", "judged"}} plus
  "overall"), from the critic's own readings kept in each conversation (`critic.traits`, per session
  too) and, with a judge, from a fresh blind reading ("judge").
- `languages(convs)`: conversations per `language` code, and per target language the share of
  utterances (and persona attributes) identified as written in it (personaloom.text.identify).
- `sessions(convs)`: sessions per conversation, utterances per session, the gaps, how many later
  sessions carry a memory and, with a judge, the share of later sessions the cross-session expert finds
  consistent with the earlier ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from personaloom.chat import LLMClient
from personaloom.evaluate.judging import judge_context, judge_each
from personaloom.records import TRAITS, Conversation, SessionContext, Verdict
from personaloom.stages.critic import experts
from personaloom.stages.critic.registry import ABSTAIN, ExpertContext
from personaloom.text import identify, language_share, primary_subtag, share_of
from personaloom.traits import agreement, agreement_rate, level


def _agreement_table(pairs: list[tuple[Conversation, dict[str, Any]]]) -> dict[str, Any]:
    """pairs: (conversation, reading {"user1": {...}, "user2": {...}}) -> per-trait agreement."""
    totals: dict[str, list[int]] = {t: [0, 0] for t in TRAITS}
    for conv, reading in pairs:
        per_trait = agreement({"user1": conv.user1_traits, "user2": conv.user2_traits}, reading)
        for trait, (m, n) in per_trait.items():
            totals[trait][0] += m
            totals[trait][1] += n
    table = {
        t: {"agreement": round(m / n, 4), "matches": m, "judged": n} for t, (m, n) in totals.items() if n
    }
    overall = agreement_rate({t: (m, n) for t, (m, n) in totals.items() if n})
    return {"traits": table, "overall": None if overall is None else round(overall, 4), "readings": len(pairs)}


def _critic_readings(conv: Conversation) -> list[dict[str, Any]]:
    critic = conv.critic
    if critic is None:
        return []
    found = [s.traits for s in critic.sessions or []] or [critic.traits]
    return [r for r in found if r is not None]


async def big_five(
    convs: Sequence[Conversation], judge: LLMClient | None, seed: int, sample: Sequence[Conversation] | None = None
) -> tuple[dict[str, Any] | None, list[Verdict]]:
    """sample: the conversations the judge reads (default: all)."""
    with_traits = [c for c in convs if experts.judged_traits(c)]
    if not with_traits:
        return None, []
    levels = Counter(
        f"{t}={level(v)}" for c in with_traits for side in (c.user1_traits, c.user2_traits)
        for t, v in (side or {}).items()
    )
    out: dict[str, Any] = {
        "conversations": len(with_traits),
        "levels": dict(sorted(levels.items())),
        "critic": _agreement_table([(c, r) for c in with_traits for r in _critic_readings(c)]),
        "judge": None,
    }
    verdicts: list[Verdict] = []
    if judge is not None:
        judged = [c for c in (convs if sample is None else sample) if experts.judged_traits(c)]
        verdicts = await judge_each("traits", judged, judge, seed)
        read = [(c, v.reading) for c, v in zip(judged, verdicts, strict=True) if v.reading]
        out["judge"] = {**_agreement_table(read), "abstain": len(verdicts) - len(read)}
    return out, verdicts


def languages(convs: Sequence[Conversation]) -> dict[str, Any] | None:
    tagged = [c for c in convs if c.language]
    if not tagged:
        return None
    by_code: dict[str, list[Conversation]] = {}
    for c in tagged:
        by_code.setdefault(str(c.language), []).append(c)
    per_language: dict[str, Any] = {}
    for code, group in sorted(by_code.items()):
        found = [identify(t.text) for c in group for t in c.all_turns()]
        attributes = [a for c in group for a in [*c.user1_persona, *c.user2_persona]]
        identified = Counter(f or "unknown" for f in found)
        per_language[code] = {
            "conversations": len(group),
            "utterances": share_of(found, code),
            "attributes": language_share(attributes, code),
            "identified_as": dict(identified.most_common(6)),
        }
    primary = Counter(primary_subtag(str(c.language)) for c in tagged)
    return {"conversations": len(tagged), "by_language": per_language, "primary": dict(primary)}


def scenarios(convs: Sequence[Conversation]) -> dict[str, Any] | None:
    """Conversations per scenario (generate.scenarios), commonest first; None when none has a scenario."""
    found = Counter(c.scenario for c in convs if c.scenario)
    if not found:
        return None
    return {"conversations": sum(found.values()), "scenarios": len(found), "by_scenario": dict(found.most_common())}


async def sessions(
    convs: Sequence[Conversation], judge: LLMClient | None, seed: int, sample: Sequence[Conversation] | None = None
) -> tuple[dict[str, Any] | None, list[Verdict]]:
    """sample: the conversations whose later sessions the judge reads (default: all)."""
    multi = [c for c in convs if c.sessions]
    if not multi:
        return None, []
    later = [(c, i) for c in multi for i in range(1, len(c.sessions or []))]
    counts = Counter(len(c.sessions or []) for c in multi)
    per_session = [len(s.turns) for c in multi for s in c.sessions or []]
    out: dict[str, Any] = {
        "conversations": len(multi),
        "sessions_per_conversation": {str(k): v for k, v in sorted(counts.items())},
        "utterances_per_session": round(sum(per_session) / len(per_session), 2) if per_session else None,
        "gaps": dict(Counter(str((c.sessions or [])[i].gap) for c, i in later).most_common()),
        "later_sessions": len(later),
        "with_memory": sum(1 for c, i in later if (c.sessions or [])[i].memory),
        "judge": None,
    }
    verdicts: list[Verdict] = []
    judged_ids = {c.id for c in (convs if sample is None else sample)}
    if judge is not None and later:
        probes: list[Conversation] = []
        contexts: dict[str, ExpertContext] = {}
        for conv, i in (x for x in later if x[0].id in judged_ids):
            ss = conv.sessions or []
            probe = conv.model_copy(update={"id": f"{conv.id}-s{ss[i].index}", "turns": ss[i].turns})
            session = SessionContext(index=ss[i].index, gap=ss[i].gap or "", memory=ss[i].memory or {},
                                     previous=ss[:i])
            contexts[probe.id] = replace(judge_context(seed), session=session)
            probes.append(probe)
        verdicts = await judge_each("cross_session", probes, judge, seed, contexts)
        judged = [v for v in verdicts if v.decision != ABSTAIN]
        consistent = sum(v.decision == "pass" for v in judged)
        out["judge"] = {
            "consistent_rate": round(consistent / len(judged), 4) if judged else None,
            "consistent": consistent,
            "judged": len(judged),
            "abstain": len(verdicts) - len(judged),
        }
    return out, verdicts
