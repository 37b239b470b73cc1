"""Next-utterance prediction with a tf-idf retrieval baseline: hits@1 over 20 candidates.

In: conversations (the test set) and optionally other conversations to fit the tf-idf weights on.
Out: {"with_persona", "without_persona"}: the share of test utterances for which the true reply scores
highest among itself and 19 distractors, plus the example count.

Every utterance after the first is one example. The query is the previous `history` utterance(s);
"with persona" prepends the replying speaker's profile attributes to the query (Persona-Chat's IR
baseline setting). Candidates are scored by tf-idf cosine similarity to the query. The 19 distractors
are utterances of *other* conversations (never a text equal to the true reply), drawn with a
generator seeded by (seed, name), so a re-run picks the same candidates, and the with/without-persona
scores use the same candidates. When the true reply ties with k-1 distractors for the top score it
earns 1/k: the expected hit under a random tie-break, without a hidden dependence on candidate order.

"generated->reference" transfer fits the tf-idf vocabulary and idf weights on the generated data and
tests on the reference: the only thing this baseline learns from data is its term weighting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from personaloom.records import Conversation
from personaloom.rng import derive_seed
from personaloom.text import words

CANDIDATES = 20


@dataclass
class RetrievalSet:
    """Flat utterances and, per example, its query texts and candidate utterance indices."""

    utterances: list[str]
    queries: list[str]
    persona_queries: list[str]
    candidates: np.ndarray  # examples x CANDIDATES utterance indices; column 0 is the true reply


def _clean(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


def build_set(
    convs: Sequence[Conversation],
    *,
    seed: int = 0,
    name: str = "data",
    candidates: int = CANDIDATES,
    history: int = 1,
) -> RetrievalSet:
    utterances: list[str] = []
    owner: list[int] = []
    queries: list[str] = []
    persona_queries: list[str] = []
    targets: list[int] = []
    for ci, conv in enumerate(convs):
        base = len(utterances)
        texts = [_clean(t.text) for t in conv.turns]
        utterances.extend(texts)
        owner.extend([ci] * len(texts))
        for ti in range(1, len(texts)):
            context = " ".join(texts[max(0, ti - history) : ti])
            persona = conv.user1_persona if conv.turns[ti].speaker == 1 else conv.user2_persona
            queries.append(context)
            persona_queries.append(" ".join(_clean(a) for a in persona) + " " + context)
            targets.append(base + ti)
    owners = np.asarray(owner, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, "retrieval", name))
    cand = np.zeros((len(targets), candidates), dtype=np.int64)
    pool = len(utterances)
    for row, target in enumerate(targets):
        cand[row, 0] = target
        got = 1
        # Rejection sampling: other conversations only, and never the true reply's text again.
        for _ in range(100):
            if got == candidates:
                break
            draw = rng.integers(0, pool, size=2 * candidates)
            for idx in draw:
                if owners[idx] == owners[target] or utterances[idx] == utterances[target]:
                    continue
                cand[row, got] = idx
                got += 1
                if got == candidates:
                    break
        if got < candidates:
            cand[row, got:] = -1  # a tiny corpus: fewer distractors (scored as absent)
    return RetrievalSet(utterances, queries, persona_queries, cand)


def make_vectorizer() -> TfidfVectorizer:
    # Tokens of personaloom.text.words (any script; case-folded, so no lowercase pass of sklearn's own).
    return TfidfVectorizer(tokenizer=words, token_pattern=None, lowercase=False, sublinear_tf=True)


def fit_texts(convs: Sequence[Conversation]) -> list[str]:
    """What the tf-idf weights are fitted on: every utterance and every persona attribute."""
    out = [_clean(t.text) for c in convs for t in c.turns]
    out += [_clean(a) for c in convs for a in (*c.user1_persona, *c.user2_persona)]
    return out


def hits_from_scores(scores: np.ndarray) -> float:
    """Mean hits@1 for examples x candidates scores, true reply in column 0, ties shared (1/k)."""
    if scores.shape[0] == 0:
        return 0.0
    top = scores.max(axis=1, keepdims=True)
    at_top = np.isclose(scores, top, rtol=0.0, atol=1e-9)
    credit = np.where(at_top[:, 0], 1.0 / at_top.sum(axis=1), 0.0)
    return float(credit.mean())


def score(vectorizer: TfidfVectorizer, rs: RetrievalSet, queries: list[str]) -> np.ndarray:
    utt = vectorizer.transform(rs.utterances).tocsr()
    q = vectorizer.transform(queries).tocsr()
    n, k = rs.candidates.shape
    scores = np.full((n, k), -1.0)
    for j in range(k):
        idx = rs.candidates[:, j]
        ok = idx >= 0
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            continue
        scores[rows, j] = np.asarray(q[rows].multiply(utt[idx[rows]]).sum(axis=1)).ravel()
    return scores


def hits_at_1(
    convs: Sequence[Conversation],
    *,
    fit_on: Sequence[Conversation] | None = None,
    seed: int = 0,
    name: str = "data",
    history: int = 1,
    candidates: int = CANDIDATES,
) -> dict[str, Any]:
    """hits@1 with and without the replying speaker's persona; tf-idf fitted on `fit_on` (default: convs)."""
    rs = build_set(convs, seed=seed, name=name, candidates=candidates, history=history)
    if not rs.queries:
        return {"with_persona": None, "without_persona": None, "examples": 0, "candidates": candidates}
    vectorizer = make_vectorizer()
    try:
        vectorizer.fit(fit_texts(fit_on if fit_on is not None else convs))
    except ValueError:  # no word at all in the fitting data ("empty vocabulary")
        return {"with_persona": None, "without_persona": None, "examples": 0, "candidates": candidates}
    return {
        "with_persona": round(hits_from_scores(score(vectorizer, rs, rs.persona_queries)), 6),
        "without_persona": round(hits_from_scores(score(vectorizer, rs, rs.queries)), 6),
        "examples": len(rs.queries),
        "candidates": candidates,
        "history": history,
    }
