"""User profiles: consistent sets of attributes, built one random attribute at a time (DESIGN.md §1 step 3).

In: attributes (texts with ids), an `Embedder`, an `LLMClient`, ProfilesConfig / Sampling, the
run seed. Out: `ProfilesResult` — profiles of exactly cfg.size attributes and rejection counts by reason.

A candidate attribute is rejected when
  redundant:     its cosine to an attribute already in the profile exceeds cfg.redundancy_threshold;
  inconsistent:  the judge finds that it contradicts an attribute in the profile. The "llm" judge sees only
                 attributes on a related topic (cosine >= cfg.topic_threshold);
  nli_failed:    the LLM gave nothing usable — rejected, since consistency is unproven.
  (nli_abstained, not a rejection: the judge flagged a statement that cannot be a contradiction, so its
  answer carries no information and is ignored — see ListwiseJudge, LLMJudge.)
Judges (cfg.nli): "llm" (ListwiseJudge) asks once per candidate which of the related profile attributes it
contradicts (a JSON list of numbers, structured output); "llm-pairwise" (LLMJudge, the paper's) has the LLM
write each attribute's negation (one request per attribute, seeded by its id, so paid once), then asks yes/no
entailment per attribute pair and direction; "cross-encoder" scores those negations with a
sentence-transformers CrossEncoder NLI model from the local path cfg.nli_model; "none" skips (b).
Profile k draws from rng_for(seed, "profiles", k) alone, so profiles are built concurrently (`window` at
a time, so that memory holds the window, not every profile's pending calls) and still come out the same
on every run. A profile still short after size * max_tries_factor candidates is
dropped ("incomplete"); a later profile with the same attribute set as an earlier one is dropped
("duplicate_profile").
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from personaloom import rng, stagenames
from personaloom.aio import map_window
from personaloom.chat import ChatRequest, ChatResult, LLMClient, Message, Sampling, SamplingParams
from personaloom.config import ProfilesConfig
from personaloom.embed import Embedder
from personaloom.errors import ConfigError
from personaloom.executors.steps import run_step
from personaloom.fingerprint import StageInputs
from personaloom.prompts import render
from personaloom.records import Attribute, Failure, Profile
from personaloom.replies import json_object
from personaloom.stages.persona_bootstrap import parse_answer
from personaloom.step import Step

STAGE = stagenames.PROFILES
# The resume fingerprint's inputs (personaloom.fingerprint); attributes come in through upstream.
INPUTS = StageInputs(STAGE, ("seed", "profiles", "embed", "sampling", "big_five"),
                     ("negation.j2", "nli.j2", "consistency.j2", "backend_json*.j2"), llm="main")
NEGATION_STAGE = stagenames.PROFILES_NEGATION
NLI_STAGE = stagenames.PROFILES_NLI

NLI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass
class ProfilesResult:
    profiles: list[Profile]
    rejections: dict[str, int] = field(default_factory=dict)


ItemT = TypeVar("ItemT")
OutT = TypeVar("OutT")


class _Seeded(Step[ItemT, OutT]):
    """A profiles step whose calls are seeded by the item's key (the same question is paid once per run)."""

    role = "expansion"

    def __init__(self, seed: int, sampling: Sampling, max_tokens: int = 32) -> None:
        self.seed, self.sampling, self.max_tokens = seed, sampling, max_tokens

    def params(self, key: str) -> SamplingParams:
        return self.sampling.params(self.max_tokens, rng.derive_seed(self.seed, self.stage, key))


class Negate(_Seeded[Attribute, str]):
    """An attribute's negation, written by the LLM (seeded by the attribute id: paid once per run)."""

    stage = NEGATION_STAGE

    def item_id(self, item: Attribute) -> str:
        return item.id

    def request(self, item: Attribute) -> ChatRequest:
        return ChatRequest(
            messages=[Message(role="user", content=render("negation.j2", statement=item.text))],
            params=self.params(item.id),
            metadata={"stage": NEGATION_STAGE, "id": item.id},
        )

    def parse(self, item: Attribute, result: ChatResult) -> str | Failure:
        return parse_negation(result.text) or self.failure(item, "empty", raw=result.text)


def parse_negation(text: str) -> str:
    """First sentence of the reply, cleaned; "" when there is none."""
    return parse_answer(text.replace("->", "\n"))


@dataclass(frozen=True)
class Entailment:
    """Does `premise` entail `hypothesis`? `key`: (premise id, other id, "not" | "is")."""

    key: tuple[str, str, str]
    premise: str
    hypothesis: str


