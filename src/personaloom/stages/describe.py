"""Persona collections as seeds: descriptions -> first-person attributes (DESIGN.md §1 step 2's format).

In: `PersonaRecord`s sampled from a persona collection (io/personas.py), the run's LLM client, embedder,
ExpandConfig and sampling. Out: `Described`: the seed attributes (every persona's statements, exact
duplicates merged) and one `Profile` per persona (its own statements, `source` "persona", the record's
Big Five scores as `traits`), so the rest of the pipeline runs unchanged and a collection's personas can
be the run's profiles.

Per persona: one cached LLM call asks for `statements_per_persona` facts in the first person; each reply
line goes through persona bootstrapping's filters (starts with I/My, length, no slot, not a question),
and a statement too close to one the persona already has (embedding cosine >= novelty_threshold, as in
bootstrapping) is dropped. A record's named fields give statements without the LLM ("I am 34 years old."),
and a short description written as "A retired nurse who ..." is also kept as "I am a retired nurse who ...",
so a persona keeps something when the model answers nothing usable.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from personaloom import rng, stagenames
from personaloom.chat import ChatRequest, ChatResult, LLMClient, Message, Sampling
from personaloom.config import ExpandConfig
from personaloom.embed import Embedder, dedup_mask
from personaloom.executors.steps import run_step
from personaloom.io.personas import PersonaRecord
from personaloom.prompts import render
from personaloom.records import Attribute, Failure, Profile
from personaloom.stages import persona_bootstrap as pb
from personaloom.step import Step

STAGE = stagenames.EXPAND_DESCRIBE
_ARTICLE = re.compile(r"^(an?|the)\s+", re.IGNORECASE)


@dataclass
class Described:
    attributes: list[Attribute]
    profiles: list[Profile]
    rejections: dict[str, int] = field(default_factory=dict)


class Describe(Step[PersonaRecord, tuple[list[str], Counter[str]]]):
    """A persona's description -> its usable first-person statements and why the other lines were dropped."""

    stage = STAGE
    role = "expansion"

    def __init__(self, cfg: ExpandConfig, sampling: Sampling, seed: int) -> None:
        self.cfg, self.sampling, self.seed = cfg, sampling, seed

    def item_id(self, item: PersonaRecord) -> str:
        return item.id

    def request(self, item: PersonaRecord) -> ChatRequest:
        prompt = render("persona_describe.j2", description=item.text, n=self.cfg.statements_per_persona)
        seed = rng.derive_seed(self.seed, STAGE, item.id, item.line)
        return ChatRequest(
            messages=[Message(role="user", content=prompt)],
            params=self.sampling.params(self.cfg.describe_max_tokens, seed),
            metadata={"stage": STAGE, "id": item.id},
        )

    def parse(self, item: PersonaRecord, result: ChatResult) -> tuple[list[str], Counter[str]]:
        return parse_statements(result.text, self.cfg.max_words)


def from_description(text: str, max_words: int) -> str | None:
    """"A retired nurse who volunteers." -> "I am a retired nurse who volunteers." (short descriptions
    that start with an article only; None otherwise)."""
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".!? ")
    if not _ARTICLE.match(first) or len(first.split()) + 2 > max_words:
        return None
    return f"I am {first[0].lower()}{first[1:]}."


def parse_statements(text: str, max_words: int) -> tuple[list[str], Counter[str]]:
    """The reply's usable first-person statements, and why the others were dropped."""
    kept: list[str] = []
    dropped: Counter[str] = Counter()
    for line in text.splitlines():
        statement = pb.parse_answer(line)
        if not statement:
            continue
        reason = pb.answer_rejection(statement, [], max_words)
        if reason is None and statement not in kept:
            kept.append(statement)
        elif reason is not None:
            dropped[reason] += 1
    return kept, dropped


async def describe_personas(
    personas: Sequence[PersonaRecord],
    embedder: Embedder,
    llm: LLMClient,
    cfg: ExpandConfig,
    sampling: Sampling,
    seed: int,
) -> Described:
    asked = [p for p in personas if p.text]
    run = await run_step(Describe(cfg, sampling, seed), asked, llm)
    replies = dict(zip([p.id for p in asked], run.outputs, strict=True))
    rejections: Counter[str] = Counter()
    by_text: dict[str, Attribute] = {}
    profiles: list[Profile] = []
    for index, persona in enumerate(personas):
        own = from_description(persona.text, cfg.max_words) if persona.text else None
        got: list[str] = []
        reply = replies.get(persona.id)
        if isinstance(reply, Failure):
            rejections[reply.reason] += 1
        elif reply is not None:
            got, dropped = reply
            rejections.update(dropped)
        # The description's own statement, then the record's fields and the model's statements in turn, so
        # that a profile cut to profiles.size keeps some of each.
        mixed = [s for pair in itertools.zip_longest(persona.attributes, got) for s in pair if s is not None]
        statements = list(dict.fromkeys([own, *mixed] if own else mixed))
        if len(statements) > 1:
            keep = dedup_mask(embedder.encode(statements), cfg.novelty_threshold)
            rejections["not_novel"] += int((~keep).sum())
            statements = [s for s, k in zip(statements, keep.tolist(), strict=True) if k]
        if not statements:
            rejections["persona_without_statements"] += 1
            continue
        ids = []
        for text in statements:
            key = " ".join(text.lower().split())
            if key not in by_text:
                by_text[key] = Attribute(id=f"persona-{len(by_text):06d}", text=text, source="seed")
            ids.append(by_text[key].id)
        profiles.append(Profile(id=f"persona-{index:06d}", attributes=statements, attribute_ids=ids, source="persona",
                                traits=persona.traits))
    return Described(list(by_text.values()), profiles, dict(rejections))
