"""The vote: filters, weighted pairwise majority, listwise points, deterministic tie-breaks."""

from __future__ import annotations

from personaloom.records import Verdict
from personaloom.stages.critic.vote import vote

IDS = ["c0", "c1", "c2"]


def pw(expert: str, a: str, b: str, winner: str | None) -> list[Verdict]:
    """Both verdicts of one pairwise comparison (winner None = tie)."""
    da = "tie" if winner is None else ("win" if winner == a else "lose")
    db = "tie" if winner is None else ("win" if winner == b else "lose")
    return [
        Verdict(conversation_id=a, expert=expert, decision=da, opponent_id=b),  # type: ignore[arg-type]
        Verdict(conversation_id=b, expert=expert, decision=db, opponent_id=a),  # type: ignore[arg-type]
    ]


def flt(cid: str, expert: str, decision: str, rationale: str = "") -> Verdict:
    return Verdict(conversation_id=cid, expert=expert, decision=decision, rationale=rationale)  # type: ignore[arg-type]


def test_majority_of_quality_experts() -> None:
    vs = pw("depth", "c0", "c1", "c1") + pw("coherency", "c0", "c1", "c1") + pw("diversity", "c0", "c1", "c0")
    r = vote(["c0", "c1"], vs)
    assert r.winner == "c1" and r.scores == {"c0": 1.0, "c1": 2.0} and r.decided_by == "score"


def test_filters_remove_candidates_and_their_comparisons() -> None:
    vs = [
        Verdict(conversation_id="c0", expert="format", decision="reject", rationale="same_speaker,repetition: details",
                reasons=["same_speaker", "repetition"]),
        flt("c1", "faithfulness", "reject", "contradiction"),
        flt("c2", "toxicity", "pass"),
        *pw("depth", "c0", "c2", "c0"),
        *pw("depth", "c1", "c2", "c1"),
    ]
    r = vote(IDS, vs)
    assert r.winner == "c2" and r.decided_by == "only_survivor"
    assert r.filtered == {"c0": ["format:same_speaker", "format:repetition"], "c1": ["faithfulness"]}
    assert r.scores == {"c2": 0.0}


def test_toxic_filtered_and_all_filtered_gives_none() -> None:
    vs = [flt(c, "toxicity", "reject") for c in IDS]
    r = vote(IDS, vs)
    assert r.winner is None and set(r.filtered) == set(IDS) and r.decided_by == "none"


def test_abstain_passes_unless_configured() -> None:
    vs = [flt("c0", "faithfulness", "abstain", "unparseable"), flt("c1", "faithfulness", "pass")]
    assert vote(["c0", "c1"], vs).filtered == {}
    assert vote(["c0", "c1"], vs).abstained == {"c0": ["faithfulness"]}
    r = vote(["c0", "c1"], vs, reject_on_abstain=True)
    assert r.filtered == {"c0": ["faithfulness:abstain"]} and r.winner == "c1"


def test_weights_change_the_winner() -> None:
    vs = pw("depth", "c0", "c1", "c0") + pw("coherency", "c0", "c1", "c1") + pw("likeability", "c0", "c1", "c1")
    assert vote(["c0", "c1"], vs).winner == "c1"
    r = vote(["c0", "c1"], vs, weights={"depth": 3.0})
    assert r.winner == "c0" and r.scores == {"c0": 3.0, "c1": 2.0}


def test_ties_count_half_and_tie_break_by_wins_then_index() -> None:
    # Equal score; c1 has more unweighted wins (two half-weight wins vs one full-weight win).
    vs = pw("depth", "c0", "c1", "c0") + pw("coherency", "c0", "c1", "c1") + pw("diversity", "c0", "c1", "c1")
    r = vote(["c0", "c1"], vs, weights={"depth": 1.0, "coherency": 0.5, "diversity": 0.5})
    assert r.scores == {"c0": 1.0, "c1": 1.0} and r.winner == "c1" and r.decided_by == "wins"
    # A full tie (including "tie" decisions, worth half each) falls back to generation order.
    vs = pw("depth", "c1", "c2", None) + pw("coherency", "c1", "c2", "c2") + pw("diversity", "c1", "c2", "c1")
    r = vote(["c1", "c2"], vs)
    assert r.scores == {"c1": 1.5, "c2": 1.5} and r.winner == "c1" and r.decided_by == "index"
    assert vote(["c2", "c1"], vs).winner == "c2"


def test_no_quality_verdicts_picks_first_survivor() -> None:
    r = vote(IDS, [flt("c0", "format", "reject", "too_short: 3 < 6")])
    assert r.winner == "c1" and r.decided_by == "index"


def test_quality_abstentions_count_nothing() -> None:
    vs = [
        Verdict(conversation_id="c0", expert="depth", decision="abstain", opponent_id="c1"),
        Verdict(conversation_id="c1", expert="depth", decision="abstain", opponent_id="c0"),
        *pw("coherency", "c0", "c1", "c1"),
    ]
    r = vote(["c0", "c1"], vs)
    assert r.winner == "c1" and r.abstained == {"c0": ["depth"], "c1": ["depth"]}


def rank(expert: str, order: list[str]) -> list[Verdict]:
    return [Verdict(conversation_id=c, expert=expert, decision="rank", rank=i + 1) for i, c in enumerate(order)]


def test_listwise_points() -> None:
    vs = (
        rank("depth", ["c2", "c0", "c1"])
        + rank("coherency", ["c0", "c2", "c1"])
        + rank("diversity", ["c2", "c1", "c0"])
    )
    r = vote(IDS, vs)
    assert r.scores == {"c0": 3.0, "c1": 1.0, "c2": 5.0} and r.winner == "c2"


def test_listwise_rescored_among_survivors_only() -> None:
    # c2 ranked first twice but filtered: the c0/c1 order among themselves decides.
    vs = (
        rank("depth", ["c2", "c1", "c0"])
        + rank("coherency", ["c2", "c0", "c1"])
        + rank("diversity", ["c1", "c2", "c0"])
    )
    vs.append(flt("c2", "faithfulness", "reject"))
    r = vote(IDS, vs)
    assert r.scores == {"c0": 1.0, "c1": 2.0} and r.winner == "c1"


def test_listwise_shared_ranks_are_ties() -> None:
    vs = [
        Verdict(conversation_id="c0", expert="depth", decision="rank", rank=2),
        Verdict(conversation_id="c1", expert="depth", decision="rank", rank=1),
        Verdict(conversation_id="c2", expert="depth", decision="rank", rank=2),
    ]
    assert vote(IDS, vs).scores == {"c0": 0.5, "c1": 2.0, "c2": 0.5}


def test_summary_shape() -> None:
    r = vote(["c0", "c1"], pw("depth", "c0", "c1", "c0"))
    s = r.summary("pairwise", {"depth": 1.0}, ["format", "depth"])
    assert s.mode == "pairwise" and s.winner == "c0" and s.votes == {"c0": 1.0, "c1": 0.0}
    assert s.decided_by == "score" and s.weights == {"depth": 1.0} and s.experts == ["format", "depth"]
    assert set(s.model_dump()) >= {"filtered", "abstained", "decided_by", "weights", "wins", "tokens"}