class AskEntailment(_Seeded[Entailment, bool]):
    """The NLI judge's yes/no (structured output), seeded by the question's key."""

    stage = NLI_STAGE

    def item_id(self, item: Entailment) -> str:
        return f"{item.key[0]}|{item.key[2]}:{item.key[1]}"

    def request(self, item: Entailment) -> ChatRequest:
        prompt = render("nli.j2", premise=item.premise, hypothesis=item.hypothesis)
        return ChatRequest(
            messages=[Message(role="user", content=prompt)],
            params=self.params(self.item_id(item)),
            json_schema=NLI_SCHEMA,
            metadata={"stage": NLI_STAGE, "id": self.item_id(item)},
        )

    def parse(self, item: Entailment, result: ChatResult) -> bool | Failure:
        answer = parse_yes_no(result.text)
        return answer if answer is not None else self.failure(item, "unparseable", raw=result.text)


def parse_yes_no(text: str) -> bool | None:
    """{"answer": "yes"} -> True, "no" -> False; a bare yes/no is accepted too; otherwise None."""
    data = json_object(text)
    if data is not None and isinstance(data.get("answer"), str):
        answer = data["answer"].strip().lower()
        if answer in ("yes", "no"):
            return bool(answer == "yes")
    m = _YES_NO.search(text)
    return None if m is None else m.group(1).lower() == "yes"


class Negations:
    """Negation text per attribute id ("" when the LLM gave none), each asked once per run (the executor
    shares a request that is already in flight)."""

    def __init__(self, llm: LLMClient, seed: int, sampling: Sampling, max_tokens: int) -> None:
        self.llm, self.step = llm, Negate(seed, sampling, max_tokens)
        self._done: dict[str, str] = {}

    async def get(self, attributes: Sequence[Attribute]) -> list[str]:
        todo = [a for a in dict((a.id, a) for a in attributes).values() if a.id not in self._done]
        run = await run_step(self.step, todo, self.llm)
        for a, out in zip(todo, run.outputs, strict=True):
            self._done[a.id] = "" if isinstance(out, Failure) else out
        return [self._done[a.id] for a in attributes]


@dataclass(frozen=True)
class Candidate:
    """A candidate attribute and the profile attributes it is judged against; the candidate's own text is
    listed too, at position `control` (0-based), as the one statement the judge must never flag."""

    attribute: Attribute
    members: tuple[Attribute, ...]
    control: int

    @property
    def statements(self) -> list[str]:
        texts = [m.text for m in self.members]
        texts.insert(self.control, self.attribute.text)
        return texts


def consistency_schema(n: int) -> dict[str, Any]:
    """{"contradicts": [statement numbers, 1..n]} (structured output; empty when nothing is contradicted)."""
    numbers = {"type": "integer", "enum": list(range(1, n + 1))}
    return {
        "type": "object",
        "properties": {"contradicts": {"type": "array", "items": numbers, "minItems": 0, "maxItems": n}},
        "required": ["contradicts"],
        "additionalProperties": False,
    }


class JudgeCandidate(_Seeded[Candidate, list[int]]):
    """One call per candidate: the numbers of the listed statements it contradicts (0-based positions)."""

    stage = NLI_STAGE

    def item_id(self, item: Candidate) -> str:
        return f"{item.attribute.id}|" + "+".join(m.id for m in item.members)

    def request(self, item: Candidate) -> ChatRequest:
        statements = item.statements
        prompt = render("consistency.j2", statements=statements, candidate=item.attribute.text)
        key = self.item_id(item)
        # Room for every number (about 3 tokens each) whatever the profile size.
        params = self.params(key).model_copy(update={"max_tokens": max(self.max_tokens, 12 + 3 * len(statements))})
        return ChatRequest(
            messages=[Message(role="user", content=prompt)],
            params=params,
            json_schema=consistency_schema(len(statements)),
            metadata={"stage": NLI_STAGE, "id": key},
        )

    def parse(self, item: Candidate, result: ChatResult) -> list[int] | Failure:
        found = parse_numbers(result.text, len(item.members) + 1)
        return found if found is not None else self.failure(item, "unparseable", raw=result.text)


def parse_numbers(text: str, n: int) -> list[int] | None:
    """{"contradicts": [2, 3]} -> [1, 2] (0-based); None when the reply has no such list or a number outside
    1..n."""
    data = json_object(text)
    found = None if data is None else data.get("contradicts")
    if not isinstance(found, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in found):
        return None
    if any(not 1 <= x <= n for x in found):
        return None
    return sorted({x - 1 for x in found})


class NLIJudge(Protocol):
    async def contradicts(self, candidate: Attribute, members: Sequence[Attribute]) -> list[bool | None]:
        """Per member: True = inconsistent with the candidate, False = consistent, None = undecided."""
        ...


class NoJudge:
    async def contradicts(self, candidate: Attribute, members: Sequence[Attribute]) -> list[bool | None]:
        return [False for _ in members]


