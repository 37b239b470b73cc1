"""The built-in seed set: counts, ids, persona/attribute links, and zero format defects."""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib import resources

import pytest

from personaloom.dialogue import parse_dialogue, render_dialogue, turn_defects
from personaloom.records import Attribute, Conversation
from personaloom.seeds import SEED_DATA_NAME, seed_attributes, seed_conversations

ATTRS = seed_attributes()
CONVS = seed_conversations()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_name() -> None:
    assert SEED_DATA_NAME == "builtin"


def test_counts() -> None:
    assert len(ATTRS) >= 100
    assert len(CONVS) >= 14
    for conv in CONVS:
        assert 8 <= len(conv.turns) <= 14, conv.id


def test_records_validate_and_are_package_data() -> None:
    seeds = resources.files("personaloom.seeds")
    for name, model in (("attributes.jsonl", Attribute), ("conversations.jsonl", Conversation)):
        lines = seeds.joinpath(name).read_text(encoding="utf-8").splitlines()
        assert lines and all(line.strip() for line in lines), name
        for line in lines:
            model.model_validate(json.loads(line))  # extra="forbid": no stray fields


def test_attribute_fields() -> None:
    ids = [a.id for a in ATTRS]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"seed-attr-\d{3}", i) for i in ids)
    texts = [a.text.casefold() for a in ATTRS]
    assert len(set(texts)) == len(texts)
    for a in ATTRS:
        assert a.source == "seed" and a.cluster is None
        assert a.text == a.text.strip() and a.text.endswith(".")
        assert a.text.startswith(("I ", "My ")), a.text
        assert len(a.text.split()) <= 16, a.text


def test_attributes_not_near_duplicates() -> None:
    # Lexical guard only: no two attributes share almost all their words.
    for i, a in enumerate(ATTRS):
        wa = _words(a.text)
        for b in ATTRS[i + 1 :]:
            wb = _words(b.text)
            assert len(wa & wb) / len(wa | wb) < 0.7, (a.text, b.text)


def test_conversation_fields() -> None:
    ids = [c.id for c in CONVS]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"seed-conv-\d{2}", i) for i in ids)
    known = {a.text for a in ATTRS}
    for conv in CONVS:
        assert conv.iteration is None and conv.critic is None
        assert conv.source == "personaloom-seed"
        for persona in (conv.user1_persona, conv.user2_persona):
            assert 4 <= len(persona) <= 5, conv.id
            assert len(set(persona)) == len(persona), conv.id
            missing = [p for p in persona if p not in known]
            assert not missing, (conv.id, missing)
        assert not set(conv.user1_persona) & set(conv.user2_persona), conv.id


def test_personas_vary_across_conversations() -> None:
    uses = Counter(p for c in CONVS for p in (*c.user1_persona, *c.user2_persona))
    assert max(uses.values()) <= 2
    openings = [c.turns[0].text for c in CONVS]
    assert len(set(openings)) == len(openings)


@pytest.mark.parametrize("conv", CONVS, ids=[c.id for c in CONVS])
def test_conversation_has_no_format_defects(conv: Conversation) -> None:
    assert [t.speaker for t in conv.turns] == [1 + i % 2 for i in range(len(conv.turns))]
    assert turn_defects(conv.turns) == []
    parsed = parse_dialogue(render_dialogue(conv.turns))
    assert parsed.defects == []
    assert parsed.turns == conv.turns  # render -> parse is lossless
    for turn in conv.turns:
        assert turn.text == turn.text.strip() and "\n" not in turn.text
        # No template slots, stage directions or speaker labels inside utterances.
        assert not re.search(r"[\[\]{}<>*]|\b(user|person|speaker) ?[12]\b", turn.text, re.IGNORECASE), (
            turn.text
        )


@pytest.mark.parametrize("conv", CONVS, ids=[c.id for c in CONVS])
def test_personas_are_implied_not_recited(conv: Conversation) -> None:
    text = " ".join(t.text for t in conv.turns).casefold()
    for attr in (*conv.user1_persona, *conv.user2_persona):
        assert attr.casefold().rstrip(".") not in text, (conv.id, attr)


def test_fresh_objects_each_call() -> None:
    first = seed_attributes()
    first[0].text = "changed"
    assert seed_attributes()[0].text != "changed"
