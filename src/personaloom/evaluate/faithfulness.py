"""Persona faithfulness test with an LLM judge: precision and recall of picking a speaker's attributes.

In: conversations (with both personas) and an LLMClient. Out: per (conversation, speaker) items and
micro-averaged precision / recall over all of them.

For each conversation and speaker the judge sees the conversation and 8 candidate statements:
4 true attributes of that speaker (all of them if the profile has fewer) and 4 distractors:
  negation       an LLM-written negation of one of the true attributes shown
  contradiction  an LLM-written different fact that contradicts another true attribute
  other x2       attributes of a profile from another conversation
An LLM distractor that is unusable (empty, several lines, too long, or the same as a true attribute)
is replaced by one more attribute of the other profile ("other-pad"), so the candidate count stays 8.
The candidates are shuffled with a seed keyed by (seed, conversation id, speaker). The judge returns
the numbers of the statements that belong to the speaker:
  precision = true statements picked / statements picked, recall = true statements picked / true shown,
both summed over all items (micro average). `picked_rate` gives, per candidate kind, the share the judge
picked: a good judge picks "true" often and every distractor kind rarely.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from personaloom.chat import GREEDY, ChatRequest, ChatResult, LLMClient, Message, Sampling
from personaloom.evaluate.turing import normalise_attribute, persona_key
from personaloom.executors.steps import run_step
from personaloom.prompts import render
from personaloom.records import Conversation, Failure
from personaloom.replies import json_object
from personaloom.rng import derive_seed, rng_for
from personaloom.step import Step
from personaloom.text import prompt_language

TRUE_PER_ITEM = 4
OTHER_PER_ITEM = 2
MAX_DISTRACTOR_WORDS = 30
KINDS = ("true", "negation", "contradiction", "other", "other-pad")

STATEMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"statement": {"type": "string"}},
    "required": ["statement"],
    "additionalProperties": False,
}
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"belongs": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 8}}},
    "required": ["belongs"],
    "additionalProperties": False,
}

_LABEL = re.compile(r"^\s*(?:answer|statement|negation|contradiction)\s*:\s*", re.I)
_NUMBER = re.compile(r"\b([1-9])\b")


@dataclass
class FaithItem:
    conversation: Conversation
    speaker: int
    true: list[str]
    others: list[str]  # attributes of another profile: 2 used, the rest pad unusable LLM distractors
    candidates: list[tuple[str, str]] = field(default_factory=list)  # (text, kind), in shown order
    picked: list[int] | None = None  # 0-based candidate indices; None = unparseable reply
    raw: str = ""

    @property
    def key(self) -> str:
        return f"{self.conversation.id}#{self.speaker}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation.id,
            "speaker": self.speaker,
            "candidates": [{"text": t, "kind": k} for t, k in self.candidates],
            "picked": self.picked,
            "raw": self.raw,
        }


def make_items(convs: Sequence[Conversation], pool: Sequence[Conversation], seed: int = 0) -> list[FaithItem]:
    """One item per (conversation, speaker with a non-empty persona); distractor profiles come from `pool`."""
    items: list[FaithItem] = []
    for conv in convs:
        own = {normalise_attribute(a) for a in (*conv.user1_persona, *conv.user2_persona)}
        key = persona_key(conv)
        for speaker, persona in ((1, conv.user1_persona), (2, conv.user2_persona)):
            persona = [a for a in persona if a.strip()]
            if not persona:
                continue
            rng = rng_for(seed, "faithfulness", conv.id, speaker)
            true = rng.sample(persona, min(TRUE_PER_ITEM, len(persona)))
            others: list[str] = []
            order = list(range(len(pool)))
            rng.shuffle(order)
            for i in order:  # the first other conversation with a different user pair
                other = pool[i]
                if persona_key(other) == key:
                    continue
                attrs = [a for a in (*other.user1_persona, *other.user2_persona) if a.strip()]
                others = [a for a in attrs if normalise_attribute(a) not in own]
                if len(others) >= OTHER_PER_ITEM + 2:
                    rng.shuffle(others)
                    break
            items.append(FaithItem(conv, speaker, true, others))
    return items


def _statement_request(template: str, attribute: str, item: FaithItem, kind: str, seed: int,
                       sampling: Sampling) -> ChatRequest:
    return ChatRequest(
        # A distractor in another language than the true attributes would be easy to tell apart.
        messages=[
            Message(
                role="user",
                content=render(template, attribute=attribute, language=prompt_language(item.conversation.language)),
            )
        ],
        params=sampling.params(48, derive_seed(seed, "faithfulness", kind, item.key)),
        json_schema=STATEMENT_SCHEMA,
        metadata={"stage": f"evaluate.faithfulness.{kind}", "id": item.key},
    )


def distractor_request(item: FaithItem, which: int, seed: int = 0, sampling: Sampling | None = None) -> ChatRequest:
    """which 0: the negation of true[0]; 1: a contradiction of true[1] (true[0] when there is only one);
    `sampling`: the run's (default: the paper's)."""
    sampling = sampling if sampling is not None else Sampling()
    if which == 0:
        return _statement_request("distractor_negation.j2", item.true[0], item, "negation", seed, sampling)
    target = item.true[1] if len(item.true) > 1 else item.true[0]
    return _statement_request("distractor_contradiction.j2", target, item, "contradiction", seed, sampling)


def distractor_requests(item: FaithItem, seed: int = 0, sampling: Sampling | None = None) -> list[ChatRequest]:
    """[negation of true[0], contradiction of true[1]] (see `distractor_request`)."""
    return [distractor_request(item, which, seed, sampling) for which in (0, 1)]


def parse_statement(text: str, forbidden: set[str], prompt: str = "") -> str | None:
    """The statement from a JSON or plain reply; None when unusable as a distractor: empty, several lines,
    too long, one of `forbidden` (normalised), or copied from the prompt (small models echo its examples)."""
    stripped = text.strip()
    statement: str | None = None
    data = json_object(stripped)
    if data is not None and isinstance(data.get("statement"), str):
        statement = data["statement"]
    if statement is None:
        lines = [ln for ln in stripped.splitlines() if ln.strip()]
        if len(lines) != 1 or "{" in lines[0]:
            return None
        statement = _LABEL.sub("", lines[0])
    statement = " ".join(statement.strip().strip("\"'“”").split())
    norm = normalise_attribute(statement)
    if not norm or len(statement.split()) > MAX_DISTRACTOR_WORDS or norm in forbidden:
        return None
    if prompt and f" {norm} " in f" {normalise_attribute(prompt)} ":
        return None
    return statement


def assemble(item: FaithItem, negation: str | None, contradiction: str | None, seed: int = 0) -> None:
    """Fill item.candidates: true + negation + contradiction + 2 others, padded, shuffled (seeded)."""
    cands: list[tuple[str, str]] = [(t, "true") for t in item.true]
    pads = iter(item.others[OTHER_PER_ITEM:])
    for text, kind in ((negation, "negation"), (contradiction, "contradiction")):
        if text is not None:
            cands.append((text, kind))
        else:
            pad = next(pads, None)
            if pad is not None:
                cands.append((pad, "other-pad"))
    cands += [(t, "other") for t in item.others[:OTHER_PER_ITEM]]
    rng_for(seed, "faithfulness-order", item.key).shuffle(cands)
    item.candidates = cands


def judge_request(item: FaithItem, seed: int = 0, max_tokens: int = 64) -> ChatRequest:
    prompt = render(
        "judge_faithfulness.j2",
        speaker=item.speaker,
        turns=item.conversation.turns,
        candidates=[t for t, _ in item.candidates],
    )
    return ChatRequest(
        messages=[Message(role="user", content=prompt)],
        params=GREEDY.params(max_tokens, derive_seed(seed, "faithfulness-judge", item.key)),
        json_schema=JUDGE_SCHEMA,
        metadata={"stage": "evaluate.faithfulness", "id": item.key},
    )


def parse_picks(text: str, n: int) -> list[int] | None:
    """0-based indices of the picked candidates (1..n in the reply), or None when unparseable."""
    stripped = text.strip()
    values: list[Any] | None = None
    data = json_object(stripped)
    if data is not None and isinstance(data.get("belongs"), list):
        values = data["belongs"]
    if values is None:
        if "[" not in stripped and not _NUMBER.search(stripped):
            return None
        values = [int(x) for x in _NUMBER.findall(stripped)]
    picks: set[int] = set()
    for v in values:
        if isinstance(v, bool):
            continue
        try:
            k = int(v)
        except (TypeError, ValueError):
            continue
        if 1 <= k <= n:
            picks.add(k - 1)
    return sorted(picks)


def aggregate(items: Sequence[FaithItem]) -> dict[str, Any]:
    """Micro-averaged precision / recall over items with a parsed reply, and picked rate per kind."""
    tp = picked = true_total = 0
    shown = dict.fromkeys(KINDS, 0)
    chosen = dict.fromkeys(KINDS, 0)
    valid = [it for it in items if it.picked is not None]
    for it in valid:
        sel = set(it.picked or [])
        for i, (_, kind) in enumerate(it.candidates):
            shown[kind] += 1
            if i in sel:
                chosen[kind] += 1
                picked += 1
                if kind == "true":
                    tp += 1
            if kind == "true":
                true_total += 1
    precision = tp / picked if picked else None
    recall = tp / true_total if true_total else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    return {
        "precision": round(precision, 6) if precision is not None else None,
        "recall": round(recall, 6) if recall is not None else None,
        "f1": round(f1, 6) if f1 is not None else None,
        "n": len(valid),
        "invalid": len(items) - len(valid),
        "picked_rate": {k: round(chosen[k] / shown[k], 6) if shown[k] else None for k in KINDS},
        "shown": shown,
    }


class WriteDistractor(Step[tuple[FaithItem, int], str]):
    """Distractor 0 (negation) or 1 (contradiction) of an item: a statement that is not one of the
    conversation's own attributes nor copied from the prompt."""

    role = "judge"

    def __init__(self, seed: int, sampling: Sampling | None) -> None:
        self.seed, self.sampling = seed, sampling

    def stage_of(self, item: tuple[FaithItem, int]) -> str:
        return f"evaluate.faithfulness.{('negation', 'contradiction')[item[1]]}"

    def item_id(self, item: tuple[FaithItem, int]) -> str:
        return item[0].key

    def request(self, item: tuple[FaithItem, int]) -> ChatRequest:
        return distractor_request(item[0], item[1], self.seed, self.sampling)

    def parse(self, item: tuple[FaithItem, int], result: ChatResult) -> str | Failure:
        conv = item[0].conversation
        forbidden = {normalise_attribute(a) for a in (*conv.user1_persona, *conv.user2_persona)}
        got = parse_statement(result.text, forbidden, self.request(item).messages[-1].content)
        return got if got is not None else self.failure(item, "unusable", raw=result.text)


