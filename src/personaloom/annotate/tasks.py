"""The two human-evaluation tasks, built from conversations without any LLM call.

In: generated conversations, optional reference (human) conversations, a count and a seed.
Out: item payloads (plain JSON-able dicts) that the web app shows and the results page scores.

- AI detection ("turing"): a generated conversation and a reference one, paired as in
  evaluate.turing (same user pair when the persona sets match, order-insensitive and normalised;
  otherwise a seeded sample). Matched pairs are used first. The machine-made side is "A" in half
  of the items and "B" in the other half, in a seeded random order.
- Faithfulness: one conversation and 8 candidate statements about User 1: up to 4 of User 1's
  attributes plus distractors, one rule-based negation of a shown attribute (when a rule applies)
  and attributes of another user pair's profiles, shuffled per item.

Every text is shown in the same surface form (lower-cased, as Persona-Chat is), so casing cannot
give away which conversation or statement came from which source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from personaloom.evaluate.turing import display_lines, normalise_attribute, pair_conversations, persona_key, surface
from personaloom.records import Conversation
from personaloom.rng import rng_for

CANDIDATES = 8
TRUE_PER_ITEM = 4
NEGATIONS_PER_ITEM = 1

# Rule negations for first-person attributes; the first pattern that matches wins.
_NEGATION_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(i|my \w+(?: \w+)?) (am|is|are|was|were) not (.+)$"), r"\1 \2 \3"),
    (re.compile(r"^i (?:do not|don't|dont) (.+)$"), r"i \1"),
    (re.compile(r"^i (?:can not|cannot|can't) (.+)$"), r"i can \1"),
    (re.compile(r"^i have never (.+)$"), r"i have \1"),
    (re.compile(r"^(i|my \w+(?: \w+)?) (am|is|are|was|were|will|can|would) never (.+)$"), r"\1 \2 \3"),
    (re.compile(r"^(i|my \w+(?: \w+)?) (am|is|are|was|were|will|can|would|should) (.+)$"), r"\1 \2 not \3"),
    (re.compile(r"^i('m| m) (.+)$"), r"i am not \2"),
    (re.compile(r"^i have (been|had|lived|worked|never|always) (.+)$"), r"i have not \1 \2"),
    (re.compile(r"^i have (.+)$"), r"i do not have \1"),
    (
        re.compile(
            r"^i (like|love|enjoy|hate|own|work|live|play|drink|eat|want|need|read|watch|go|prefer|"
            r"listen|speak|grow|collect|make|cook|run|drive|sing|study|teach|volunteer|wear|take|"
            r"spend|visit|use|keep|believe|know|dislike|ride|swim|bake|write|paint|build|fish|hunt|"
            r"travel|dance|walk|jog|hike|sleep|get|think|feel|enjoys|fear|follow|attend|practice) (.+)$"
        ),
        r"i do not \1 \2",
    ),
]


def negate(attribute: str) -> str | None:
    """A rule-based negation of a first-person attribute, or None when no rule applies."""
    text = surface(attribute).rstrip(".!")
    for pattern, repl in _NEGATION_RULES:
        if pattern.match(text):
            return pattern.sub(repl, text, count=1) + "."
    return None


def turing_items(
    generated: Sequence[Conversation], reference: Sequence[Conversation], count: int, seed: int
) -> list[dict[str, Any]]:
    """Up to `count` AI-detection items, matched user pairs first."""
    usable = [c for c in generated if c.turns]
    refs = [c for c in reference if c.turns]
    if count <= 0 or not usable or not refs:
        return []
    order = list(range(len(usable)))
    rng_for(seed, "annotate-turing-order").shuffle(order)
    pairs = pair_conversations([usable[i] for i in order], refs, seed)
    pairs.sort(key=lambda p: not p.matched)  # stable: keeps the seeded order within each group
    chosen = pairs[:count]
    # Balanced positions (half A, half B, shuffled): a rater biased to one side cannot skew the rates.
    sides = (["A", "B"] * len(chosen))[: len(chosen)]
    rng_for(seed, "annotate-turing-sides", len(chosen)).shuffle(sides)
    items: list[dict[str, Any]] = []
    for pair, machine in zip(chosen, sides, strict=True):
        gen, ref = display_lines(pair.generated), display_lines(pair.reference)
        items.append(
            {
                "generated_id": pair.generated.id,
                "reference_id": pair.reference.id,
                "matched": pair.matched,
                "machine": machine,
                "a": gen if machine == "A" else ref,
                "b": ref if machine == "A" else gen,
            }
        )
    return items


def _other_attributes(conv: Conversation, pool: Sequence[Conversation], need: int, seed: int) -> list[str]:
    """Attributes of other user pairs' profiles that do not restate any attribute of `conv`."""
    own = {normalise_attribute(a) for a in (*conv.user1_persona, *conv.user2_persona)}
    key = persona_key(conv)
    rng = rng_for(seed, "annotate-faith-other", conv.id)
    order = list(range(len(pool)))
    rng.shuffle(order)
    out: list[str] = []
    seen: set[str] = set(own)
    for i in order:
        other = pool[i]
        if persona_key(other) == key:
            continue
        # One profile at a time, as in the paper ("random attributes from other profiles").
        profile = list(other.user1_persona if rng.random() < 0.5 else other.user2_persona)
        rng.shuffle(profile)
        for attr in profile:
            norm = normalise_attribute(attr)
            if attr.strip() and norm not in seen:
                seen.add(norm)
                out.append(attr)
                if len(out) >= need:
                    return out
    return out


def faithfulness_items(
    convs: Sequence[Conversation], pool: Sequence[Conversation], count: int, seed: int
) -> list[dict[str, Any]]:
    """Up to `count` faithfulness items about User 1, from conversations in seeded order."""
    usable = [c for c in convs if c.turns and any(a.strip() for a in c.user1_persona)]
    order = list(range(len(usable)))
    rng_for(seed, "annotate-faith-order").shuffle(order)
    items: list[dict[str, Any]] = []
    for i in order:
        if len(items) >= count:
            break
        conv = usable[i]
        rng = rng_for(seed, "annotate-faith", conv.id)
        persona = [a for a in conv.user1_persona if a.strip()]
        true = rng.sample(persona, min(TRUE_PER_ITEM, len(persona)))
        candidates: list[dict[str, Any]] = [{"text": t, "kind": "true"} for t in true]
        own = {normalise_attribute(a) for a in (*conv.user1_persona, *conv.user2_persona)}
        for t in true:
            if sum(1 for c in candidates if c["kind"] == "negation") >= NEGATIONS_PER_ITEM:
                break
            neg = negate(t)
            if neg is not None and normalise_attribute(neg) not in own:
                candidates.append({"text": neg, "kind": "negation"})
        others = _other_attributes(conv, pool, CANDIDATES - len(candidates), seed)
        candidates.extend({"text": o, "kind": "other"} for o in others)
        if len(candidates) < CANDIDATES:
            continue  # not enough distinct distractors in this data: skip rather than show fewer
        rng.shuffle(candidates)
        for c in candidates:
            c["text"] = surface(c["text"])
        items.append(
            {
                "conversation_id": conv.id,
                "lines": display_lines(conv),
                "candidates": candidates,
            }
        )
    return items
