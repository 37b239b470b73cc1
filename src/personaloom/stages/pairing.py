"""User pairing: pair profiles whose attributes fall into the same clusters (DESIGN.md §1 step 4).

In: profiles, attributes (with `cluster` set), PairConfig, the run seed. Out: `Pair`s.

Similarity of profiles a and b = number of attribute pairs (x in a, y in b) with cluster(x) == cluster(y)
= sum over clusters c of count_a(c) * count_b(c).

Candidates come from an inverted index, never from all n² profile pairs: pass 1 indexes every profile
under each pair of its clusters, so two profiles meet in a bucket only when they share >= 2 clusters (the
paper's threshold); pass 2 (only when pass 1 leaves pairs missing) indexes single clusters over the
profiles still free. Inside a bucket, profiles in seeded order meet their next cfg.candidates_per_profile
bucket mates, bounding work at O(postings * candidates_per_profile); each candidate's exact similarity is
then computed from the sparse profile × cluster count matrix.

Greedy selection: candidates by similarity, ties broken by a seeded hash (deterministic), taken while both
profiles have been used fewer than cfg.max_uses times, until cfg.max_pairs. Pairs >= cfg.threshold come
first; if too few, the most similar remaining candidates follow (pass 2), then leftover profiles in
seeded random order (pass 3). Such pairs keep their true (lower) similarity;
`below_threshold(pairs, cfg.threshold)` counts them and a warning is logged.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import sparse

from personaloom import rng
from personaloom.config import PairConfig
from personaloom.fingerprint import StageInputs
from personaloom.records import Attribute, Pair, Profile

# The resume fingerprint's inputs (personaloom.fingerprint); profiles come in through upstream.
INPUTS = StageInputs("pair", ("seed", "pair", "big_five"))

log = logging.getLogger(__name__)

# Candidate pairs handled at once where a step costs memory per candidate.
CHUNK = 65536


def profile_clusters(profiles: Sequence[Profile], attributes: Sequence[Attribute]) -> list[list[int]]:
    """Cluster of every attribute of every profile (by attribute id, else by text; unknown ones skipped)."""
    by_id = {a.id: a.cluster for a in attributes if a.cluster is not None}
    by_text = {a.text: a.cluster for a in attributes if a.cluster is not None}
    out: list[list[int]] = []
    for p in profiles:
        clusters: list[int] = []
        for i, text in enumerate(p.attributes):
            aid = p.attribute_ids[i] if i < len(p.attribute_ids) else None
            c = by_id.get(aid) if aid is not None else None
            if c is None:
                c = by_text.get(text)
            if c is not None:
                clusters.append(int(c))
        out.append(clusters)
    return out


def _count_matrix(rows: Sequence[Sequence[int]]) -> sparse.csr_matrix:
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    cols = np.fromiter((c for r in rows for c in r), dtype=np.int64, count=int(lens.sum()))
    row_idx = np.repeat(np.arange(len(rows), dtype=np.int64), lens)
    n_cols = int(cols.max()) + 1 if len(cols) else 1
    m = sparse.csr_matrix((np.ones(len(cols), dtype=np.int32), (row_idx, cols)), shape=(len(rows), n_cols))
    m.sum_duplicates()
    return m


def _keys(rows: Sequence[Sequence[int]], min_shared: int) -> tuple[list[int], list[int]]:
    """(profile, key) postings. min_shared >= 2: one key per pair of the profile's clusters (a repeated
    cluster gives the key (c, c)), so two profiles share a key only if they share two cluster slots;
    otherwise one key per cluster."""
    owners: list[int] = []
    keys: list[int] = []
    for i, row in enumerate(rows):
        counts = Counter(row)
        if min_shared >= 2:
            distinct = sorted(counts)
            found = list(itertools.combinations(distinct, 2))
            found += [(c, c) for c, n in counts.items() if n >= 2]
            ks = [(a << 32) | b for a, b in found]
        else:
            ks = list(counts)
        owners.extend([i] * len(ks))
        keys.extend(ks)
    return owners, keys


def candidate_pairs(
    rows: Sequence[Sequence[int]], per_row: int, seed: int, min_shared: int = 2
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(i, j, similarity, tiebreak) for candidate pairs i < j, with their exact similarity.

    Inverted index key -> profiles (see `_keys`); inside a bucket, profiles in seeded order are paired
    with their next `per_row` bucket mates, so a bucket of size s costs O(s * per_row), never s²
    (small buckets give all their pairs). With min_shared=2 every candidate shares >= 2 clusters.
    """
    n = len(rows)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty, empty, empty
    g = np.random.default_rng(rng.derive_seed(seed, "pair", "tiebreak"))
    salt = g.permutation(n).astype(np.int64)
    owners_l, keys_l = _keys(rows, min_shared)
    if not owners_l:
        return empty, empty, empty, empty
    owners = np.asarray(owners_l, dtype=np.int64)
    _, key_ids = np.unique(np.asarray(keys_l, dtype=np.int64), return_inverse=True)
    order = np.lexsort((salt[owners], key_ids.reshape(-1)))
    owners, key_ids = owners[order], key_ids.reshape(-1)[order]
    # Each candidate as one code i * n + j (i < j): half the memory of two index arrays.
    codes: list[npt.NDArray[np.int64]] = []
    for d in range(1, per_row + 1):
        same = key_ids[d:] == key_ids[:-d]
        if not same.any():
            break
        a, b = owners[:-d][same], owners[d:][same]
        codes.append((np.minimum(a, b) * n + np.maximum(a, b))[a != b])
    if not codes:
        return empty, empty, empty, empty
    uniq = np.unique(np.concatenate(codes))
    del codes
    ci, cj = uniq // n, uniq % n
    p = _count_matrix(rows)
    # In chunks: the row products of all candidates at once cost ~150 bytes each (2.7M candidates at
    # 40k profiles: +500 MB).
    cs = np.concatenate([empty] + [
        np.asarray(p[ci[k : k + CHUNK]].multiply(p[cj[k : k + CHUNK]]).sum(axis=1), dtype=np.int64).ravel()
        for k in range(0, len(ci), CHUNK)
    ])
    tiebreak = (salt[ci] * n + salt[cj]) % (2**61 - 1)
    return ci, cj, cs, tiebreak


