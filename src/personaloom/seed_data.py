"""Seed data for a run: the shipped seed set, a conversation file, or a persona collection.

In: `--seed-data` (None / "builtin", or a path) and `--format` (None: detected). Out: a `SeedSet`:
- the shipped set or a conversation file (Persona-Chat, SPC CSV, HF JSON, JSONL): its persona attributes
  and its clean conversations (the Generator's first few-shot examples; their pairs, for keep_seed_pairs);
- a persona collection (io/personas.py: PersonaHub / FinePersonas descriptions, Nemotron-Personas records):
  `expand.personas` personas sampled from the streamed file; their attributes come from the describe stage
  (stages/describe.py) at the start of `expand`, and the few-shot examples from the shipped set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personaloom.errors import InputError
from personaloom.io.personas import KINDS, PersonaRecord, persona_kind, sample_personas
from personaloom.records import Attribute, Conversation, Pair

BUILTIN = "builtin"


@dataclass
class SeedSet:
    name: str
    attributes: list[Attribute]
    conversations: list[Conversation]
    personas: list[PersonaRecord] = field(default_factory=list)
    # False when `conversations` are the shipped examples standing in for seed data that has none.
    own_pairs: bool = True

    def identity(self) -> list[Any]:
        """What the expansion's output depends on (its resume fingerprint's data input)."""
        return [self.name, [a.text for a in self.attributes], len(self.conversations),
                [(p.id, p.text, p.attributes, p.traits) for p in self.personas]]

    @property
    def pairs(self) -> list[Pair]:
        if not self.own_pairs:
            return []
        return [
            Pair(
                id=f"seed-pair-{i:05d}",
                user1_persona=c.user1_persona,
                user2_persona=c.user2_persona,
                source="seed",
            )
            for i, c in enumerate(self.conversations)
            if c.user1_persona and c.user2_persona
        ]


def _norm(text: str) -> str:
    return " ".join(text.split()).strip()


def load_seed_set(seed_data: str | None, fmt: str | None = None, personas: int = 50, seed: int = 0) -> SeedSet:
    """The seed set `seed_data` names; `personas`: how many to sample from a persona collection."""
    from personaloom.seeds import seed_attributes, seed_conversations

    if seed_data is None or seed_data == BUILTIN:
        return SeedSet(BUILTIN, seed_attributes(), seed_conversations())
    path = Path(seed_data)
    if not path.exists():
        raise InputError("no such file (--seed-data)", path)
    kind = fmt if fmt in KINDS else (persona_kind(path) if fmt is None else None)
    if kind is not None:
        return SeedSet(path.name, [], seed_conversations(), sample_personas(path, personas, seed, kind))
    from personaloom.io import read_conversations

    conversations = read_conversations(path, fmt)
    seen: dict[str, Attribute] = {}
    for conv in conversations:
        for text in [*conv.user1_persona, *conv.user2_persona]:
            key = _norm(text).lower()
            if key and key not in seen:
                seen[key] = Attribute(id=f"seed-{len(seen):05d}", text=_norm(text), source="seed")
    if not seen:
        raise InputError("no persona attributes found in the seed data", path=path)
    # Turns are canonical whatever label form the file used: only real defects keep an example out.
    examples = [c for c in conversations if c.turns and set(c.defects) <= {"nonstandard_labels"}]
    if not examples:
        # Personas without conversations (personaloom.run(seed_data=[[...], ...])): the Generator's first
        # few-shot examples come from the shipped set, as for a persona collection; there are no seed pairs.
        return SeedSet(path.name, list(seen.values()), seed_conversations(), own_pairs=False)
    return SeedSet(path.name, list(seen.values()), examples)
