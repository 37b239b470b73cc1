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
datasketch's 531 us on the same 20,000 (bench/dedup.py --compare). Its LSH index, though, holds about 2.6 KB per
conversation at 32 bands (4.9 GB peak for a million; datasketch's about 4 KB), so the band keys are kept here in
one open-addressing table of 32-bit keys and 32-bit row numbers (`BandTable`, 8 bytes a slot, 30-60% full). Per
kept conversation: 32 band keys (430-850 bytes), its signature (512 bytes, in fixed blocks that never move), its
id and its exact-text hash: 1.3 GB peak for a million, 291 s on one core (bench/dedup.py).
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


_REHASH_CHUNK = 1 << 20  # slots re-placed at a time when the band table doubles
_BLOCK_BITS = 14  # signatures are kept in blocks of 16,384 (8 MB): growing never copies them
_RNG = np.random.default_rng(_SEED)
_MULTIPLIERS = _RNG.integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) | np.uint64(1)
_SALTS = _RNG.integers(0, 2**63, size=NUM_PERM, dtype=np.uint64)


def band_keys(signature: np.ndarray, bands: int) -> np.ndarray:
    """The `bands` LSH band keys (uint32, nonzero) of a (NUM_PERM,) uint32 MinHash signature: each band's
    NUM_PERM // bands values combined by random odd multipliers, salted by the band, then mixed (splitmix64's
    finaliser). Two signatures equal on a band share its key; unequal ones collide with probability ~2^-32."""
    values = signature.reshape(bands, -1).astype(np.uint64)
    mixed = (values * _MULTIPLIERS[: values.shape[1]]).sum(axis=1, dtype=np.uint64) + _SALTS[:bands]
    mixed ^= mixed >> np.uint64(30)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(27)
    keys: np.ndarray = (mixed >> np.uint64(32)).astype(np.uint32)
    keys[keys == 0] = 1  # 0 marks an empty slot
    return keys


class BandTable:
    """Band keys -> row numbers of the conversations that have them: an open-addressing multimap (linear
    probing, Fibonacci hashing) of nonzero uint32 keys to uint32 rows in two numpy arrays, 8 bytes a slot,
    doubled when over 60% full. `rows(keys)` returns every row stored under any of `keys`; keys are 32-bit, so
    a rare unrelated row comes back too: the caller compares signatures."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        capacity = 1 << max(3, (capacity - 1).bit_length())  # a power of two: probing wraps by a mask
        self._keys = np.zeros(capacity, dtype=np.uint32)
        self._rows = np.zeros(capacity, dtype=np.uint32)
        self._bits = capacity.bit_length() - 1
        self.size = 0

    def _home(self, keys: np.ndarray) -> np.ndarray:
        shift = np.uint64(64 - self._bits)
        return ((keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> shift).astype(np.int64)

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """Every row stored under any of `keys` (uint32, nonzero), as uint32 (repeats possible)."""
        table, values, mask = self._keys, self._rows, len(self._keys) - 1
        found = []
        # A plain loop: for one conversation's few keys it beats numpy's per-call overhead (29 vs 48 us).
        for key, pos in zip(keys.tolist(), self._home(keys).tolist(), strict=True):
            while stored := table[pos]:  # a key's run ends at the first empty slot
                if stored == key:
                    found.append(values[pos])
                pos = (pos + 1) & mask
        return np.array(found, dtype=np.uint32)

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Store row `rows[i]` under `keys[i]` (uint32 arrays of one length)."""
        while (self.size + keys.size) * 5 > len(self._keys) * 3:
            old_keys, old_rows = self._keys, self._rows
            self._keys = np.zeros(2 * len(old_keys), dtype=np.uint32)
            self._rows = np.zeros(len(self._keys), dtype=np.uint32)
            self._bits += 1
            for start in range(0, len(old_keys), _REHASH_CHUNK):  # in chunks: bounded temporaries
                chunk = old_keys[start : start + _REHASH_CHUNK]
                used = chunk != 0
                self._rehash(chunk[used], old_rows[start : start + _REHASH_CHUNK][used])
            del old_keys, old_rows
        table, values, mask = self._keys, self._rows, len(self._keys) - 1
        # One conversation's few keys: a plain loop, as in `rows`.
        for key, row, pos in zip(keys.tolist(), rows.tolist(), self._home(keys).tolist(), strict=True):
            while table[pos]:
                pos = (pos + 1) & mask
            table[pos], values[pos] = key, row
        self.size += keys.size

    def _rehash(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Place many entries at once (after doubling): every key takes the first free slot of its run."""
        mask = len(self._keys) - 1
        pos = self._home(keys)
        while keys.size:
            free = np.flatnonzero(self._keys[pos] == 0)
            _, first = np.unique(pos[free], return_index=True)  # of keys meeting at one free slot, the first
            take = free[first]
            self._keys[pos[take]] = keys[take]
            self._rows[pos[take]] = rows[take]
            left = np.ones(keys.size, dtype=bool)
            left[take] = False
            keys, rows, pos = keys[left], rows[left], (pos[left] + 1) & mask


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
        self._bands = bands_for(threshold)
        self._table = BandTable()
        self._exact: dict[int, int] = {}
        self._ids: list[str] = []
        self._signatures: list[np.ndarray] = []
        self.checked = 0
        self.exact = 0
        self.near = 0

    def _stored(self, rows: np.ndarray) -> np.ndarray:
        """The signatures of the kept conversations at `rows` (sorted, unique) as a (len(rows), NUM_PERM) array."""
        block = rows >> _BLOCK_BITS
        within = rows & ((1 << _BLOCK_BITS) - 1)
        return np.concatenate([self._signatures[b][within[block == b]] for b in np.unique(block)])

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
        keys = band_keys(signature, self._bands)
        candidates = np.unique(self._table.rows(keys)).astype(np.int64)
        if candidates.size:
            similarity = (self._stored(candidates) == signature).mean(axis=1)
            best = int(np.argmax(similarity))
            if similarity[best] >= self.threshold:
                self.near += 1
                return Duplicate(id=conversation.id, kept_id=self._ids[int(candidates[best])],
                                 similarity=round(float(similarity[best]), 4), kind="near")
        row = len(self._ids)
        if row >> _BLOCK_BITS == len(self._signatures):
            self._signatures.append(np.empty((1 << _BLOCK_BITS, NUM_PERM), dtype=np.uint32))
        self._signatures[-1][row & ((1 << _BLOCK_BITS) - 1)] = signature
        self._ids.append(conversation.id)
        self._exact[exact] = row
        self._table.add(keys, np.full(keys.size, row, dtype=np.uint32))
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


__all__ = ["SHINGLE", "THRESHOLD", "BandTable", "Deduplicator", "Duplicate", "band_keys", "conversation_words",
           "deduplicate", "duplicates", "shingles"]