def similarity(a: Sequence[int], b: Sequence[int]) -> int:
    ca, cb = Counter(a), Counter(b)
    return sum(n * cb[c] for c, n in ca.items())


def pair_profiles(profiles: list[Profile], attributes: list[Attribute], cfg: PairConfig, seed: int) -> list[Pair]:
    n = len(profiles)
    rows = profile_clusters(profiles, attributes)
    uses = np.zeros(n, dtype=np.int64)
    chosen: list[tuple[int, int, int]] = []
    taken: set[tuple[int, int]] = set()

    def take(i: int, j: int, s: int) -> bool:
        if uses[i] >= cfg.max_uses or uses[j] >= cfg.max_uses or (i, j) in taken:
            return False
        uses[i] += 1
        uses[j] += 1
        taken.add((i, j))
        chosen.append((i, j, s))
        return True

    # Pass 1: profiles sharing >= 2 clusters, at or above the threshold, most similar first.
    # Pass 2 (only if short): any shared cluster, among the profiles still free, most similar first.
    for min_shared in (2, 1):
        if len(chosen) >= cfg.max_pairs:
            break
        free = rows if min_shared == 2 else [r if uses[k] < cfg.max_uses else [] for k, r in enumerate(rows)]
        ci, cj, cs, tie = candidate_pairs(free, cfg.candidates_per_profile, seed, min_shared)
        if min_shared == 2:
            ok = cs >= cfg.threshold
            ci, cj, cs, tie = ci[ok], cj[ok], cs[ok], tie[ok]
        order = np.lexsort((tie, -cs))
        for k in range(0, len(order), CHUNK):  # Python ints for a chunk at a time, not all candidates
            part = order[k : k + CHUNK]
            for i, j, s in zip(ci[part].tolist(), cj[part].tolist(), cs[part].tolist(), strict=True):
                if len(chosen) < cfg.max_pairs:
                    take(i, j, s)
            if len(chosen) >= cfg.max_pairs:
                break
    # Pass 3: leftover profiles, in seeded random order, with their true similarity (usually 0).
    if len(chosen) < cfg.max_pairs:
        left = [k for k in range(n) if uses[k] < cfg.max_uses]
        rng.rng_for(seed, "pair", "leftover").shuffle(left)
        # Round r pairs left[k] with left[k + r]: O(len(left)) per round, a few rounds at most.
        for offset in range(1, min(len(left), 2 * cfg.max_uses + 2)):
            for k in range(len(left)):
                if len(chosen) >= cfg.max_pairs:
                    break
                a, b = left[k], left[(k + offset) % len(left)]
                if a != b:
                    take(min(a, b), max(a, b), similarity(rows[a], rows[b]))
            if len(chosen) >= cfg.max_pairs:
                break
    low = sum(1 for _, _, s in chosen if s < cfg.threshold)
    if low:
        log.warning(
            "pairing: %d of %d pairs are below the similarity threshold %d (not enough similar profiles)",
            low,
            len(chosen),
            cfg.threshold,
        )
    # Highest similarity first in the output too, then by profile order.
    chosen.sort(key=lambda t: (-t[2], t[0], t[1]))
    return [
        Pair(
            id=f"pair-{k:06d}",
            user1_persona=list(profiles[i].attributes),
            user2_persona=list(profiles[j].attributes),
            user1_profile_id=profiles[i].id,
            user2_profile_id=profiles[j].id,
            similarity=s,
        )
        for k, (i, j, s) in enumerate(chosen)
    ]


def below_threshold(pairs: Iterable[Pair], threshold: int) -> int:
    """How many pairs were taken by the fallback (similarity under the threshold)."""
    return sum(1 for p in pairs if p.similarity is not None and p.similarity < threshold)
