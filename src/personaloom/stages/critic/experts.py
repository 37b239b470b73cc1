"""LLM critic experts: request builders and reply parsers (DESIGN.md §1 step 6).

In: candidate conversations (and their pair's profiles). Out: `ChatRequest`s that ask for structured
output (a JSON schema on the request, the same form spelled out in the prompt for backends without
schema support), and `Verdict`s parsed from the replies.
  quality (depth, coherency, consistency, diversity, likeability), pairwise: "win"/"lose"/"tie" for
      each of the two candidates against the other (`opponent_id`);
  quality, listwise: "rank" with `rank` = n (1 = best) for every candidate from one ranking call;
  faithfulness, toxicity: "pass"/"reject" for one candidate;
  traits (--big-five): reads each speaker's Big Five levels blind, "pass" when at least
      `min_agreement` of them match the levels the speakers were given (the reading is kept);
  cross_session (--sessions): "pass"/"reject" for a later session against the earlier ones;
  scenario (generate.scenarios): "pass"/"reject": does the candidate follow the scenario it was written for?
A reply that cannot be parsed (or a failed call) gives decision "abstain" with the problem in the
rationale, never an exception; the round records it as a Failure. Each expert is registered as a
`CriticExpert` (stages/critic/registry.py) at the end of this module; the evaluation reuses the
request builders and parsers.
Prompts live in prompts/critic_*.j2; untrusted text enters them only through `quoted`/`persona_block`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from personaloom import rng
from personaloom.chat import ChatRequest, ChatResult, Message, Sampling, SamplingParams
from personaloom.prompts import render, render_fixed, turn_lines
from personaloom.records import TRAITS, Conversation, Expert, Session, Verdict
from personaloom.replies import json_object
from personaloom.stages.critic.registry import CriticExpert, ExpertContext, abstain, register
from personaloom.text import prompt_language
from personaloom.traits import agreement, agreement_rate, levels

QUALITY_EXPERTS: tuple[Expert, ...] = ("depth", "coherency", "consistency", "diversity", "likeability")
# traits, cross_session and scenario filter only conversations that use their feature.
FILTER_EXPERTS: tuple[Expert, ...] = ("faithfulness", "toxicity", "traits", "cross_session", "scenario")
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Short rationales: the decision comes first in the schema so that a reply cut by max_tokens still
# carries it.
_RATIONALE: dict[str, Any] = {"type": "string", "maxLength": 240}


def stage_of(expert: str) -> str:
    return f"critic.{expert}"


def _schema(decision_key: str, decision: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {decision_key: decision, "rationale": _RATIONALE},
        "required": [decision_key, "rationale"],
        "additionalProperties": False,
    }


PAIRWISE_SCHEMA = _schema("better", {"type": "string", "enum": ["A", "B", "tie"]})
FAITHFULNESS_SCHEMA = _schema("verdict", {"type": "string", "enum": ["faithful", "unfaithful"]})
TOXICITY_SCHEMA = _schema("label", {"type": "string", "enum": ["safe", "toxic"]})
CROSS_SESSION_SCHEMA = _schema("verdict", {"type": "string", "enum": ["consistent", "contradictory"]})
SCENARIO_SCHEMA = _schema("verdict", {"type": "string", "enum": ["follows", "ignores"]})


def traits_schema(traits: list[str]) -> dict[str, Any]:
    levels_obj = {
        "type": "object",
        "properties": {t: {"type": "string", "enum": ["high", "low"]} for t in traits},
        "required": traits,
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"user1": levels_obj, "user2": levels_obj, "rationale": _RATIONALE},
        "required": ["user1", "user2", "rationale"],
        "additionalProperties": False,
    }


def listwise_schema(n: int) -> dict[str, Any]:
    labels = list(LABELS[:n])
    return _schema(
        "ranking",
        {"type": "array", "items": {"type": "string", "enum": labels}, "minItems": n, "maxItems": n},
    )


def _request(
    system: str, user: str, schema: dict[str, Any], params: SamplingParams, expert: str, item_id: str
) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="system", content=system), Message(role="user", content=user)],
        params=params,
        json_schema=schema,
        metadata={"stage": stage_of(expert), "id": item_id},
    )


# ---- reply parsing ---------------------------------------------------------------------------


def _field(text: str, key: str, choices: tuple[str, ...]) -> tuple[str, str] | str:
    """(choice, rationale) from a reply, or the problem as a string.

    Falls back to a regex on `"key": "value"` so that a reply cut off inside its rationale still counts.
    """
    if not text.strip():
        return "empty reply"
    obj = json_object(text)
    raw_value: Any = None
    rationale = ""
    if obj is not None:
        raw_value = obj.get(key)
        rationale = str(obj.get("rationale", ""))
    if raw_value is None:
        m = re.search(rf'"{re.escape(key)}"\s*:\s*"([^"]*)"', text)
        if m is None:
            return f"no {key!r} in reply"
        raw_value = m.group(1)
        r = re.search(r'"rationale"\s*:\s*"([^"]*)', text)
        rationale = r.group(1) if r else ""
    value = str(raw_value).strip().lower()
    for choice in choices:
        if value == choice.lower():
            return choice, " ".join(rationale.split())[:500]
    return f"{key}={raw_value!r} is not one of {list(choices)}"


def _problem(result: ChatResult) -> str | None:
    if result.error is not None:
        return f"llm error: {result.error}"
    if not result.texts:
        return "no reply"
    return None


def _verdict(conv: Conversation, **fields: Any) -> Verdict:
    """A verdict about `conv`, stamped with its id, pair and iteration."""
    return Verdict(conversation_id=conv.id, pair_id=conv.pair_id, iteration=conv.iteration, **fields)


# ---- quality experts, pairwise -------------------------------------------------------------


@lru_cache(maxsize=1024)  # the same two candidates, in the same order, are shown to every quality expert
def _pairwise_user(a: tuple[tuple[int, str], ...], b: tuple[tuple[int, str], ...]) -> str:
    shown = (("A", a), ("B", b))
    items = [{"label": label, "turns": [{"speaker": s, "text": t} for s, t in turns]} for label, turns in shown]
    return render("critic_quality_user.j2", items=items)


def build_pairwise_request(
    expert: str, a: Conversation, b: Conversation, sampling: Sampling, max_tokens: int, seed: int
) -> ChatRequest:
    """Ask `expert` which of A (= a) and B (= b) is better. The caller picks the order."""
    system = render_fixed(f"critic_{expert}.j2", mode="pairwise", labels=("A", "B"))
    user = _pairwise_user(turn_lines(a.turns), turn_lines(b.turns))
    params = sampling.params(max_tokens, rng.derive_seed(seed, stage_of(expert), a.id, b.id))
    return _request(system, user, PAIRWISE_SCHEMA, params, expert, f"{a.id}|{b.id}")


def parse_pairwise(expert: str, a: Conversation, b: Conversation, result: ChatResult) -> list[Verdict]:
    """Two verdicts, one per candidate (win/lose/tie against the other), or two abstentions."""
    problem = _problem(result)
    parsed = _field(result.text, "better", ("A", "B", "tie")) if problem is None else problem
    if isinstance(parsed, str):
        return [
            abstain(a, expert, parsed, b.id),
            abstain(b, expert, parsed, a.id),
        ]
    better, rationale = parsed
    decision_a = {"A": "win", "B": "lose", "tie": "tie"}[better]
    decision_b = {"A": "lose", "B": "win", "tie": "tie"}[better]
    shown = f"[shown as A={a.id}, B={b.id}; answer {better}] {rationale}".strip()
    return [
        _verdict(a, expert=expert, decision=decision_a, rationale=shown, opponent_id=b.id),
        _verdict(b, expert=expert, decision=decision_b, rationale=shown, opponent_id=a.id),
    ]


# ---- quality experts, listwise -------------------------------------------------------------


def build_listwise_request(
    expert: str, convs: list[Conversation], sampling: Sampling, max_tokens: int, seed: int
) -> ChatRequest:
    """Ask `expert` to rank all of `convs`, labelled A, B, C, ... in the given order."""
    labels = list(LABELS[: len(convs)])
    system = render_fixed(f"critic_{expert}.j2", mode="listwise", labels=tuple(labels))
    items = [{"label": label, "turns": c.turns} for label, c in zip(labels, convs, strict=True)]
    user = render("critic_quality_user.j2", items=items)
    ids = [c.id for c in convs]
    params = sampling.params(max_tokens, rng.derive_seed(seed, stage_of(expert), "listwise", *ids))
    return _request(system, user, listwise_schema(len(convs)), params, expert, "|".join(ids))


def _ranking(text: str, labels: list[str]) -> tuple[list[str], str] | str:
    obj = json_object(text)
    raw: Any = obj.get("ranking") if obj is not None else None
    rationale = str(obj.get("rationale", "")) if obj is not None else ""
    if raw is None:
        m = re.search(r'"ranking"\s*:\s*\[([^\]]*)', text)
        if m is None:
            return "no 'ranking' in reply"
        raw = re.findall(r'"([^"]*)"', m.group(1))
    if not isinstance(raw, list):
        return f"ranking={raw!r} is not a list"
    order: list[str] = []
    for item in raw:
        label = str(item).strip().upper()
        if label in labels and label not in order:
            order.append(label)
    if not order:
        return f"ranking={raw!r} names none of {labels}"
    return order, " ".join(rationale.split())[:500]


def parse_listwise(expert: str, convs: list[Conversation], result: ChatResult) -> list[Verdict]:
    """One "rank" verdict per candidate (`rank` 1 = best). Labels the judge left out (small models repeat one)
    share the rank after the last one it gave, so a partial ranking still counts for what it says."""
    labels = list(LABELS[: len(convs)])
    problem = _problem(result)
    parsed = _ranking(result.text, labels) if problem is None else problem
    if isinstance(parsed, str):
        return [abstain(c, expert, parsed) for c in convs]
    order, rationale = parsed
    shown = ", ".join(f"{label}={c.id}" for label, c in zip(labels, convs, strict=True))
    note = f"[shown as {shown}; ranking {''.join(order)}] {rationale}".strip()
    verdicts = []
    for label, conv in zip(labels, convs, strict=True):
        rank = order.index(label) + 1 if label in order else len(order) + 1
        verdicts.append(_verdict(conv, expert=expert, decision="rank", rank=rank, rationale=note))
    return verdicts


def _pass_or_reject(
    conv: Conversation, result: ChatResult, expert: str, key: str, labels: tuple[str, str]
) -> Verdict:
    """A pass/reject expert's verdict from a reply whose `key` holds labels[0] (pass) or labels[1]."""
    problem = _problem(result)
    parsed = _field(result.text, key, labels) if problem is None else problem
    if isinstance(parsed, str):
        return abstain(conv, expert, parsed)
    label, rationale = parsed
    decision = "pass" if label == labels[0] else "reject"
    return _verdict(conv, expert=expert, decision=decision, rationale=rationale)


