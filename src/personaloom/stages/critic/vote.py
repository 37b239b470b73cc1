"""The Critic's vote: candidate ids and every expert's verdicts in, the winner and a summary out.

1. Filter: a candidate is out when the format, faithfulness or toxicity expert (or, when their features are
   on, the traits, language or cross-session expert) rejects it (and, with
   `reject_on_abstain`, when a faithfulness/toxicity judge abstains on it).
2. Score the survivors with the quality experts, each worth its weight:
   pairwise verdicts: "win" against another survivor = weight, "tie" = weight / 2, "lose" = 0;
   listwise verdicts ("rank", with `rank`): a ranking is read as the pairwise wins it implies among the
   survivors (ranked above = weight, same rank = weight / 2), i.e. Borda points restricted to the
   survivors, so filtered candidates cannot shift the others' scores.
   Comparisons against a filtered candidate and abstentions count for nothing.
3. Tie-break, deterministic and independent of judge sampling order: highest weighted score, then
   most unweighted wins (more expert decisions agreeing), then the earliest candidate (lowest index
   in generation order).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from personaloom.records import CriticSummary, Verdict
from personaloom.stages.critic.registry import ABSTAIN, is_quality


@dataclass
class VoteResult:
    winner: str | None
    scores: dict[str, float] = field(default_factory=dict)
    wins: dict[str, float] = field(default_factory=dict)
    # candidate id -> reasons it was filtered, e.g. ["format:same_speaker", "faithfulness"]
    filtered: dict[str, list[str]] = field(default_factory=dict)
    abstained: dict[str, list[str]] = field(default_factory=dict)
    # what decided: "score", "wins", "index", "only_survivor" or "none"
    decided_by: str = "none"

    def summary(self, mode: str, weights: dict[str, float], experts: list[str]) -> CriticSummary:
        return CriticSummary(
            mode=mode, winner=self.winner, votes={k: round(v, 6) for k, v in self.scores.items()},
            wins={k: round(v, 6) for k, v in self.wins.items()}, filtered=self.filtered, abstained=self.abstained,
            decided_by=self.decided_by, weights=weights, experts=experts,
        )


def filter_reasons(verdict: Verdict, reject_on_abstain: bool = False) -> list[str]:
    """Why this verdict filters its candidate ([] when it does not): any non-quality expert's "reject"
    (the format expert's with its reason codes), and with `reject_on_abstain` its "abstain"."""
    if is_quality(verdict.expert):
        return []
    if verdict.decision == "reject":
        return [f"{verdict.expert}:{code}" for code in verdict.reasons or []] or [verdict.expert]
    if verdict.decision == ABSTAIN and reject_on_abstain and verdict.expert != "format":
        return [f"{verdict.expert}:abstain"]
    return []


def vote(
    candidate_ids: list[str],
    verdicts: list[Verdict],
    weights: dict[str, float] | None = None,
    reject_on_abstain: bool = False,
) -> VoteResult:
    """Pick the winner among `candidate_ids` (generation order) from all verdicts about them."""
    weights = weights or {}
    known = set(candidate_ids)
    filtered: dict[str, list[str]] = defaultdict(list)
    abstained: dict[str, list[str]] = defaultdict(list)
    for v in verdicts:
        if v.conversation_id not in known:
            continue
        for reason in filter_reasons(v, reject_on_abstain):
            if reason not in filtered[v.conversation_id]:
                filtered[v.conversation_id].append(reason)
        if v.decision == ABSTAIN and v.expert not in abstained[v.conversation_id]:
            abstained[v.conversation_id].append(v.expert)
    survivors = [c for c in candidate_ids if c not in filtered]
    alive = set(survivors)
    scores = {c: 0.0 for c in survivors}
    wins = {c: 0.0 for c in survivors}

    def credit(cid: str, expert: str, share: float) -> None:
        scores[cid] += share * weights.get(expert, 1.0)
        wins[cid] += share

    ranks: dict[str, dict[str, int]] = defaultdict(dict)
    for v in verdicts:
        if not is_quality(v.expert) or v.conversation_id not in alive:
            continue
        if v.decision == "rank" and v.rank is not None:
            ranks[v.expert][v.conversation_id] = v.rank
        elif v.opponent_id in alive and v.decision in ("win", "tie"):
            credit(v.conversation_id, v.expert, 1.0 if v.decision == "win" else 0.5)
    for expert, by_id in ranks.items():
        for cid, rank in by_id.items():
            for other, other_rank in by_id.items():
                if other != cid and rank <= other_rank:
                    credit(cid, expert, 1.0 if rank < other_rank else 0.5)

    result = VoteResult(
        winner=None,
        scores=scores,
        wins=wins,
        filtered={c: filtered[c] for c in candidate_ids if c in filtered},
        abstained={c: abstained[c] for c in candidate_ids if abstained.get(c)},
    )
    if not survivors:
        return result
    order = {c: i for i, c in enumerate(candidate_ids)}
    ranked = sorted(survivors, key=lambda c: (-scores[c], -wins[c], order[c]))
    result.winner = ranked[0]
    if len(ranked) == 1:
        result.decided_by = "only_survivor"
    elif scores[ranked[0]] != scores[ranked[1]]:
        result.decided_by = "score"
    elif wins[ranked[0]] != wins[ranked[1]]:
        result.decided_by = "wins"
    else:
        result.decided_by = "index"
    return result
