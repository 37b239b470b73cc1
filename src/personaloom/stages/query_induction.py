"""Query induction: cluster seed attributes, ask the LLM which question each cluster answers, grow the
question set by bootstrapping, and deduplicate it (DESIGN.md §1 step 1).

In: attribute embeddings (unit rows), attribute texts, an LLMClient. Out: cluster labels, the Table-1
statistics of a clustering, and a deduplicated list of persona questions ("What pets do you have?").

Clustering (`cluster`):
- n <= agglomerative_max: scikit-learn AgglomerativeClustering, cosine metric, average linkage,
  `distance_threshold` — the paper's method. It needs the condensed distance matrix (n²/2 float64:
  400 MB at 10k), hence the switch.
- above: leader clustering on a vector index (`embed.greedy_leaders`): O(n·dim) memory, and per row
  a search over the leaders only (few on topical data; the faiss IVF index takes over when they are
  many). Pass 1 makes micro-clusters of radius 0.75 * threshold: each row, in order, joins its nearest
  leader when the cosine distance is below that. Pass 2 groups micro-clusters: by the same
  average-linkage agglomerative clustering over their centroids when they are few enough, else by a
  second leader pass over the centroids at the full threshold. For unit vectors the average cosine
  distance between two groups equals 1 - <mean_a, mean_b>, so clustering centroids approximates
  average linkage on the members.
Labels are numbered by first appearance, so the same input always gives the same labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse

from personaloom import rng, stagenames
from personaloom.chat import ChatRequest, Message, Sampling
from personaloom.dialogue import has_slot
from personaloom.embed import FloatArray, IntArray, NeighborIndex, greedy_leaders, normalize_rows
from personaloom.prompts import render

QUESTION_STAGE = stagenames.EXPAND_QUESTIONS
# Leader radius as a fraction of the clustering threshold (scalable path, pass 1).
LEADER_RADIUS = 0.75


# -- clustering ---------------------------------------------------------------------------------
def _relabel(labels: npt.ArrayLike) -> IntArray:
    """Renumber labels 0, 1, 2, ... in order of first appearance."""
    arr = np.asarray(labels, dtype=np.int64)
    _, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def centroids(embeddings: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """Unit-length mean vector of every cluster, row c for label c (labels 0..C-1)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels, dtype=np.int64)
    if len(lab) == 0:
        return np.zeros((0, emb.shape[1] if emb.ndim == 2 else 0), dtype=np.float32)
    n_clusters = int(lab.max()) + 1
    onehot = sparse.csr_matrix(
        (np.ones(len(lab), dtype=np.float32), (lab, np.arange(len(lab)))), shape=(n_clusters, len(lab))
    )
    return normalize_rows(onehot @ emb)


def _agglomerative(emb: FloatArray, distance_threshold: float) -> IntArray:
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance_threshold
    )
    return np.asarray(model.fit_predict(emb), dtype=np.int64)


def cluster(embeddings: npt.ArrayLike, distance_threshold: float, agglomerative_max: int) -> IntArray:
    """Cluster unit-vector embeddings; see the module docstring for the method at each size."""
    emb = normalize_rows(embeddings) if len(np.asarray(embeddings)) else np.zeros((0, 1), np.float32)
    n = len(emb)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if n <= agglomerative_max:
        return _relabel(_agglomerative(emb, distance_threshold))
    micro, _ = greedy_leaders(emb, 1.0 - LEADER_RADIUS * distance_threshold, NeighborIndex(emb.shape[1]))
    micro = _relabel(micro)
    cents = centroids(emb, micro)
    if len(cents) == 1:
        return micro
    if len(cents) <= agglomerative_max:
        merged = _agglomerative(cents, distance_threshold)
    else:
        merged, _ = greedy_leaders(cents, 1.0 - distance_threshold, NeighborIndex(cents.shape[1]))
    return _relabel(np.asarray(merged, dtype=np.int64)[micro])