# ---- faithfulness ----------------------------------------------------------------------------


def build_faithfulness_request(
    conv: Conversation, sampling: Sampling, seed: int, max_tokens: int = 160
) -> ChatRequest:
    system = render_fixed("critic_faithfulness.j2", language=prompt_language(conv.language))
    user = render("critic_faithfulness_user.j2", user1=conv.user1_persona, user2=conv.user2_persona, turns=conv.turns)
    params = sampling.params(max_tokens, rng.derive_seed(seed, stage_of("faithfulness"), conv.id))
    return _request(system, user, FAITHFULNESS_SCHEMA, params, "faithfulness", conv.id)


def parse_faithfulness(conv: Conversation, result: ChatResult) -> Verdict:
    return _pass_or_reject(conv, result, "faithfulness", "verdict", ("faithful", "unfaithful"))


# ---- toxicity --------------------------------------------------------------------------------


def build_toxicity_request(
    conv: Conversation, sampling: Sampling, seed: int, max_tokens: int = 160
) -> ChatRequest:
    """Is `conv` toxic? Also used by the evaluation suite (toxicity rate)."""
    system = render_fixed("critic_toxicity.j2", language=prompt_language(conv.language))
    user = render("critic_toxicity_user.j2", turns=conv.turns)
    params = sampling.params(max_tokens, rng.derive_seed(seed, stage_of("toxicity"), conv.id))
    return _request(system, user, TOXICITY_SCHEMA, params, "toxicity", conv.id)


