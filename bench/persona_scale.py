"""Persona-stage scale benchmark: dedup + clustering + pairing at 100k attributes, and naive O(n²) at 10k.

Data: synthetic unit vectors (dim 384) around 2,000 random topic centres (cosine ~0.8 to their centre,
~0.64 to each other, like attribute embeddings that share a topic), with 5% planted near-duplicates (cosine ~0.96 to an
earlier vector). Steps, each timed:
  dedup       greedy near-duplicate removal at cosine 0.9 (embed.dedup_mask on the faiss IVF index);
              recall of the planted duplicates is reported
  clustering  query_induction.cluster(threshold 0.6): leader passes above agglomerative_max
  pairing     n profiles of 5 random attributes, pairing.pair_profiles(max_pairs=n/2, threshold=2)
Each size runs in a fresh process, so peak RSS (ru_maxrss) is that size's own.
Last line: `seconds=<total at 100k> peak_mb=<peak RSS at 100k>`. Goal: each step <= 60 s, peak <= 4 GB.

Usage: python bench/persona_scale.py [--n 100000] [--naive-n 10000] [--skip-naive]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from typing import Any

import numpy as np

DIM = 384


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    from personaloom.embed import normalize_rows

    g = np.random.default_rng(seed)
    centres = normalize_rows(g.standard_normal((2000, DIM)))
    topic = g.integers(0, len(centres), n)
    x = normalize_rows(0.8 * centres[topic] + 0.6 * normalize_rows(g.standard_normal((n, DIM))))
    n_dup = n // 20
    dup_at = np.sort(g.choice(np.arange(n // 10, n), n_dup, replace=False))
    src = (g.random(n_dup) * dup_at).astype(np.int64)  # an earlier row
    noise = normalize_rows(g.standard_normal((n_dup, DIM)))
    x[dup_at] = normalize_rows(x[src] + 0.28 * noise)
    return x, dup_at


def _profiles(n_attr: int, labels: np.ndarray[Any, Any], n_profiles: int) -> tuple[list[Any], list[Any]]:
    from personaloom.records import Attribute, Profile

    g = np.random.default_rng(1)
    attributes = [Attribute(id=f"a{i}", text=f"a{i}", cluster=int(c)) for i, c in enumerate(labels.tolist())]
    picks = g.integers(0, n_attr, size=(n_profiles, 5)).tolist()
    profiles = [
        Profile(id=f"p{k}", attributes=[f"a{i}" for i in row], attribute_ids=[f"a{i}" for i in row])
        for k, row in enumerate(picks)
    ]
    return profiles, attributes


def run_scalable(n: int) -> dict[str, Any]:
    from personaloom.config import PairConfig
    from personaloom.embed import dedup_mask
    from personaloom.stages.pairing import below_threshold, pair_profiles
    from personaloom.stages.query_induction import cluster, cluster_table

    x, dup_at = make_data(n)
    out: dict[str, Any] = {"n": n}
    t = time.perf_counter()
    keep = dedup_mask(x, 0.9)
    out["dedup_s"] = round(time.perf_counter() - t, 2)
    out["removed"] = int((~keep).sum())
    out["planted_recall"] = round(float((~keep[dup_at]).mean()), 4)
    kept = x[keep]
    t = time.perf_counter()
    labels = cluster(kept, 0.6, agglomerative_max=10000)
    out["cluster_s"] = round(time.perf_counter() - t, 2)
    out["table"] = cluster_table(kept, labels)
    profiles, attributes = _profiles(len(kept), labels, n)
    t = time.perf_counter()
    pairs = pair_profiles(profiles, attributes, PairConfig(max_pairs=n // 2, threshold=2), seed=0)
    out["pair_s"] = round(time.perf_counter() - t, 2)
    out["pairs"] = len(pairs)
    out["pairs_below_threshold"] = below_threshold(pairs, 2)
    out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_naive(n: int) -> dict[str, Any]:
    from sklearn.cluster import AgglomerativeClustering

    x, dup_at = make_data(n)
    out: dict[str, Any] = {"n": n}
    t = time.perf_counter()
    sims = x @ x.T  # n×n
    keep = np.ones(n, dtype=bool)
    for i in range(1, n):
        keep[i] = not bool((sims[i, :i][keep[:i]] >= 0.9).any())
    out["dedup_s"] = round(time.perf_counter() - t, 2)
    out["planted_recall"] = round(float((~keep[dup_at]).mean()), 4)
    del sims
    kept = x[keep]
    t = time.perf_counter()
    labels = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=0.6
    ).fit_predict(kept)
    out["cluster_s"] = round(time.perf_counter() - t, 2)
    out["clusters"] = len(np.unique(labels))
    g = np.random.default_rng(1)
    picks = g.integers(0, len(kept), size=(n, 5))
    counts = np.zeros((n, int(labels.max()) + 1), dtype=np.float32)
    np.add.at(counts, (np.repeat(np.arange(n), 5), labels[picks].ravel()), 1)
    t = time.perf_counter()
    sim = counts @ counts.T  # all n² profile pairs
    iu, ju = np.triu_indices(n, 1)
    s = sim[iu, ju]
    order = np.argsort(-s, kind="stable")
    used = np.zeros(n, dtype=bool)
    pairs = 0
    for k in order.tolist():
        if pairs >= n // 2 or s[k] < 2:
            break
        i, j = iu[k], ju[k]
        if not used[i] and not used[j]:
            used[i] = used[j] = True
            pairs += 1
    out["pair_s"] = round(time.perf_counter() - t, 2)
    out["pairs"] = pairs
    out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _in_child(fn: Any, n: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        result: dict[str, Any] = pool.apply(fn, (n,))
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--naive-n", type=int, default=10_000)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    if not args.skip_naive:
        print("naive O(n²)", _in_child(run_naive, args.naive_n), flush=True)
        print("scalable   ", _in_child(run_scalable, args.naive_n), flush=True)
    big = _in_child(run_scalable, args.n)
    print("scalable   ", big, flush=True)
    total = big["dedup_s"] + big["cluster_s"] + big["pair_s"]
    print(f"seconds={total:.1f} peak_mb={big['peak_mb']}")


if __name__ == "__main__":
    main()