def _combine(forward: bool | None, backward: bool | None) -> bool | None:
    if forward or backward:
        return True
    if forward is None or backward is None:
        return None
    return False


class ListwiseJudge:
    """One call per candidate: which of the profile's attributes does it contradict (JSON list of numbers)?

    The candidate's own text sits among the listed statements at a seeded position: a judge that flags it has
    given no information (it cannot contradict itself), so the answer is ignored and `abstained` counts it,
    as LLMJudge does for "yes" to everything. Same rule as the paper (a candidate contradicting an attribute
    in the profile is rejected), one call instead of 4 per attribute pair plus the negations.
    """

    def __init__(self, llm: LLMClient, seed: int, sampling: Sampling, max_tokens: int):
        self.llm, self.seed, self.step = llm, seed, JudgeCandidate(seed, sampling, max_tokens)
        self.abstained = 0

    async def contradicts(self, candidate: Attribute, members: Sequence[Attribute]) -> list[bool | None]:
        if not members:
            return []
        control = rng.rng_for(self.seed, NLI_STAGE, candidate.id, *(m.id for m in members)).randrange(len(members) + 1)
        item = Candidate(candidate, tuple(members), control)
        (out,) = (await run_step(self.step, [item], self.llm)).outputs
        if isinstance(out, Failure):
            return [None for _ in members]
        if control in out:
            self.abstained += 1
            return [False for _ in members]
        flagged = {i if i < control else i - 1 for i in out}
        return [i in flagged for i in range(len(members))]


class LLMJudge:
    """The paper's method, pairwise: asks the LLM whether candidate ⊨ ¬member and whether member ⊨ ¬candidate
    (structured yes/no).

    Each question has a control with the un-negated statement (candidate ⊨ member, ...). A judge that
    says "yes" to both a statement and its negation has given no information (SmolLM2-135M says "yes" to
    nearly everything): that direction counts as no evidence of contradiction, and `abstained` counts it.
    """

    def __init__(self, llm: LLMClient, negations: Negations, seed: int, sampling: Sampling, max_tokens: int):
        self.llm, self.negations, self.step = llm, negations, AskEntailment(seed, sampling, max_tokens)
        self._memo: dict[tuple[str, str, str], bool | None] = {}
        self.abstained = 0

    def _direction(self, premise_id: str, other_id: str) -> bool | None:
        neg = self._memo[(premise_id, other_id, "not")]
        pos = self._memo[(premise_id, other_id, "is")]
        if neg is None or pos is None:
            return None
        if neg and pos:
            self.abstained += 1
            return False
        return neg

    async def contradicts(self, candidate: Attribute, members: Sequence[Attribute]) -> list[bool | None]:
        if not members:
            return []
        negs = await self.negations.get([candidate, *members])
        neg_cand, neg_members = negs[0], negs[1:]
        if not neg_cand or not all(neg_members):
            return [None for _ in members]
        todo: list[Entailment] = []
        for m, neg_m in zip(members, neg_members, strict=True):
            for key, premise, hyp in (
                ((candidate.id, m.id, "not"), candidate.text, neg_m),
                ((candidate.id, m.id, "is"), candidate.text, m.text),
                ((m.id, candidate.id, "not"), m.text, neg_cand),
                ((m.id, candidate.id, "is"), m.text, candidate.text),
            ):
                if key not in self._memo:
                    todo.append(Entailment(key, premise, hyp))
        run = await run_step(self.step, todo, self.llm)
        for item, out in zip(todo, run.outputs, strict=True):
            self._memo[item.key] = None if isinstance(out, Failure) else out
        return [
            _combine(self._direction(candidate.id, m.id), self._direction(m.id, candidate.id)) for m in members
        ]


class CrossEncoderJudge:
    """A sentence-transformers CrossEncoder NLI model (e.g. a local copy of cross-encoder/nli-deberta-v3-base)
    scores (candidate, ¬member) and (member, ¬candidate); "entailment" as top label means inconsistent."""

    def __init__(self, model_path: str, negations: Negations) -> None:
        self.model_path = model_path
        self.negations = negations
        self._model: Any = None
        self._entail: int | None = None

    def _load(self) -> Any:
        if self._model is None:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import CrossEncoder

            try:
                model = CrossEncoder(self.model_path)
            except Exception as exc:  # OSError, ValueError, HF errors: all mean "cannot use this path"
                raise ConfigError(
                    f"profiles.nli_model: cannot load cross-encoder {self.model_path!r} ({type(exc).__name__}: {exc})"
                ) from None
            id2label = getattr(model.model.config, "id2label", None) or {}
            found = [int(i) for i, name in id2label.items() if "entail" in str(name).lower()]
            if not found:
                raise ConfigError(
                    f"profiles.nli_model: {self.model_path!r} has no 'entailment' label (labels: {id2label})"
                )
            self._model, self._entail = model, found[0]
        return self._model

    async def contradicts(self, candidate: Attribute, members: Sequence[Attribute]) -> list[bool | None]:
        if not members:
            return []
        negs = await self.negations.get([candidate, *members])
        neg_cand, neg_members = negs[0], negs[1:]
        if not neg_cand or not all(neg_members):
            return [None for _ in members]
        pairs = [(candidate.text, n) for n in neg_members] + [(m.text, neg_cand) for m in members]
        model = self._load()
        scores = np.asarray(await asyncio.to_thread(model.predict, pairs, show_progress_bar=False))
        top = scores.argmax(axis=1) == self._entail
        k = len(members)
        return [bool(top[i] or top[k + i]) for i in range(k)]