def parse_toxicity(conv: Conversation, result: ChatResult) -> Verdict:
    """decision "pass" (safe), "reject" (toxic) or "abstain" (no usable reply)."""
    return _pass_or_reject(conv, result, "toxicity", "label", ("safe", "toxic"))


# ---- Big Five traits -------------------------------------------------------------------------


def judged_traits(conv: Conversation) -> list[str]:
    """The traits set for either speaker, in TRAITS order (none: the conversation has no levels)."""
    have = set(levels(conv.user1_traits)) | set(levels(conv.user2_traits))
    return [t for t in TRAITS if t in have]


def build_traits_request(
    conv: Conversation, sampling: Sampling, seed: int, max_tokens: int = 160
) -> ChatRequest:
    """Read both speakers' levels of the traits they were given (the judge does not see the levels)."""
    traits = judged_traits(conv)
    system = render("critic_traits.j2", traits=traits)
    user = render("critic_traits_user.j2", turns=conv.turns)
    params = sampling.params(max_tokens, rng.derive_seed(seed, stage_of("traits"), conv.id))
    return _request(system, user, traits_schema(traits), params, "traits", conv.id)


def _reading(text: str, traits: list[str]) -> dict[str, dict[str, str]] | str:
    obj = json_object(text)
    if obj is None or not ({"user1", "user2"} & set(obj)):
        # A reply cut off inside its rationale (max_tokens) still holds complete user objects.
        obj = {}
        for m in re.finditer(r'"(user[12])"\s*:\s*(\{[^{}]*\})', text):
            try:
                obj[m.group(1)] = json.loads(m.group(2))
            except json.JSONDecodeError:
                continue
    reading: dict[str, dict[str, str]] = {}
    for side in ("user1", "user2"):
        given = obj.get(side)
        if not isinstance(given, dict):
            continue
        got = {t: str(given[t]).strip().lower() for t in traits if t in given}
        reading[side] = {t: v for t, v in got.items() if v in ("high", "low")}
    if not any(reading.values()):
        return "no 'high'/'low' reading for any trait"
    return reading