class PickAttributes(Step[FaithItem, list[int]]):
    """The judge's picks: the candidates it says belong to the speaker (0-based)."""

    stage = "evaluate.faithfulness"
    role = "judge"

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def item_id(self, item: FaithItem) -> str:
        return item.key

    def request(self, item: FaithItem) -> ChatRequest:
        return judge_request(item, self.seed)

    def parse(self, item: FaithItem, result: ChatResult) -> list[int] | Failure:
        picks = parse_picks(result.text, len(item.candidates))
        return picks if picks is not None else self.failure(item, "unparseable", raw=result.text)


async def run_faithfulness(
    convs: Sequence[Conversation], pool: Sequence[Conversation], judge: LLMClient, seed: int = 0,
    sampling: Sampling | None = None,
) -> tuple[dict[str, Any], list[FaithItem]]:
    """Two batches: distractors for every item (sampled with `sampling`, default the paper's), then the
    judge for every item (greedy)."""
    items = make_items(convs, pool, seed)
    written = await run_step(WriteDistractor(seed, sampling), [(it, k) for it in items for k in (0, 1)], judge)
    made = {"negation": 0, "contradiction": 0}
    for i, it in enumerate(items):
        neg, con = written.get(2 * i), written.get(2 * i + 1)
        if con is not None and neg is not None and normalise_attribute(con) == normalise_attribute(neg):
            con = None  # the same statement twice would be one distractor shown twice
        made["negation"] += neg is not None
        made["contradiction"] += con is not None
        assemble(it, neg, con, seed)
    judged = await run_step(PickAttributes(seed), items, judge)
    for it, res, picks in zip(items, judged.results, judged.outputs, strict=True):
        it.raw = res.text if res.ok else f"<error: {res.error}>"
        it.picked = None if isinstance(picks, Failure) else picks
    summary = aggregate(items)
    summary["items"] = len(items)
    summary["llm_distractors"] = made
    return summary, items
