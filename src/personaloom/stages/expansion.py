"""Persona expansion: seed attributes -> questions -> new attributes, with the paper's Table 1.

In: seed `Attribute`s, an `Embedder`, an `LLMClient`, ExpandConfig / Sampling, the run seed.
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

from personaloom import stagenames
from personaloom.chat import ChatRequest, ChatResult, LLMClient, Sampling
from personaloom.config import ExpandConfig
from personaloom.embed import Embedder, NeighborIndex, dedup_mask
from personaloom.executors.steps import run_step
from personaloom.fingerprint import StageInputs
from personaloom.records import Attribute, Failure
from personaloom.stages import persona_bootstrap as pb
from personaloom.stages import query_induction as qi
from personaloom.step import Step

log = logging.getLogger(__name__)

STAGE = stagenames.EXPAND
# The resume fingerprint's inputs (personaloom.fingerprint); the seed set is the data input.
INPUTS = StageInputs(STAGE, ("seed", "expand", "embed", "sampling"),
                     ("query_*.j2", "persona_answer.j2", "persona_describe.j2", "backend_json*.j2"), llm="main")


@dataclass
class ExpansionResult:
    attributes: list[Attribute]
    questions: list[str]
    table: dict[str, Any]
    rejections: dict[str, int] = field(default_factory=dict)
    # Replies that gave nothing usable (raw text kept), for debugging prompts.
    failures: list[Failure] = field(default_factory=list)
    # Persona-bootstrapping attempts made (each one LLM call).
    attempts: int = 0


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class ClusterQuestions(Step[tuple[int, list[str]], list[str]]):
    """Questions that a cluster's sampled attributes answer; item: (cluster label, sampled members)."""

    stage = qi.QUESTION_STAGE
    role = "expansion"

    def __init__(self, cfg: ExpandConfig, sampling: Sampling, seed: int) -> None:
        self.cfg, self.sampling, self.seed = cfg, sampling, seed

    def item_id(self, item: tuple[int, list[str]]) -> str:
        return self.request(item).metadata["id"]

    def request(self, item: tuple[int, list[str]]) -> ChatRequest:
        return qi.question_request(item[1], item[0], self.seed, self.sampling, max_tokens=self.cfg.question_max_tokens)

    def parse(self, item: tuple[int, list[str]], result: ChatResult) -> list[str] | Failure:
        got = qi.parse_questions(result.text)[: self.cfg.questions_per_cluster]
        return got or self.failure(item, "question_unparsed", raw=result.text)


class MoreQuestions(ClusterQuestions):
    """New questions like the shown ones; item: (bootstrapping step, questions shown)."""

    def request(self, item: tuple[int, list[str]]) -> ChatRequest:
        return qi.bootstrap_request(item[1], item[0], self.seed, self.sampling, n_new=self.cfg.questions_per_step,
                                    max_tokens=self.cfg.bootstrap_max_tokens)

    def parse(self, item: tuple[int, list[str]], result: ChatResult) -> list[str] | Failure:
        return qi.parse_questions(result.text) or self.failure(item, "question_unparsed", raw=result.text)


class Answer(Step[int, str]):
    """Attempt k of persona bootstrapping: a sampled persona answers a sampled question in one first-person
    sentence; rejected (reason as the Failure's) when it is not a usable new attribute."""

    stage = pb.ANSWER_STAGE
    role = "expansion"

    def __init__(self, seed_texts: list[str], questions: list[str], cfg: ExpandConfig, sampling: Sampling,
                 seed: int) -> None:
        self.seed_texts, self.questions, self.cfg, self.sampling, self.seed = seed_texts, questions, cfg, sampling, seed

    def _persona(self, k: int) -> list[str]:
        return pb.sample_persona(self.seed_texts, self.cfg.persona_size, self.seed, k)

    def item_id(self, item: int) -> str:
        return self.request(item).metadata["id"]

    def request(self, item: int) -> ChatRequest:
        question = pb.pick_question(self.questions, self.seed, item)
        return pb.answer_request(self._persona(item), question, item, self.seed, self.sampling,
                                 self.cfg.answer_max_tokens)

    def parse(self, item: int, result: ChatResult) -> str | Failure:
        answer = pb.parse_answer(result.text)
        reason = pb.answer_rejection(answer, self._persona(item), self.cfg.max_words)
        return answer if reason is None else self.failure(item, reason, raw=result.text)