def parse_traits(conv: Conversation, result: ChatResult, min_agreement: float = 0.6) -> Verdict:
    problem = _problem(result)
    parsed = _reading(result.text, judged_traits(conv)) if problem is None else problem
    if isinstance(parsed, str):
        return abstain(conv, "traits", parsed)
    per_trait = agreement({"user1": conv.user1_traits, "user2": conv.user2_traits}, parsed)
    rate = agreement_rate(per_trait)
    matches = sum(m for m, _ in per_trait.values())
    judged = sum(n for _, n in per_trait.values())
    obj = json_object(result.text) or {}
    rationale = " ".join(str(obj.get("rationale", "")).split())[:400]
    decision = "pass" if rate is not None and rate >= min_agreement else "reject"
    return _verdict(
        conv,
        expert="traits",
        decision=decision,
        rationale=f"{matches} of {judged} levels as set. {rationale}".strip(),
        reading={**parsed, "agreement": None if rate is None else round(rate, 4)},
    )


# ---- cross-session consistency ----------------------------------------------------------------


# Earlier sessions shown in full; older ones reach the judge through the speakers' memories, so the
# prompt does not grow with the number of sessions.
CROSS_SESSION_SHOWN = 2


def build_cross_session_request(
    conv: Conversation,
    earlier: list[Session],
    gap: str,
    sampling: Sampling,
    seed: int,
    max_tokens: int = 160,
    memory: dict[str, str] | None = None,
) -> ChatRequest:
    """Does `conv` (a candidate for the next session, `gap` after the last of `earlier`) contradict them?"""
    system = render_fixed("critic_cross_session.j2")
    shown = [{"index": s.index, "gap": s.gap, "turns": s.turns} for s in earlier[-CROSS_SESSION_SHOWN:]]
    user = render("critic_cross_session_user.j2", earlier=shown, gap=gap, turns=conv.turns, memory=memory or {})
    params = sampling.params(max_tokens, rng.derive_seed(seed, stage_of("cross_session"), conv.id))
    return _request(system, user, CROSS_SESSION_SCHEMA, params, "cross_session", conv.id)


def parse_cross_session(conv: Conversation, result: ChatResult) -> Verdict:
    return _pass_or_reject(conv, result, "cross_session", "verdict", ("consistent", "contradictory"))


# ---- scenario ---------------------------------------------------------------------------------


def build_scenario_request(conv: Conversation, sampling: Sampling, seed: int, max_tokens: int = 160) -> ChatRequest:
    """Does `conv` follow `conv.scenario`, the scenario it was generated for?"""
    system = render_fixed("critic_scenario.j2", language=prompt_language(conv.language))
    user = render("critic_scenario_user.j2", scenario=conv.scenario or "", turns=conv.turns)
    params = sampling.params(max_tokens, rng.derive_seed(seed, stage_of("scenario"), conv.id))
    return _request(system, user, SCENARIO_SCHEMA, params, "scenario", conv.id)


