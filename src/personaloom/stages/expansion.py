"""Persona expansion: seed attributes -> questions -> new attributes, with the paper's Table 1.

In: seed `Attribute`s, an `Embedder`, an `LLMClient`, ExpandConfig / SamplingConfig, the run seed.
Out: `ExpansionResult` — every attribute (seed first, then generated; `cluster` set on all), the
deduplicated questions, Table 1 ({"seed": {...}, "expanded": {...}}, each with "attributes", "clusters"
and "mean_inter_cluster_distance" = mean cosine distance between the unit-mean centroids of all pairs of
distinct clusters), and rejection counts by reason.

Steps: exact-duplicate seed texts are dropped; seeds are clustered (`query_induction.cluster`); the
largest clusters (cfg.max_clusters_for_questions) each get a question request; the question set grows
by cfg.bootstrap_steps bootstrapping steps and is deduplicated by embedding cosine
(cfg.question_dedup_threshold); then persona bootstrapping runs attempts in batches until
cfg.new_attributes novel answers are kept or cfg.new_attributes * cfg.max_attempts_factor attempts are
spent. Attempt k's request depends only on (seed, k), so every request is cacheable and a resumed run
sends the same requests; results are consumed in attempt order, so the kept set is deterministic.
New attributes join the nearest seed cluster, or open a new one when farther than the clustering
threshold, which is how the cluster count grows in Table 1.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from personaloom.backends.base import ChatRequest, ChatResult, LLMClient
from personaloom.config import ExpandConfig, SamplingConfig
from personaloom.embed import Embedder, NeighborIndex, dedup_mask
from personaloom.fingerprint import StageInputs
from personaloom.records import Attribute
from personaloom.stages import persona_bootstrap as pb
from personaloom.stages import query_induction as qi
from personaloom.stats import Stats

log = logging.getLogger(__name__)

STAGE = "expand"
# The resume fingerprint's inputs (personaloom.fingerprint); the seed set is the data input.
INPUTS = StageInputs(STAGE, ("seed", "expand", "embed", "sampling"),
                     ("query_*.j2", "persona_answer.j2", "backend_json*.j2"), llm="main")


@dataclass
class ExpansionResult:
    attributes: list[Attribute]
    questions: list[str]
    table: dict[str, Any]
    rejections: dict[str, int] = field(default_factory=dict)
    # Raw replies that gave nothing usable, for debugging prompts: (stage, id, text)
    failures: list[tuple[str, str, str]] = field(default_factory=list)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _questions_or_miss(
    req: ChatRequest, res: ChatResult, rejections: Counter[str], failures: list[tuple[str, str, str]]
) -> list[str]:
    """The questions in a reply; an empty or failed reply is counted and kept as a failure."""
    got = qi.parse_questions(res.text) if res.ok else []
    if not got:
        rejections["question_unparsed" if res.ok else "llm_error"] += 1
        failures.append((req.stage, req.metadata["id"], res.text or (res.error or "")))
    return got


async def induce_questions(
    texts: list[str],
    labels: np.ndarray[Any, Any],
    embedder: Embedder,
    llm: LLMClient,
    cfg: ExpandConfig,
    sampling: SamplingConfig,
    seed: int,
    rejections: Counter[str],
    failures: list[tuple[str, str, str]],
) -> list[str]:
    members: dict[int, list[str]] = {}
    for text, label in zip(texts, labels.tolist(), strict=True):
        members.setdefault(int(label), []).append(text)
    # Largest clusters first (ties: lower label), as they carry the most common persona topics.
    order = sorted(members, key=lambda c: (-len(members[c]), c))
    if cfg.max_clusters_for_questions is not None:
        order = order[: cfg.max_clusters_for_questions]
    requests = [
        qi.question_request(
            qi.sample_cluster_members(members[c], cfg.attributes_per_question, seed, c),
            c,
            seed,
            sampling,
            max_tokens=cfg.question_max_tokens,
        )
        for c in order
    ]
    questions: list[str] = []
    for req, res in zip(requests, await llm.complete(requests), strict=True):
        got = _questions_or_miss(req, res, rejections, failures)[: cfg.questions_per_cluster]
        questions.extend(got)
    for step in range(cfg.bootstrap_steps):
        if not questions:
            break
        shown = qi.sample_questions(questions, 5, seed, step)
        req = qi.bootstrap_request(
            shown, step, seed, sampling, n_new=cfg.questions_per_step, max_tokens=cfg.bootstrap_max_tokens
        )
        res = (await llm.complete([req]))[0]
        got = _questions_or_miss(req, res, rejections, failures)
        known = {_norm(q) for q in questions}
        questions.extend(q for q in got if _norm(q) not in known)
    if not questions:
        return []
    keep = dedup_mask(embedder.encode(questions), cfg.question_dedup_threshold)
    rejections["question_duplicate"] += int((~keep).sum())
    return [q for q, k in zip(questions, keep.tolist(), strict=True) if k]


async def bootstrap_attributes(
    seed_texts: list[str],
    seed_emb: np.ndarray[Any, Any],
    questions: list[str],
    embedder: Embedder,
    llm: LLMClient,
    cfg: ExpandConfig,
    sampling: SamplingConfig,
    seed: int,
    rejections: Counter[str],
    failures: list[tuple[str, str, str]],
    stats: Stats | None = None,
) -> tuple[list[str], np.ndarray[Any, Any]]:
    """New attribute texts and their embeddings, in the order they were kept."""
    index = NeighborIndex(seed_emb.shape[1])
    index.add(seed_emb)
    kept: list[str] = []
    kept_vecs: list[np.ndarray[Any, Any]] = []
    if not questions or not seed_texts or cfg.new_attributes <= 0:
        return kept, np.zeros((0, seed_emb.shape[1]), dtype=np.float32)
    max_attempts = cfg.new_attributes * cfg.max_attempts_factor
    attempt = 0
    while len(kept) < cfg.new_attributes and attempt < max_attempts:
        need = cfg.new_attributes - len(kept)
        size = min(max_attempts - attempt, max(cfg.bootstrap_batch, 2 * need))
        batch = range(attempt, attempt + size)
        personas = [pb.sample_persona(seed_texts, cfg.persona_size, seed, k) for k in batch]
        requests = [
            pb.answer_request(p, pb.pick_question(questions, seed, k), k, seed, sampling, cfg.answer_max_tokens)
            for p, k in zip(personas, batch, strict=True)
        ]
        results = await llm.complete(requests)
        attempt += size
        answers: list[str] = []
        for req, res, persona in zip(requests, results, personas, strict=True):
            answer = pb.parse_answer(res.text) if res.ok else ""
            reason = pb.answer_rejection(answer, persona, cfg.max_words) if res.ok else "llm_error"
            if reason is not None:
                rejections[reason] += 1
                failures.append((req.stage, req.metadata["id"], res.text or (res.error or "")))
                answers.append("")
            else:
                answers.append(answer)
        ok = [i for i, a in enumerate(answers) if a]
        if not ok:
            continue
        vecs = embedder.encode([answers[i] for i in ok])
        novel = dedup_mask(vecs, cfg.novelty_threshold, index)
        for i, v, is_novel in zip(ok, vecs, novel.tolist(), strict=True):
            if len(kept) >= cfg.new_attributes:
                break
            if not is_novel:
                rejections["not_novel"] += 1
                continue
            kept.append(answers[i])
            kept_vecs.append(v)
        if stats is not None:
            stats.add(STAGE, "bootstrap_attempts", size)
    log.info("persona bootstrapping: %d new attributes from %d attempts", len(kept), attempt)
    emb = np.stack(kept_vecs) if kept_vecs else np.zeros((0, seed_emb.shape[1]), dtype=np.float32)
    return kept, emb


async def expand(
    seed_attributes: list[Attribute],
    embedder: Embedder,
    llm: LLMClient,
    cfg: ExpandConfig,
    sampling: SamplingConfig,
    seed: int,
    stats: Stats | None = None,
) -> ExpansionResult:
    rejections: Counter[str] = Counter()
    failures: list[tuple[str, str, str]] = []
    seeds: list[Attribute] = []
    seen: set[str] = set()
    for a in seed_attributes:
        key = _norm(a.text)
        if not key or key in seen:
            rejections["seed_duplicate"] += 1
            continue
        seen.add(key)
        seeds.append(a)
    texts = [a.text for a in seeds]
    if not seeds:
        return ExpansionResult([], [], {"seed": qi.cluster_table(np.zeros((0, 1)), [])}, dict(rejections))
    seed_emb = embedder.encode(texts)
    labels = qi.cluster(seed_emb, cfg.cluster_distance_threshold, cfg.agglomerative_max)
    seed_table = qi.cluster_table(seed_emb, labels)
    log.info("seed: %s", seed_table)

    questions = await induce_questions(texts, labels, embedder, llm, cfg, sampling, seed, rejections, failures)
    new_texts, new_emb = await bootstrap_attributes(
        texts, seed_emb, questions, embedder, llm, cfg, sampling, seed, rejections, failures, stats
    )
    new_labels, _ = pb.assign_clusters(
        new_emb, qi.centroids(seed_emb, labels), cfg.cluster_distance_threshold
    )
    all_labels = np.concatenate([labels, new_labels])
    all_emb = np.concatenate([seed_emb, new_emb]) if len(new_emb) else seed_emb
    table = {"seed": seed_table, "expanded": qi.cluster_table(all_emb, all_labels)}

    attributes = [a.model_copy(update={"cluster": int(c)}) for a, c in zip(seeds, labels.tolist(), strict=True)]
    attributes += [
        Attribute(id=f"gen-{i:06d}", text=t, source="generated", cluster=int(c))
        for i, (t, c) in enumerate(zip(new_texts, new_labels.tolist(), strict=True))
    ]
    if stats is not None:
        stats.add(STAGE, "seed_attributes", len(seeds))
        stats.add(STAGE, "questions", len(questions))
        stats.add(STAGE, "new_attributes", len(new_texts))
        for reason, n in rejections.items():
            stats.add(STAGE, f"rejected_{reason}", n)
        stats.extra.setdefault("expansion", {}).update(table)
    return ExpansionResult(attributes, questions, table, dict(rejections), failures)
