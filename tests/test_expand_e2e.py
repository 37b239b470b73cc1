"""End to end on the embedded backend (SmolLM2-135M via llama.cpp) at small sizes:
Persona-Chat attributes -> expand -> profiles -> pair, through the local executor and response cache;
a second run is served from the cache and gives the same result."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personaloom.config import BackendConfig, ExpandConfig, PairConfig, ProfilesConfig, SamplingConfig
from personaloom.embed import Embedder
from personaloom.records import Attribute
from personaloom.stages.expansion import expand
from personaloom.stages.pairing import pair_profiles
from personaloom.stages.profiles import build_profiles
from personaloom.stats import Stats

_PERSONA = re.compile(r"^\d+ (?:your|partner's) persona: (.*)$")


def _seed_attributes(path: Path, n: int) -> list[Attribute]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            m = _PERSONA.match(line.strip())
            if m and m.group(1) not in texts:
                texts.append(m.group(1))
            if len(texts) >= n:
                break
    return [Attribute(id=f"pc-{i:04d}", text=t) for i, t in enumerate(texts)]


async def _pipeline(seeds: list[Attribute], run_dir: Path, stats: Stats) -> dict[str, Any]:
    from personaloom.backends import create_backend
    from personaloom.backends.cache import ResponseCache
    from personaloom.executors.local import LLM

    backend = create_backend(BackendConfig())
    llm = LLM(backend, ResponseCache(run_dir / "cache.sqlite"), stats, progress=False)
    embedder = Embedder(cache_path=run_dir / "embeddings.sqlite")
    sampling = SamplingConfig()
    exp_cfg = ExpandConfig(new_attributes=4, max_clusters_for_questions=4, bootstrap_steps=1, bootstrap_batch=8)
    expansion = await expand(seeds, embedder, llm, exp_cfg, sampling, seed=0)
    prof_cfg = ProfilesConfig(profiles=4, size=3, max_tries_factor=6)
    profiles = await build_profiles(expansion.attributes, embedder, llm, prof_cfg, sampling, seed=0)
    pairs = pair_profiles(profiles.profiles, expansion.attributes, PairConfig(max_pairs=2), seed=0)
    await backend.aclose()
    return {"expansion": expansion, "profiles": profiles, "pairs": pairs, "embedder": embedder}


@pytest.mark.slow
def test_expand_profiles_pair_on_embedded_backend(persona_chat_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    seeds = _seed_attributes(persona_chat_path, 60)
    stats = Stats()
    out = asyncio.run(_pipeline(seeds, tmp_path, stats))
    expansion, profiles, pairs = out["expansion"], out["profiles"], out["pairs"]
    generated = [a for a in expansion.attributes if a.source == "generated"]
    print("\nquestions:", expansion.questions)
    print("generated:", [a.text for a in generated])
    print("table:", expansion.table, "rejections:", expansion.rejections)
    print("profiles:", [p.attributes for p in profiles.profiles], profiles.rejections)
    print("pairs:", [(p.user1_profile_id, p.user2_profile_id, p.similarity) for p in pairs])
    print("llm:", stats.to_dict()["llm"])
    assert expansion.questions, "the model produced no usable question"
    assert generated, "the model produced no usable attribute"
    assert all(re.match(r"^(I|My)\b", a.text) for a in generated)
    assert all(a.cluster is not None for a in expansion.attributes)
    assert expansion.table["expanded"]["attributes"] == len(expansion.attributes)
    texts = [a.text for a in expansion.attributes]
    emb = out["embedder"].encode(texts)
    by_text = dict(zip(texts, emb, strict=True))
    for p in profiles.profiles:
        v = np.stack([by_text[t] for t in p.attributes])
        s = v @ v.T
        assert (s[~np.eye(len(v), dtype=bool)] <= 0.9).all()
    assert len(pairs) == min(2, len(profiles.profiles) // 2)
    # a second run: every LLM call is a cache hit, same output
    stats2 = Stats()
    again = asyncio.run(_pipeline(seeds, tmp_path, stats2))
    assert stats2.to_dict()["llm"]["calls"] == 0 and stats2.to_dict()["llm"]["cache_hits"] > 0
    assert [a.model_dump() for a in again["expansion"].attributes] == [a.model_dump() for a in expansion.attributes]
    assert [p.model_dump() for p in again["pairs"]] == [p.model_dump() for p in pairs]