def parse_scenario(conv: Conversation, result: ChatResult) -> Verdict:
    return _pass_or_reject(conv, result, "scenario", "verdict", ("follows", "ignores"))


# ---- the registered experts ------------------------------------------------------------------


class QualityExpert(CriticExpert):
    """One of the paper's quality experts (prompts/critic_<name>.j2), pairwise or listwise by ctx.mode."""

    kind = "quality"

    def __init__(self, name: str) -> None:
        self.name = name

    def request(self, shown: tuple[Conversation, ...], ctx: ExpertContext) -> ChatRequest:
        if ctx.mode == "listwise":
            return build_listwise_request(self.name, list(shown), ctx.sampling, ctx.max_tokens, ctx.seed)
        a, b = shown
        return build_pairwise_request(self.name, a, b, ctx.sampling, ctx.max_tokens, ctx.seed)

    def parse(self, shown: tuple[Conversation, ...], result: ChatResult, ctx: ExpertContext) -> list[Verdict]:
        if ctx.mode == "listwise":
            return parse_listwise(self.name, list(shown), result)
        a, b = shown
        return parse_pairwise(self.name, a, b, result)


class Faithfulness(CriticExpert):
    name = "faithfulness"

    def request(self, shown: tuple[Conversation, ...], ctx: ExpertContext) -> ChatRequest:
        return build_faithfulness_request(shown[0], ctx.sampling, ctx.seed, ctx.max_tokens)

    def parse(self, shown: tuple[Conversation, ...], result: ChatResult, ctx: ExpertContext) -> list[Verdict]:
        return [parse_faithfulness(shown[0], result)]


class Toxicity(CriticExpert):
    name = "toxicity"

    def request(self, shown: tuple[Conversation, ...], ctx: ExpertContext) -> ChatRequest:
        return build_toxicity_request(shown[0], ctx.sampling, ctx.seed, ctx.max_tokens)

    def parse(self, shown: tuple[Conversation, ...], result: ChatResult, ctx: ExpertContext) -> list[Verdict]:
        return [parse_toxicity(shown[0], result)]


class Traits(CriticExpert):
    """--big-five: judges only a conversation whose speakers were given levels."""

    name = "traits"

    def applies(self, conv: Conversation, ctx: ExpertContext) -> bool:
        return bool(judged_traits(conv))

    def request(self, shown: tuple[Conversation, ...], ctx: ExpertContext) -> ChatRequest:
        return build_traits_request(shown[0], ctx.sampling, ctx.seed, ctx.max_tokens)

    def parse(self, shown: tuple[Conversation, ...], result: ChatResult, ctx: ExpertContext) -> list[Verdict]:
        return [parse_traits(shown[0], result, ctx.min_agreement)]


class CrossSession(CriticExpert):
    """--sessions: judges only a later session's candidates, against the earlier sessions."""

    name = "cross_session"

    def applies(self, conv: Conversation, ctx: ExpertContext) -> bool:
        return ctx.session is not None

    def request(self, shown: tuple[Conversation, ...], ctx: ExpertContext) -> ChatRequest:
        assert ctx.session is not None  # applies() admits later sessions only
        s = ctx.session
        return build_cross_session_request(shown[0], s.previous, s.gap, ctx.sampling, ctx.seed, ctx.max_tokens,
                                           s.memory)

    def parse(self, shown: tuple[Conversation, ...], result: ChatResult, ctx: ExpertContext) -> list[Verdict]:
        return [parse_cross_session(shown[0], result)]


class ScenarioExpert(CriticExpert):
    """generate.scenarios: judges only a conversation generated for a scenario."""

    name = "scenario"

    def applies(self, conv: Conversation, ctx: ExpertContext) -> bool:
        return bool(conv.scenario)

    def request(self, shown: tuple[Conversation, ...], ctx: ExpertContext) -> ChatRequest:
        return build_scenario_request(shown[0], ctx.sampling, ctx.seed, ctx.max_tokens)

    def parse(self, shown: tuple[Conversation, ...], result: ChatResult, ctx: ExpertContext) -> list[Verdict]:
        return [parse_scenario(shown[0], result)]


for _expert in (*(QualityExpert(n) for n in QUALITY_EXPERTS), Faithfulness(), Toxicity(), Traits(), CrossSession(),
                ScenarioExpert()):
    register(_expert)
