"""Deterministic dataset metrics (no LLM): format defects, diversity, lengths, persona coverage.

In: a list of `Conversation` records (and, for persona coverage, an embedder with
`encode(texts) -> np.ndarray` returning L2-normalised rows). Out: plain JSON-ready dicts:

- `defect_counts(convs)`: {kind: conversations having it} for the DESIGN.md §3 kinds, plus "any".
  A conversation with `raw` text is re-parsed (personaloom.dialogue.parse_dialogue), so blank and
  unprefixed lines count; one without raw text is checked from its turns (turn_defects).
- `distinct_n(token_lists, n)`: unique n-grams / all n-grams over the whole corpus (Li et al. 2016).
- `length_stats(convs)`: utterances per conversation and words per utterance (mean, median, a
  histogram with fixed bins so two datasets plot on the same axes), and vocabulary size.
- `persona_coverage(convs, embedder)`: share of a speaker's profile attributes that the speaker echoes:
  an attribute counts as covered when its best cosine similarity to that speaker's utterances reaches
  COVERAGE_THRESHOLD.

Text is compared in a case- and punctuation-insensitive way (`tokens`, in any script; a Chinese or
Japanese character is one token), because Persona-Chat is lower-cased and space-tokenised while generated
data is not: otherwise casing alone would change distinct-n and the vocabulary size.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from personaloom.dialogue import DEFECT_KINDS, parse_dialogue, turn_defects
from personaloom.records import Conversation
from personaloom.text import words

# all-MiniLM-L6-v2 cosine at which an utterance counts as echoing an attribute. Measured on the first 100
# conversations of each valid split: at 0.4 / 0.5 / 0.6, Persona-Chat (whose workers were told to reflect
# their persona) covers 75% / 62% / 42% of attributes and SPC 49% / 39% / 29%; 0.5 separates the two
# while a paraphrase ("i have two dogs" / "just relaxing with my two dogs") still counts.
COVERAGE_THRESHOLD = 0.5

# Fixed histogram bins so that the data and the reference share the axes in the report.
UTTERANCE_BINS = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 25, 30, 40, 60, 1000]
WORD_BINS = [0, 3, 6, 9, 12, 15, 18, 21, 25, 30, 40, 60, 100, 10000]


class Encoder(Protocol):
    """What persona coverage needs from an embedder (personaloom.embed.Embedder fits)."""

    def encode(self, texts: list[str]) -> Any: ...


def tokens(text: str) -> list[str]:
    """Case-folded word tokens in any script (personaloom.text.words); punctuation and spacing are ignored."""
    return words(text)


def conversation_defects(conv: Conversation) -> list[str]:
    if conv.raw is not None:
        return parse_dialogue(conv.raw).defects
    return turn_defects(conv.turns)


def defect_counts(convs: Sequence[Conversation]) -> dict[str, int]:
    counts = {kind: 0 for kind in DEFECT_KINDS}
    counts["any"] = 0
    for conv in convs:
        found = conversation_defects(conv)
        for kind in found:
            counts[kind] += 1
        if found:
            counts["any"] += 1
    return counts


def ngrams(toks: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return zip(*(toks[i:] for i in range(n)), strict=False)


def distinct_n(token_lists: Iterable[Sequence[str]], n: int) -> float:
    """Corpus-level distinct-n: unique n-grams / total n-grams (n-grams never cross utterances)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for toks in token_lists:
        for gram in ngrams(toks, n):
            seen.add(gram)
            total += 1
    return len(seen) / total if total else 0.0


def histogram(values: Sequence[float], bins: Sequence[float]) -> dict[str, list[float]]:
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=np.asarray(bins, dtype=float))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def summary(values: Sequence[float], bins: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0, "hist": histogram([], bins)}
    return {
        "mean": round(float(statistics.fmean(values)), 4),
        "median": float(statistics.median(values)),
        "min": min(values),
        "max": max(values),
        "hist": histogram(values, bins),
    }


def utterance_tokens(convs: Sequence[Conversation]) -> list[list[str]]:
    """Every utterance's tokens (of every session, for multi-session conversations)."""
    return [tokens(t.text) for conv in convs for t in conv.all_turns()]


def length_stats(convs: Sequence[Conversation], toks: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
    toks = utterance_tokens(convs) if toks is None else toks
    per_conv = [len(c.all_turns()) for c in convs]
    words = [len(t) for t in toks]
    vocab = {w for t in toks for w in t}
    return {
        "utterances_per_conversation": summary(per_conv, UTTERANCE_BINS),
        "words_per_utterance": summary(words, WORD_BINS),
        "vocab_size": len(vocab),
        "utterances": len(words),
        "words": sum(words),
    }


def deterministic_metrics(convs: Sequence[Conversation]) -> dict[str, Any]:
    """Everything here that needs neither an LLM nor an embedder."""
    return {"conversations": len(convs), "defects": defect_counts(convs), **corpus_metrics(convs)}


def corpus_metrics(convs: Sequence[Conversation]) -> dict[str, Any]:
    """distinct-1/2/3 and length_stats: the metrics that need the corpus at once."""
    toks = utterance_tokens(convs)
    return {
        "distinct_1": round(distinct_n(toks, 1), 6),
        "distinct_2": round(distinct_n(toks, 2), 6),
        "distinct_3": round(distinct_n(toks, 3), 6),
        **length_stats(convs, toks),
    }


def coverage_from_similarities(sims: np.ndarray, threshold: float = COVERAGE_THRESHOLD) -> tuple[int, int]:
    """(covered, total) for one speaker: sims is attributes x utterances cosine similarities."""
    if sims.shape[0] == 0:
        return 0, 0
    if sims.shape[1] == 0:
        return 0, sims.shape[0]
    return int((sims.max(axis=1) >= threshold).sum()), sims.shape[0]


def persona_coverage(
    convs: Sequence[Conversation], embedder: Encoder, threshold: float = COVERAGE_THRESHOLD
) -> dict[str, Any]:
    """Share of (conversation, speaker, attribute) triples whose attribute the speaker echoes.

    Every distinct text is embedded once; similarities are dot products of L2-normalised rows.
    """
    texts: dict[str, int] = {}

    def index(text: str) -> int:
        return texts.setdefault(" ".join(text.split()), len(texts))

    speakers: list[tuple[list[int], list[int]]] = []
    for conv in convs:
        for speaker, persona in ((1, conv.user1_persona), (2, conv.user2_persona)):
            attrs = [index(a) for a in persona if a.strip()]
            utts = [index(t.text) for t in conv.turns if t.speaker == speaker and t.text.strip()]
            speakers.append((attrs, utts))
    if not texts:
        return {"rate": None, "covered": 0, "attributes": 0, "threshold": threshold, "per_speaker_mean": None}
    vectors = np.asarray(embedder.encode(list(texts)), dtype=np.float32)
    covered = total = 0
    per_speaker: list[float] = []
    for attrs, utts in speakers:
        sims = vectors[attrs] @ vectors[utts].T if attrs else np.zeros((0, 0), dtype=np.float32)
        c, n = coverage_from_similarities(sims, threshold)
        covered += c
        total += n
        if n:
            per_speaker.append(c / n)
    return {
        "rate": round(covered / total, 6) if total else None,
        "covered": covered,
        "attributes": total,
        "threshold": threshold,
        "per_speaker_mean": round(float(statistics.fmean(per_speaker)), 6) if per_speaker else None,
    }
