"""The rule-based language expert (--language): a candidate in, a pass/reject Verdict out.

A candidate passes when at least `min_share` of its utterances that can be told apart are identified as
written in the target language (personaloom.text.identify: script, then function words and distinctive
letters); utterances too short to tell ("Ok!") count for nothing, and a candidate with none that can
be told passes. No LLM call; runs beside the format expert, before any LLM judge sees the candidate,
so an English reply to a French prompt never becomes a French few-shot example.
"""

from __future__ import annotations

from personaloom.records import Conversation, Verdict
from personaloom.text import language_share


def check_language(conv: Conversation, language: str, min_share: float) -> Verdict:
    share = language_share([t.text for t in conv.turns], language)
    told = share["in_language"] + share["other"]
    rate = share["rate"]
    passed = rate is None or rate >= min_share
    rationale = (
        f"{share['in_language']} of {told} identifiable utterances in {language} "
        f"({share['unknown']} too short to tell; at least {min_share:.0%} needed)"
    )
    return Verdict(
        conversation_id=conv.id,
        expert="language",
        decision="pass" if passed else "reject",
        rationale=rationale,
        pair_id=conv.pair_id,
        iteration=conv.iteration,
    )