def mean_inter_cluster_distance(embeddings: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Mean cosine distance between all pairs of distinct cluster centroids (unit mean vectors).

    Uses sum_{i != j} c_i·c_j = |sum c|² - C, so it is O(C·dim), never C×C.
    """
    cents = centroids(embeddings, labels)
    c = len(cents)
    if c < 2:
        return 0.0
    total = cents.astype(np.float64).sum(axis=0)
    mean_sim = (float(total @ total) - float((cents.astype(np.float64) ** 2).sum())) / (c * (c - 1))
    return round(1.0 - mean_sim, 4)


def cluster_table(embeddings: npt.ArrayLike, labels: npt.ArrayLike) -> dict[str, Any]:
    """One column of the paper's Table 1: attributes, clusters, mean inter-cluster distance."""
    lab = np.asarray(labels, dtype=np.int64)
    return {
        "attributes": len(lab),
        "clusters": len(np.unique(lab)),
        "mean_inter_cluster_distance": mean_inter_cluster_distance(embeddings, lab),
    }


# -- prompts ------------------------------------------------------------------------------------
def question_request(
    attributes: Sequence[str], cluster_id: int, seed: int, sampling: Sampling, max_tokens: int = 32
) -> ChatRequest:
    """Ask for the most specific question that a cluster's sampled attributes answer."""
    item = f"cluster-{cluster_id}"
    return ChatRequest(
        messages=[Message(role="user", content=render("query_induction.j2", attributes=list(attributes)))],
        params=sampling.params(max_tokens, rng.derive_seed(seed, QUESTION_STAGE, item)),
        metadata={"stage": QUESTION_STAGE, "id": item},
    )


def bootstrap_request(
    questions: Sequence[str], step: int, seed: int, sampling: Sampling, n_new: int = 5, max_tokens: int = 96
) -> ChatRequest:
    """Show sampled questions and ask for `n_new` more persona questions like them."""
    item = f"qboot-{step}"
    prompt = render("query_bootstrap.j2", questions=list(questions), n=n_new)
    return ChatRequest(
        messages=[Message(role="user", content=prompt)],
        params=sampling.params(max_tokens, rng.derive_seed(seed, QUESTION_STAGE, item)),
        metadata={"stage": QUESTION_STAGE, "id": item},
    )


# -- parsing ------------------------------------------------------------------------------------
# Leading list markers: "1.", "2)", "(3)", "-", "*", "•", "a)", "Q1:", "Question 2:", "**"
_MARKER = re.compile(
    r"^\s*(?:[-*•·>#]+|\(?\d{1,3}\s*[.):\]-]|[a-hA-H][.)]|\*\*|q(?:uestion)?\s*\d*\s*[:.)-]|new question\s*\d*\s*:)\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’`*_ "
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_SECOND_PERSON = re.compile(r"\b(you|your|yours|yourself)\b", re.IGNORECASE)


def _strip_markers(line: str) -> str:
    s = line.strip()
    for _ in range(4):  # "1. **Q:** ..." has several layers
        new = _MARKER.sub("", s).strip().strip(_QUOTES)
        if new == s:
            break
        s = new
    return s


def question_rejection(line: str, max_words: int = 25) -> tuple[str | None, str]:
    """(reason or None, cleaned question) for one line of model output."""
    s = _strip_markers(line)
    if not s:
        return "empty", s
    if "?" not in s:
        return "not_a_question", s
    # The sentence that holds the first "?": drops "Sure! " before it and any answer after it.
    parts = _SENTENCE_SPLIT.split(s[: s.index("?") + 1])
    s = parts[-1].strip()
    # 'The question could be: "What pets do you have?' / '... food - What do you eat?': keep the quoted
    # or introduced part
    for sep in ('"', "“", ": ", " - ", " – "):
        head, found, tail = s.rpartition(sep)
        if found and head and len(tail.split()) >= 3:
            s = tail
    s = s.strip().strip(_QUOTES)
    if not s.endswith("?"):
        s += "?"
    words = s.split()
    if len(words) < 3:
        return "too_short", s
    if len(words) > max_words:
        return "too_long", s
    if not s[0].isalpha():
        return "not_a_question", s
    if has_slot(s):
        return "placeholder", s
    if not _SECOND_PERSON.search(s):
        return "not_personal", s
    return None, s[0].upper() + s[1:]


def parse_questions(text: str, max_words: int = 25) -> list[str]:
    """Every persona question in a reply, one per line; numbering, bullets and quotes stripped,
    non-questions and duplicates (case-insensitive) dropped."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        reason, q = question_rejection(line, max_words)
        key = " ".join(q.lower().split())
        if reason is None and key not in seen:
            seen.add(key)
            out.append(q)
    return out


def sample_questions(questions: Sequence[str], k: int, seed: int, step: int) -> list[str]:
    r = rng.rng_for(seed, QUESTION_STAGE, "qboot-sample", step)
    return r.sample(list(questions), min(k, len(questions)))


def sample_cluster_members(members: Sequence[str], k: int, seed: int, cluster_id: int) -> list[str]:
    r = rng.rng_for(seed, QUESTION_STAGE, "cluster-sample", cluster_id)
    return r.sample(list(members), min(k, len(members)))