def make_judge(cfg: ProfilesConfig, llm: LLMClient, seed: int, sampling: Sampling) -> NLIJudge:
    negations = Negations(llm, seed, sampling, cfg.negation_max_tokens)
    if cfg.nli == "none":
        return NoJudge()
    if cfg.nli == "llm":
        return ListwiseJudge(llm, seed, sampling, cfg.nli_max_tokens)
    if cfg.nli == "cross-encoder":
        if not cfg.nli_model:
            raise ConfigError("profiles.nli=cross-encoder needs profiles.nli_model (a local model folder)")
        return CrossEncoderJudge(cfg.nli_model, negations)
    return LLMJudge(llm, negations, seed, sampling, cfg.nli_max_tokens)


async def _build_one(
    k: int,
    attributes: list[Attribute],
    emb: np.ndarray[Any, Any],
    judge: NLIJudge,
    cfg: ProfilesConfig,
    seed: int,
    rejections: Counter[str],
) -> list[int] | None:
    r = rng.rng_for(seed, STAGE, k)
    chosen: list[int] = []
    for _ in range(cfg.size * cfg.max_tries_factor):
        if len(chosen) == cfg.size:
            break
        cand = r.randrange(len(attributes))
        if cand in chosen:
            continue
        sims = (emb[chosen] @ emb[cand]).tolist() if chosen else []  # cosine to each chosen attribute
        if chosen and max(sims) > cfg.redundancy_threshold:
            rejections["redundant"] += 1
            continue
        # The listwise judge sees only attributes on a related topic (the rest cannot contradict it); the
        # paper's pairwise judge and the cross-encoder judge every pair, as before.
        gate = cfg.topic_threshold if cfg.nli == "llm" else -1.0
        related = [i for i, sim in zip(chosen, sims, strict=True) if sim >= gate]
        verdicts = await judge.contradicts(attributes[cand], [attributes[i] for i in related])
        if any(v is True for v in verdicts):
            rejections["inconsistent"] += 1
            continue
        if any(v is None for v in verdicts):
            rejections["nli_failed"] += 1
            continue
        chosen.append(cand)
    return chosen if len(chosen) == cfg.size else None


async def build_profiles(
    attributes: list[Attribute],
    embedder: Embedder,
    llm: LLMClient,
    cfg: ProfilesConfig,
    sampling: Sampling,
    seed: int,
    window: int = 256,
) -> ProfilesResult:
    distinct = len({a.text for a in attributes})
    if cfg.profiles and distinct < cfg.size:
        raise ConfigError(f"profiles.size={cfg.size} but only {distinct} distinct attributes to draw from")
    rejections: Counter[str] = Counter()
    if cfg.profiles == 0:
        return ProfilesResult([], {})
    emb = embedder.encode([a.text for a in attributes])
    judge = make_judge(cfg, llm, seed, sampling)
    built = await map_window(lambda k: _build_one(k, attributes, emb, judge, cfg, seed, rejections), cfg.profiles,
                             window)
    profiles: list[Profile] = []
    seen: set[frozenset[str]] = set()
    for k, chosen in enumerate(built):
        if chosen is None:
            rejections["incomplete"] += 1
            continue
        key = frozenset(attributes[i].text for i in chosen)
        if key in seen:
            rejections["duplicate_profile"] += 1
            continue
        seen.add(key)
        profiles.append(
            Profile(
                id=f"profile-{k:06d}",
                attributes=[attributes[i].text for i in chosen],
                attribute_ids=[attributes[i].id for i in chosen],
            )
        )
    if isinstance(judge, (LLMJudge, ListwiseJudge)) and judge.abstained:
        rejections["nli_abstained"] = judge.abstained  # not a rejection: an answer without information, ignored
    return ProfilesResult(profiles, dict(rejections))
