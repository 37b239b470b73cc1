"""Exact and near-duplicate conversations: MinHash LSH over word shingles of the turns.

In: conversations, one at a time in dataset order (of twins, the first is kept). Out: `Deduplicator.check(c)` ->
None (kept, and indexed) or a `Duplicate` naming the kept twin and the similarity of the two; `deduplicate(convs)`
-> the kept conversations and every Duplicate.

A conversation's text is its turns' words (personaloom.text.words: case-folded, any script, punctuation and
speaker labels dropped); its shingles are
the word `shingle`-grams of that text (a text shorter than that is one shingle). Exact duplicates (the same
words) are found by a 64-bit hash of the text. Near duplicates: the Jaccard similarity of two shingle sets,
estimated from 128-value MinHash signatures (Broder, "On the resemblance and containment of documents", 1997),
candidates found by banding the signature (locality-sensitive hashing: Leskovec, Rajaraman & Ullman, "Mining of
Massive Datasets", ch. 3) into as few bands as let a twin at `threshold` share one with probability >= 0.99 (32
bands of 4 values at 0.7). A candidate is a duplicate when its estimated similarity is at least `threshold`.

The MinHash library is rensa (Rust): signature, LSH query and insert measured at 22 us a conversation against
datasketch's 531 us on the same 20,000 (bench/dedup.py --compare), and datasketch's index grew about 4 MB per
1,000 conversations against rensa's 2.6 MB. Memory per kept conversation: one signature (512 bytes), one id and
its band keys in rensa's index (about 2.6 KB at 32 bands): 4.9 GB peak for a million (bench/dedup.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np

from personaloom.records import Conversation, Record
from personaloom.text import words

THRESHOLD = 0.7  # README "Release filters" says how it was chosen
SHINGLE = 5
NUM_PERM = 128
_SEED = 20231218


class Duplicate(Record):
    """A conversation removed as a duplicate: `id`, the kept twin `kept_id` and the similarity of the two,
    1.0 for `kind` "exact" (the same words), the estimated Jaccard similarity of their shingles for "near"."""

    id: str
    kept_id: str
    similarity: float
    kind: Literal["exact", "near"]


def conversation_words(conversation: Conversation) -> list[str]:
    """The words of every turn of `conversation` (every session's, for a multi-session one), in order."""
    return [w for t in conversation.all_turns() for w in words(t.text)]


def shingles(tokens: list[str], size: int = SHINGLE) -> list[str]:
    """The word `size`-grams of `tokens`, each joined by spaces; `tokens` whole when shorter."""
    if len(tokens) <= size:
        return [" ".join(tokens)]
    return [" ".join(tokens[i: i + size]) for i in range(len(tokens) - size + 1)]


def bands_for(threshold: float) -> int:
    """The fewest LSH bands (of NUM_PERM // bands values each) with which a twin at `threshold` is a candidate
    with probability >= 0.99: 1 - (1 - t^r)^b (fewer bands, less memory). 32 at 0.7, 16 at 0.9."""
    for bands in (8, 16, 32, 64):
        if 1 - (1 - threshold ** (NUM_PERM // bands)) ** bands >= 0.99:
            return bands
    return 128


class Deduplicator:
    """Streaming deduplication (see the module docstring): `check` each conversation once, in order.

    `threshold`: the estimated Jaccard similarity (0-1] at or above which a conversation is a near duplicate
    of a kept one; `shingle`: words per shingle. Raises ValueError for a threshold outside (0, 1]."""

    def __init__(self, threshold: float = THRESHOLD, shingle: int = SHINGLE) -> None:
        import rensa

        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"dedup threshold {threshold}: expected a similarity in (0, 1]")
        self.threshold = threshold
        self.shingle = shingle
        self._rensa = rensa
        self._lsh = rensa.RMinHashLSH(threshold=threshold, num_perm=NUM_PERM, num_bands=bands_for(threshold))
        self._exact: dict[int, int] = {}
        self._ids: list[str] = []
        self._signatures = np.empty((1024, NUM_PERM), dtype=np.uint32)
        self.checked = 0
        self.exact = 0
        self.near = 0

    def check(self, conversation: Conversation) -> Duplicate | None:
        """None when `conversation` is kept (it is then indexed), else the Duplicate naming its kept twin.
        A conversation without words is kept and not indexed."""
        self.checked += 1
        tokens = conversation_words(conversation)
        if not tokens:
            return None
        text = hashlib.blake2b(" ".join(tokens).encode(), digest_size=8).digest()
        exact = int.from_bytes(text, "little")
        twin = self._exact.get(exact)
        if twin is not None:
            self.exact += 1
            return Duplicate(id=conversation.id, kept_id=self._ids[twin], similarity=1.0, kind="exact")
        minhash = self._rensa.RMinHash(num_perm=NUM_PERM, seed=_SEED)
        minhash.update(shingles(tokens, self.shingle))
        signature = np.asarray(minhash.digest(), dtype=np.uint32)
        candidates = self._lsh.query(minhash)
        if candidates:
            index = np.asarray(candidates, dtype=np.int64)
            similarity = (self._signatures[index] == signature).mean(axis=1)
            best = int(np.argmax(similarity))
            if similarity[best] >= self.threshold:
                self.near += 1
                return Duplicate(id=conversation.id, kept_id=self._ids[int(index[best])],
                                 similarity=round(float(similarity[best]), 4), kind="near")
        slot = len(self._ids)
        if slot == len(self._signatures):
            grown = np.empty((2 * slot, NUM_PERM), dtype=np.uint32)
            grown[:slot] = self._signatures
            self._signatures = grown
        self._signatures[slot] = signature
        self._ids.append(conversation.id)
        self._exact[exact] = slot
        self._lsh.insert(slot, minhash)
        return None

    def counts(self) -> dict[str, float | int]:
        """{"checked", "exact", "near", "kept", "threshold", "shingle"}: what stats.json and the card say."""
        return {"checked": self.checked, "exact": self.exact, "near": self.near,
                "kept": self.checked - self.exact - self.near, "threshold": self.threshold, "shingle": self.shingle}


def deduplicate(conversations: Iterable[Conversation], threshold: float = THRESHOLD,
                shingle: int = SHINGLE) -> tuple[list[Conversation], list[Duplicate]]:
    """(the conversations kept, in order; the duplicates removed) of `conversations`."""
    dedup = Deduplicator(threshold, shingle)
    kept: list[Conversation] = []
    removed: list[Duplicate] = []
    for conversation in conversations:
        found = dedup.check(conversation)
        if found is None:
            kept.append(conversation)
        else:
            removed.append(found)
    return kept, removed


def duplicates(conversations: Iterable[Conversation], threshold: float = THRESHOLD,
               shingle: int = SHINGLE) -> Iterator[Duplicate]:
    """Every Duplicate of `conversations`, streamed (nothing but the index is held)."""
    dedup = Deduplicator(threshold, shingle)
    for conversation in conversations:
        found = dedup.check(conversation)
        if found is not None:
            yield found


__all__ = ["SHINGLE", "THRESHOLD", "Deduplicator", "Duplicate", "conversation_words", "deduplicate", "duplicates",
           "shingles"]
