"""Persona bootstrapping: answer persona questions as sampled personas to get new attributes
(DESIGN.md §1 step 2).

In: seed attribute texts, questions, an LLMClient (via `expansion.expand`). Out: per attempt a
`ChatRequest`; per reply a cleaned candidate sentence and, if it fails a filter, the reason; and cluster
labels for the new attributes.

Filters, in order (the first that fails names the rejection):
  empty / not_i_my (must start with "I" or "My") / too_short (< 3 words) / too_long (> max_words) /
  question / placeholder ("[name]") / malformed (quotes, brackets) / meta ("as an AI ...") /
  copy (same words as a persona line, or contained in one) /
  not_novel (cosine >= novelty_threshold to an attribute already kept, seed or new).

Novelty threshold (ExpandConfig.novelty_threshold, default 0.85; the paper gives none): measured with
all-MiniLM-L6-v2 on the 674 distinct attributes of the 1,000 Persona-Chat validation dialogues (printed
by tests/test_embed.py), a nearest neighbour at >= 0.89 was always a rephrasing of the same fact
("i'm a construction worker." / "i am a construction worker." 0.92, "i have two dogs." / "i've two dogs."
0.95); between 0.80 and 0.85 sit distinct facts on one topic ("my favorite color is yellow." / "... is
orange." 0.83); other distinct facts score 0.5-0.75. 0.85 rejects restatements and admits new facts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from personaloom import rng, stagenames
from personaloom.chat import ChatRequest, Message, Sampling
from personaloom.dialogue import has_slot
from personaloom.embed import FloatArray, IntArray
from personaloom.prompts import render
from personaloom.text import words as _words

ANSWER_STAGE = stagenames.EXPAND_ANSWERS

_PREFIX = re.compile(r"^\s*(?:[-*•>]+|\d{1,3}[.)]|(?:answer|a|response|opposite|negation)\s*:)\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’`*_ "
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])[\"'”’]?(?:\s|$)")
_I_MY = re.compile(r"^(?:I(?:'m|'ve|'d|'ll)?|My) [A-Za-z]")
_META = re.compile(r"\b(?:an? (?:AI|assistant|chatbot|language model)|as an ai)\b", re.IGNORECASE)


def sample_persona(seed_texts: Sequence[str], k: int, seed: int, attempt: int) -> list[str]:
    r = rng.rng_for(seed, ANSWER_STAGE, "persona", attempt)
    return r.sample(list(seed_texts), min(k, len(seed_texts)))


def pick_question(questions: Sequence[str], seed: int, attempt: int) -> str:
    return rng.rng_for(seed, ANSWER_STAGE, "question", attempt).choice(list(questions))


def answer_request(
    persona: Sequence[str], question: str, attempt: int, seed: int, sampling: Sampling, max_tokens: int = 32
) -> ChatRequest:
    item = f"attempt-{attempt}"
    prompt = render("persona_answer.j2", persona=list(persona), question=question)
    return ChatRequest(
        messages=[Message(role="user", content=prompt)],
        params=sampling.params(max_tokens, rng.derive_seed(seed, ANSWER_STAGE, item)),
        metadata={"stage": ANSWER_STAGE, "id": item},
    )


def parse_answer(text: str) -> str:
    """The first sentence of the first non-empty line, without list markers, "Answer:" or quotes."""
    for raw in text.splitlines():
        s = raw.strip()
        for _ in range(3):
            new = _PREFIX.sub("", s).strip().strip(_QUOTES)
            if new == s:
                break
            s = new
        if not s:
            continue
        m = _FIRST_SENTENCE.match(s)
        s = m.group(1) if m else s
        s = " ".join(s.split()).strip(_QUOTES.replace(".", ""))
        # Persona-Chat writes "i like ..."; accept it and capitalise, the filter still sees the start.
        if s[:2] in ("i ", "i'") or s[:3] == "my ":
            s = s[0].upper() + s[1:]
        if s and s[-1] not in ".!?":
            s += "."
        return s
    return ""


def answer_rejection(answer: str, persona: Sequence[str], max_words: int) -> str | None:
    """The first filter this answer fails, or None (novelty is checked separately, on embeddings)."""
    if not answer:
        return "empty"
    if not _I_MY.match(answer):
        return "not_i_my"
    n_words = len(answer.split())
    if n_words < 3:
        return "too_short"
    if n_words > max_words:
        return "too_long"
    if answer.rstrip().endswith("?"):
        return "question"
    if has_slot(answer):
        return "placeholder"
    if any(ch in answer for ch in '"“”{}[]<>|\\'):
        return "malformed"
    if _META.search(answer):
        return "meta"
    words = " ".join(_words(answer))
    for line in persona:
        other = " ".join(_words(line))
        if words == other or (words and words in other) or (other and other in words):
            return "copy"
    return None


def assign_clusters(
    new_embeddings: npt.ArrayLike,
    cluster_centroids: npt.ArrayLike,
    distance_threshold: float,
    chunk: int = 2048,
) -> tuple[IntArray, int]:
    """Label new attributes with the nearest existing cluster centroid when the cosine distance to it is
    below `distance_threshold`; otherwise open a new cluster (numbered after the existing ones), which
    later new attributes may join. Returns (labels, number of new clusters)."""
    emb = np.asarray(new_embeddings, dtype=np.float32)
    cents = np.asarray(cluster_centroids, dtype=np.float32)
    n, n_old = len(emb), len(cents)
    labels = np.full(n, -1, dtype=np.int64)
    best = np.full(n, -np.inf, dtype=np.float32)
    if n_old:
        for start in range(0, n, chunk):
            s = emb[start : start + chunk] @ cents.T
            labels[start : start + chunk] = np.argmax(s, axis=1)
            best[start : start + chunk] = s.max(axis=1)
    founders: list[FloatArray] = []
    for i in range(n):
        if founders:
            sims = np.stack(founders) @ emb[i]
            j = int(np.argmax(sims))
            if sims[j] > best[i]:
                best[i] = sims[j]
                labels[i] = n_old + j
        if 1.0 - best[i] >= distance_threshold:
            labels[i] = n_old + len(founders)
            best[i] = 1.0
            founders.append(emb[i])
    return labels, len(founders)
