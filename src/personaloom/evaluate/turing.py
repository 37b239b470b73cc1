"""AI-detection ("Turing") test with an LLM judge: lose / win / tie rates with 95% Wilson intervals.

In: generated conversations, reference (human) conversations, an LLMClient. Out: per-pair outcomes and
their rates. Each generated conversation is paired with a reference one: the reference conversation of
the same user pair when the two persona sets match (compared as sets of normalised attribute strings,
so order, case, punctuation and which user is "1" do not matter), otherwise one sampled with a seed
keyed by the conversation id. The judge sees both conversations and names the machine-written one,
twice, with the positions swapped:
  both times the generated one  -> lose (it was spotted)
  both times the reference one  -> win
  otherwise (position-driven)   -> tie
A reply that cannot be parsed makes the pair "invalid": counted, but left out of the rates.

Both conversations are shown with the same surface form (lower-cased, no space before punctuation),
because Persona-Chat is lower-cased and tokenised: otherwise casing alone would give the answer away.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import regex

from personaloom.chat import GREEDY, ChatRequest, ChatResult, LLMClient, Message
from personaloom.executors.steps import run_step
from personaloom.prompts import render
from personaloom.records import Conversation, Failure
from personaloom.replies import json_object
from personaloom.rng import derive_seed, rng_for
from personaloom.step import Step

Choice = Literal["A", "B"]
Outcome = Literal["lose", "win", "tie", "invalid"]
OUTCOMES: tuple[Outcome, ...] = ("lose", "win", "tie")
Z95 = 1.959963984540054

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"machine_written": {"type": "string", "enum": ["A", "B"]}},
    "required": ["machine_written"],
    "additionalProperties": False,
}

# Anything but letters, digits, combining marks and spaces, in any script (a Cyrillic attribute must not
# normalise to "").
_NON_WORD = regex.compile(r"[^\p{L}\p{N}\p{M} ]+")
# SPC spells out the contractions of Persona-Chat's attributes ("i'm" -> "I am", "i'll" -> "I will").
_CONTRACTIONS = [
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"\bi'm\b"), "i am"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"\b(it|that|he|she|there|what)'s\b"), r"\1 is"),
]
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")
_ANSWER = re.compile(r"(?:machine[_ -]?written\"?\s*[:=]\s*\"?|conversation\s+|answer\s*:?\s*\"?)([AB])\b", re.I)
_BARE = re.compile(r"\b([AB])\b")


def normalise_attribute(text: str) -> str:
    """Case, punctuation, spacing and contractions do not matter ("i'm a nurse ." == "I am a nurse")."""
    low = " ".join(text.lower().replace("’", "'").replace(" '", "'").split())
    for pattern, repl in _CONTRACTIONS:
        low = pattern.sub(repl, low)
    return " ".join(_NON_WORD.sub(" ", low.replace("'", "")).split())


def persona_key(conv: Conversation) -> frozenset[frozenset[str]]:
    """The user pair as an unordered pair of attribute sets."""
    return frozenset(
        {
            frozenset(normalise_attribute(a) for a in conv.user1_persona if a.strip()),
            frozenset(normalise_attribute(a) for a in conv.user2_persona if a.strip()),
        }
    )


@dataclass
class TuringPair:
    generated: Conversation
    reference: Conversation
    matched: bool


def pair_conversations(
    generated: Sequence[Conversation], reference: Sequence[Conversation], seed: int = 0
) -> list[TuringPair]:
    by_key: dict[frozenset[frozenset[str]], Conversation] = {}
    for ref in reference:
        by_key.setdefault(persona_key(ref), ref)
    pairs: list[TuringPair] = []
    for gen in generated:
        same = by_key.get(persona_key(gen))
        if same is not None:
            pairs.append(TuringPair(gen, same, True))
        elif reference:
            pick = rng_for(seed, "turing-pair", gen.id).randrange(len(reference))
            pairs.append(TuringPair(gen, reference[pick], False))
    return pairs


def surface(text: str) -> str:
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.lower().split()))


def display_lines(conv: Conversation) -> list[str]:
    return [f"User {t.speaker}: {surface(t.text)}" for t in conv.turns]


def build_request(pair: TuringPair, order: int, seed: int = 0, max_tokens: int = 24) -> ChatRequest:
    """Order 0: generated shown as A; order 1: generated shown as B."""
    gen, ref = display_lines(pair.generated), display_lines(pair.reference)
    a, b = (gen, ref) if order == 0 else (ref, gen)
    return ChatRequest(
        messages=[Message(role="user", content=render("judge_turing.j2", conversation_a=a, conversation_b=b))],
        # Greedy: a tie should mean position bias, not sampling noise.
        params=GREEDY.params(max_tokens, derive_seed(seed, "turing", pair.generated.id)),
        json_schema=SCHEMA,
        metadata={"stage": "evaluate.turing", "id": pair.generated.id,
                  "order": ("generated-first", "reference-first")[order]},
    )


def build_requests(pair: TuringPair, seed: int = 0, max_tokens: int = 24) -> list[ChatRequest]:
    """Two requests: generated shown as A, then generated shown as B."""
    return [build_request(pair, order, seed, max_tokens) for order in (0, 1)]


def parse_choice(text: str) -> Choice | None:
    """'A' or 'B' from a JSON reply, or from free text that names exactly one of them."""
    stripped = text.strip()
    data = json_object(stripped)
    if data is not None:
        value = str(data.get("machine_written", "")).strip().upper()
        if value in ("A", "B"):
            return "A" if value == "A" else "B"
    m = _ANSWER.search(stripped)
    if m:
        return "A" if m.group(1).upper() == "A" else "B"
    bare = {x.upper() for x in _BARE.findall(stripped)}
    if len(bare) == 1:
        return "A" if bare == {"A"} else "B"
    return None


def outcome(generated_first: Choice | None, reference_first: Choice | None) -> Outcome:
    """Judge's picks for (generated shown as A) and (generated shown as B) -> lose / win / tie / invalid."""
    if generated_first is None or reference_first is None:
        return "invalid"
    spotted = (generated_first == "A", reference_first == "B")
    if all(spotted):
        return "lose"
    if not any(spotted):
        return "win"
    return "tie"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (0, 0 when n is 0)."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rates(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    valid = [o for o in outcomes if o != "invalid"]
    n = len(valid)
    counts = {o: sum(1 for v in valid if v == o) for o in OUTCOMES}
    result: dict[str, Any] = {o: round(counts[o] / n, 6) if n else None for o in OUTCOMES}
    result["n"] = n
    result["counts"] = counts
    result["invalid"] = len(outcomes) - n
    result["ci95"] = {o: [round(x, 6) for x in wilson(counts[o], n)] for o in OUTCOMES}
    return result