async def induce_questions(
    texts: list[str], labels: np.ndarray[Any, Any], embedder: Embedder, llm: LLMClient, cfg: ExpandConfig,
    sampling: Sampling, seed: int,
) -> tuple[list[str], list[Failure]]:
    """(the deduplicated questions, the replies that gave none)."""
    members: dict[int, list[str]] = {}
    for text, label in zip(texts, labels.tolist(), strict=True):
        members.setdefault(int(label), []).append(text)
    # Largest clusters first (ties: lower label), as they carry the most common persona topics.
    order = sorted(members, key=lambda c: (-len(members[c]), c))
    if cfg.max_clusters_for_questions is not None:
        order = order[: cfg.max_clusters_for_questions]
    items = [(c, qi.sample_cluster_members(members[c], cfg.attributes_per_question, seed, c)) for c in order]
    run = await run_step(ClusterQuestions(cfg, sampling, seed), items, llm)
    questions = [q for _, got in run.kept() for q in got]
    failures = run.failures
    for step in range(cfg.bootstrap_steps):
        if not questions:
            break
        shown = qi.sample_questions(questions, 5, seed, step)
        more = await run_step(MoreQuestions(cfg, sampling, seed), [(step, shown)], llm)
        failures += more.failures
        known = {_norm(q) for q in questions}
        questions.extend(q for _, got in more.kept() for q in got if _norm(q) not in known)
    if not questions:
        return [], failures
    keep = dedup_mask(embedder.encode(questions), cfg.question_dedup_threshold)
    failures += [Failure(stage=qi.QUESTION_STAGE, item_id=q, reason="question_duplicate")
                 for q, k in zip(questions, keep.tolist(), strict=True) if not k]
    return [q for q, k in zip(questions, keep.tolist(), strict=True) if k], failures


async def bootstrap_attributes(
    seed_texts: list[str], seed_emb: np.ndarray[Any, Any], questions: list[str], embedder: Embedder,
    llm: LLMClient, cfg: ExpandConfig, sampling: Sampling, seed: int,
) -> tuple[list[str], np.ndarray[Any, Any], list[Failure], int]:
    """(new attribute texts and their embeddings in the order they were kept, the rejected attempts'
    Failures — reason "not_novel" for a duplicate of a known attribute —, the number of attempts)."""
    index = NeighborIndex(seed_emb.shape[1])
    index.add(seed_emb)
    kept: list[str] = []
    kept_vecs: list[np.ndarray[Any, Any]] = []
    failures: list[Failure] = []
    if not questions or not seed_texts or cfg.new_attributes <= 0:
        return kept, np.zeros((0, seed_emb.shape[1]), dtype=np.float32), failures, 0
    step = Answer(seed_texts, questions, cfg, sampling, seed)
    max_attempts = cfg.new_attributes * cfg.max_attempts_factor
    attempt = 0
    while len(kept) < cfg.new_attributes and attempt < max_attempts:
        need = cfg.new_attributes - len(kept)
        size = min(max_attempts - attempt, max(cfg.bootstrap_batch, 2 * need))
        run = await run_step(step, range(attempt, attempt + size), llm)
        attempt += size
        failures += run.failures
        answers = run.kept()
        if not answers:
            continue
        vecs = embedder.encode([a for _, a in answers])
        novel = dedup_mask(vecs, cfg.novelty_threshold, index)
        for (k, answer), v, is_novel in zip(answers, vecs, novel.tolist(), strict=True):
            if len(kept) >= cfg.new_attributes:
                break
            if not is_novel:
                failures.append(step.failure(k, "not_novel", raw=answer))
                continue
            kept.append(answer)
            kept_vecs.append(v)
    log.info("persona bootstrapping: %d new attributes from %d attempts", len(kept), attempt)
    emb = np.stack(kept_vecs) if kept_vecs else np.zeros((0, seed_emb.shape[1]), dtype=np.float32)
    return kept, emb, failures, attempt


async def expand(
    seed_attributes: list[Attribute],
    embedder: Embedder,
    llm: LLMClient,
    cfg: ExpandConfig,
    sampling: Sampling,
    seed: int,
) -> ExpansionResult:
    rejections: Counter[str] = Counter()
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

    questions, failures = await induce_questions(texts, labels, embedder, llm, cfg, sampling, seed)
    new_texts, new_emb, rejected, attempts = await bootstrap_attributes(
        texts, seed_emb, questions, embedder, llm, cfg, sampling, seed
    )
    failures += rejected
    rejections.update(f.reason for f in failures)
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
    # Raw text only where a reply was unusable (a duplicate question is not a reply).
    failures = [f for f in failures if f.raw is not None or f.reason == "llm_error"]
    return ExpansionResult(attributes, questions, table, dict(rejections), failures, attempts)
