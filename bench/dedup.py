"""Near-duplicate conversations at scale: personaloom.dedup's Deduplicator over N generated conversations.

Conversations are generated on the fly (never all held): 16 utterances of 8-14 words drawn from a 20,000-word
Zipf vocabulary, two personas each; one in 20 is a planted near copy of an earlier one (one utterance rewritten:
similarity ~0.87), one in 20 a far copy (six rewritten: ~0.45, not a duplicate) and one in 100 an exact copy.
Prints conversations per second (the Deduplicator's own time and with the generation), the duplicates found
against those planted, and the peak RSS (ru_maxrss, the interpreter and imports included); the last line
`seconds=<time>`. Goal (issue 30): 1,000,000 conversations within 10 minutes and 2 GB on 2 cores.
`--compare N`: rensa against datasketch on the same N conversations' shingles (the choice personaloom.dedup states;
`pip install datasketch` first: personaloom does not need it).
`--conversations N` (default 1,000,000).
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from personaloom.dedup import NUM_PERM, Deduplicator, conversation_words, shingles
from personaloom.records import Conversation, Turn

VOCAB = 20_000


def words(rng: random.Random, zipf: np.ndarray, n: int) -> str:
    return " ".join(f"w{int(i)}" for i in rng.choices(range(VOCAB), cum_weights=zipf, k=n))


def generate(n: int, seed: int = 0) -> Iterator[tuple[Conversation, str]]:
    """(conversation, what was planted: "", "near", "far" or "exact") for n conversations."""
    rng = random.Random(seed)
    zipf = np.cumsum(1.0 / np.arange(1, VOCAB + 1))
    recent: deque[list[str]] = deque(maxlen=1000)
    for i in range(n):
        planted = ""
        if recent and i % 100 == 99:
            lines, planted = list(rng.choice(recent)), "exact"
        elif recent and i % 10 == 9:
            lines, planted = list(rng.choice(recent)), "near" if i % 20 == 19 else "far"
            for j in rng.sample(range(len(lines)), 1 if planted == "near" else 6):
                lines[j] = words(rng, zipf, rng.randint(8, 14))
        else:
            lines = [words(rng, zipf, rng.randint(8, 14)) for _ in range(16)]
            recent.append(lines)
        yield (Conversation(id=f"c{i}", user1_persona=["I like tea."], user2_persona=["I am a nurse."],
                            turns=[Turn(speaker=1 + k % 2, text=t) for k, t in enumerate(lines)]), planted)


def compare(n: int) -> None:
    import rensa
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(conversation_words(c)) for c, _ in generate(n)]
    start = time.perf_counter()
    lsh = rensa.RMinHashLSH(threshold=0.7, num_perm=NUM_PERM, num_bands=32)
    for i, s in enumerate(sets):
        m = rensa.RMinHash(num_perm=NUM_PERM, seed=1)
        m.update(s)
        lsh.query(m)
        lsh.insert(i, m)
    fast = time.perf_counter() - start
    start = time.perf_counter()
    index = MinHashLSH(threshold=0.7, num_perm=NUM_PERM, params=(32, 4))
    for i, s in enumerate(sets):
        mh = MinHash(num_perm=NUM_PERM, seed=1)
        mh.update_batch([x.encode() for x in s])
        index.query(mh)
        index.insert(str(i), mh)
    slow = time.perf_counter() - start
    print(f"{n:,} conversations, MinHash + LSH query + insert: rensa {fast / n * 1e6:.0f} us each, datasketch "
          f"{slow / n * 1e6:.0f} us each (x{slow / fast:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=1_000_000)
    ap.add_argument("--compare", type=int, default=0)
    args = ap.parse_args()
    if args.compare:
        compare(args.compare)
        return
    dedup = Deduplicator()
    planted = {"near": 0, "far": 0, "exact": 0}
    caught = {"near": 0, "far": 0, "exact": 0, "": 0}
    own = 0.0
    start = time.perf_counter()
    for k, (conversation, kind) in enumerate(generate(args.conversations)):
        if kind:
            planted[kind] += 1
        before = time.perf_counter()
        found = dedup.check(conversation)
        own += time.perf_counter() - before
        caught[kind] += found is not None
        if (k + 1) % 100_000 == 0:
            print(f"{k + 1:,} conversations, {time.perf_counter() - start:.0f} s", flush=True)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.conversations:,} conversations: Deduplicator {own:.0f} s ({args.conversations / own:,.0f}/s), "
          f"{took:.0f} s with the generation")
    print("found / planted: " + ", ".join(f"{kind} {caught[kind]:,} / {planted[kind]:,}" for kind in planted)
          + f"; unplanted ones flagged: {caught['']:,}")
    print(f"peak RSS: peak_mb={peak:.0f}")
    print(f"seconds={own:.1f}")


if __name__ == "__main__":
    main()