@dataclass
class TuringItem:
    generated_id: str
    reference_id: str
    matched: bool
    choices: list[Choice | None] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    outcome: Outcome = "invalid"

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_id": self.generated_id,
            "reference_id": self.reference_id,
            "matched": self.matched,
            "choices": self.choices,
            "outcome": self.outcome,
            "raw": self.raw,
        }


class AskTuring(Step[tuple[TuringPair, int], Choice]):
    """Which of a pair's two conversations is machine-written ("A" or "B"), for order 0 (generated shown as
    A) or 1 (generated shown as B)."""

    stage = "evaluate.turing"
    role = "judge"

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def item_id(self, item: tuple[TuringPair, int]) -> str:
        return item[0].generated.id

    def request(self, item: tuple[TuringPair, int]) -> ChatRequest:
        return build_request(item[0], item[1], self.seed)

    def parse(self, item: tuple[TuringPair, int], result: ChatResult) -> Choice | Failure:
        choice = parse_choice(result.text)
        return choice if choice is not None else self.failure(item, "unparseable", raw=result.text)


async def run_turing(
    generated: Sequence[Conversation], reference: Sequence[Conversation], judge: LLMClient, seed: int = 0
) -> tuple[dict[str, Any], list[TuringItem]]:
    """Pair, ask the judge (all requests in one batch), score. Returns (summary, per-pair items)."""
    pairs = pair_conversations(generated, reference, seed)
    run = await run_step(AskTuring(seed), [(p, order) for p in pairs for order in (0, 1)], judge)
    items: list[TuringItem] = []
    for i, p in enumerate(pairs):
        item = TuringItem(p.generated.id, p.reference.id, p.matched)
        item.raw = [r.text if r.ok else f"<error: {r.error}>" for r in run.results[2 * i : 2 * i + 2]]
        item.choices = [run.get(2 * i), run.get(2 * i + 1)]
        item.outcome = outcome(item.choices[0], item.choices[1])
        items.append(item)
    summary = rates([it.outcome for it in items])
    summary["matched_pairs"] = sum(1 for it in items if it.matched)
    summary["pairs"] = len(items)
    return summary, items
