"""The Generator (DESIGN.md §1 step 5): a pair of profiles in, candidate conversations out.

`build_requests(pair, examples, ...)` makes `cfg.candidates` chat requests for one pair: the
instruction (prompts/generator.j2), few-shot examples drawn from the example pool (profile 1,
profile 2, conversation each) and the target pair's profiles last. Optional features change the
prompt only where used: Big Five levels (how each speaker comes across), a language to write in, and
for a later session of a multi-session conversation the gap and each speaker's memory
(`SessionContext`). `parse_candidate(pair, text, ...)`
turns one reply into a `Conversation` (turns, a canonical `raw`, the defects that survive
normalisation) or a `Failure` when the reply holds no utterance at all. Judging the format is the
format expert's job (stages/critic/format_expert.py), not the parser's.
"""

from __future__ import annotations

from typing import Any

from personaloom import prompts, rng, stagenames
from personaloom.chat import ChatRequest, Message, Sampling
from personaloom.config import GenerateConfig
from personaloom.dialogue import (
    DEFECT_KINDS,
    describe_non_dialogue,
    has_slot,
    is_stage_direction,
    normalise,
    parse_dialogue,
    render_dialogue,
    turn_defects,
)
from personaloom.prompts import render
from personaloom.records import Conversation, Failure, Pair, Scenario, SessionContext, Trim, Turn
from personaloom.text import is_near_duplicate, prompt_language, word_set, words
from personaloom.traits import levels

STAGE = stagenames.GENERATE
# Trimming cuts at a near-duplicate this similar (word-set Jaccard); stricter than the format
# expert's threshold so that an honest callback ("I love dogs too!") does not end a conversation.
_TRIM_NEAR = 0.7


def candidate_id(pair: Pair, iteration: int, index: int, session: SessionContext | None = None) -> str:
    if session is not None:
        return f"{pair.id}-i{iteration}-{session.tag}-c{index}"
    return f"{pair.id}-i{iteration}-c{index}"


def draw_examples(pair: Pair, examples: list[Conversation], k: int, seed: int, iteration: int) -> list[Conversation]:
    """min(k, len(pool)) examples, chosen by (seed, iteration, pair) only, whatever the pool's order."""
    pool = sorted(examples, key=lambda c: c.id)
    n = min(k, len(pool))
    if n <= 0:
        return []
    return rng.rng_for(seed, "fewshot", iteration, pair.id).sample(pool, n)


def _example_dialogue(conv: Conversation, max_turns: int | None) -> str:
    # A multi-session example shows its first session: examples sit under a first-meeting prompt.
    turns = conv.sessions[0].turns if conv.sessions else conv.turns
    turns = turns if max_turns is None else turns[:max_turns]
    # Pool text is already parsed, but a turn holding a newline would forge an extra prompt line.
    return render_dialogue([Turn(speaker=t.speaker, text=normalise(t.text)) for t in turns])


# Few-shot examples come from one pool (seeds + recent winners) and each is shown to many pairs: their
# rendered messages are kept per example object (identity: the pool's records are never mutated), so a
# run renders each example once, not once per pair. Bounded: cleared when it outgrows any pool.
_EXAMPLE_MEMO_MAX = 8192
_example_memo: dict[tuple[int, int | None, object], tuple[Conversation, str, str]] = {}


def _example_messages(ex: Conversation, max_turns: int | None) -> tuple[str, str]:
    """(pair message, dialogue) of a few-shot example, as build_messages shows it (with its scenario, if it had
    one: the Generator sees how a scenario becomes a conversation)."""
    key = (id(ex), max_turns, prompts.in_effect())  # another run in this process may replace the templates
    hit = _example_memo.get(key)
    if hit is not None and hit[0] is ex:
        return hit[1], hit[2]
    if len(_example_memo) >= _EXAMPLE_MEMO_MAX:
        _example_memo.clear()
    pair_message = _pair_message(ex.user1_persona, ex.user2_persona, (ex.user1_traits, ex.user2_traits),
                                 scenario=Scenario(id="", text=ex.scenario) if ex.scenario else None)
    dialogue = _example_dialogue(ex, max_turns)
    _example_memo[key] = (ex, pair_message, dialogue)
    return pair_message, dialogue


def _pair_message(
    user1: list[str],
    user2: list[str],
    traits: tuple[Any, Any],
    language: str | None = None,
    session: SessionContext | None = None,
    scenario: Scenario | None = None,
) -> str:
    return render(
        "generator_pair.j2",
        user1=user1,
        user2=user2,
        style1=levels(traits[0]),
        style2=levels(traits[1]),
        language=language,
        session=None if session is None else {"index": session.index, "gap": session.gap, "memory": session.memory},
        **_scenario_variables(scenario),
    )


def _scenario_variables(scenario: Scenario | None) -> dict[str, Any]:
    return {"scenario": scenario.text if scenario else None, "scenario_fields": (scenario.fields or {}) if scenario
            else {}}


def build_messages(
    pair: Pair,
    shots: list[Conversation],
    cfg: GenerateConfig,
    language: str | None = None,
    session: SessionContext | None = None,
) -> list[Message]:
    """language: BCP-47 code (None: English); session: for a later session of a multi-session run."""
    lang = prompt_language(language)
    if cfg.fewshot_style == "inline" and not (lang or session or pair.user1_traits or pair.user2_traits):
        examples = [
            {
                "user1": ex.user1_persona,
                "user2": ex.user2_persona,
                "dialogue": _example_dialogue(ex, cfg.example_max_turns),
            }
            for ex in shots
        ]
        content = render(
            "generator_inline.j2",
            min_utterances=cfg.min_utterances,
            max_utterances=cfg.max_utterances,
            instructions=cfg.instructions,
            language=None,
            met_before=False,
            examples=examples,
            user1=pair.user1_persona,
            user2=pair.user2_persona,
            **_scenario_variables(pair.scenario),
        )
        return [Message(role="user", content=content)]
    # "turns" (also for the optional features, whose instructions live in the pair message): each
    # example is a finished exchange, so a small model imitates the answer's shape.
    system = render("generator.j2", min_utterances=cfg.min_utterances, max_utterances=cfg.max_utterances,
                    instructions=cfg.instructions, language=lang, met_before=session is not None)
    messages = [Message(role="system", content=system)]
    for ex in shots:
        content, dialogue = _example_messages(ex, cfg.example_max_turns)
        messages.append(Message(role="user", content=content))
        messages.append(Message(role="assistant", content=dialogue))
    target = _pair_message(
        pair.user1_persona, pair.user2_persona, (pair.user1_traits, pair.user2_traits), lang, session, pair.scenario
    )
    messages.append(Message(role="user", content=target))
    return messages


def build_requests(
    pair: Pair,
    examples: list[Conversation],
    cfg: GenerateConfig,
    sampling: Sampling,
    seed: int,
    iteration: int,
    language: str | None = None,
    session: SessionContext | None = None,
) -> list[ChatRequest]:
    """cfg.candidates requests for one pair; they share the prompt and differ in their seed."""
    shots = draw_examples(pair, examples, cfg.few_shot, seed, iteration)
    messages = build_messages(pair, shots, cfg, language, session)
    # "turns" style: system, then a (user, assistant) pair per example, then the target pair's message.
    span = (1, len(messages) - 2) if len(messages) > 2 and messages[0].role == "system" else None
    requests: list[ChatRequest] = []
    for i in range(cfg.candidates):
        params = sampling.params(
            cfg.max_tokens,
            rng.derive_seed(seed, STAGE, iteration, pair.id, i, *([session.tag] if session else [])),
            stop=list(cfg.stop),
        )
        requests.append(
            ChatRequest(
                messages=messages,
                params=params,
                metadata={"stage": STAGE, "id": candidate_id(pair, iteration, i, session)},
                few_shot=span,
            )
        )
    return requests


def _unwrap(text: str) -> str:
    """Drop quotes wrapping a whole utterance (`User 1: "Hi!"`), which small models like to add."""
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1]:
        return text[1:-1].strip()
    return text


def _cut_reason(turn: Turn, kept: list[Turn], seen: dict[str, int]) -> str | None:
    """Why the clean prefix must end before `turn` (None: it may continue)."""
    if not turn.text:
        return "empty_utterance"
    if kept and kept[-1].speaker == turn.speaker:
        return "same_speaker"
    if has_slot(turn.text):
        return "placeholders"
    key = " ".join(words(turn.text))
    if key and (seen.get(key, 0) >= 2 or (seen.get(key, 0) >= 1 and len(key.split()) > 3)):
        return "repetition"
    # A rephrased repeat ends the clean part too: from here on small models only loop.
    if is_near_duplicate(word_set(turn.text), [word_set(t.text) for t in kept], _TRIM_NEAR):
        return "repetition"
    return None


def _clean_prefix(items: list[Turn | str]) -> tuple[list[Turn], str | None]:
    """The utterances before the first defect (a str item is an unattributable line)."""
    kept: list[Turn] = []
    seen: dict[str, int] = {}
    for item in items:
        reason: str | None
        if isinstance(item, str):
            reason = "stage_directions" if is_stage_direction(item) else "unprefixed"
        else:
            reason = _cut_reason(item, kept, seen)
        if reason is not None:
            return kept, reason
        assert isinstance(item, Turn)
        kept.append(item)
        key = " ".join(words(item.text))
        seen[key] = seen.get(key, 0) + 1
    return kept, None


def parse_candidate(
    pair: Pair,
    text: str,
    iteration: int,
    index: int,
    *,
    truncated: bool = False,
    trim: bool = False,
    max_utterances: int | None = None,
    language: str | None = None,
    session: SessionContext | None = None,
) -> Conversation | Failure:
    """One generator reply -> Conversation (or Failure when there is no utterance at all).

    Blank lines are dropped and whitespace normalised; a preamble before the first utterance and a
    remark after the last are dropped; the pair's Big Five levels and the language are carried over;
    unprefixed lines in the middle, placeholders and same-speaker
    runs stay in `defects` for the format expert (plus "empty_utterance" for a bare "User 1:").
    With `truncated` (finish_reason "length") the last, probably cut-off utterance is dropped.
    With `trim`, the conversation ends before its first defect (same-speaker run, repeated
    utterance, placeholder, unattributable line): small models write a good opening and then loop
    until max_tokens. The cut is recorded in `trimmed`; the format expert still judges what
    is left (too short, loops inside an utterance, ...). With `trim`, a reply longer than `max_utterances`
    is also cut after that many utterances (a turn boundary; `trimmed.at` "too_long").
    """
    cid = candidate_id(pair, iteration, index, session)
    parsed = parse_dialogue(text)
    if not parsed.turns:
        return Failure(
            stage=STAGE, item_id=cid, reason="empty", detail=describe_non_dialogue(text), raw=text,
            iteration=iteration,
        )
    # Rebuild the line order: utterances and, between the first and last utterance, loose lines.
    loose = dict(parsed.unprefixed_lines)
    at_line = dict(zip(parsed.turn_lines, parsed.turns, strict=True))
    items: list[Turn | str] = []
    for n in range(parsed.turn_lines[0], parsed.turn_lines[-1] + 1):
        if n in loose:
            items.append(loose[n])
        elif n in at_line:
            items.append(Turn(speaker=at_line[n].speaker, text=_unwrap(at_line[n].text)))
    all_turns = [i for i in items if isinstance(i, Turn)]
    trimmed: Trim | None = None
    if trim:
        turns, cut = _clean_prefix(items)
        if cut is not None:
            trimmed = Trim(kept=len(turns), of=len(all_turns), at=cut)
        elif truncated and len(turns) > 1:
            turns = turns[:-1]
        if max_utterances is not None and len(turns) > max_utterances:
            turns = turns[:max_utterances]
            trimmed = Trim(kept=len(turns), of=len(all_turns), at="too_long")
        middle: list[str] = []
        empty_utterance = False
    else:
        middle = [i for i in items if isinstance(i, str)]
        empty_utterance = any(not t.text for t in all_turns)
        turns = [t for t in all_turns if t.text]
        if truncated and len(turns) > 1:
            turns = turns[:-1]
    defects = set(turn_defects(turns))
    if any(not is_stage_direction(t) for t in middle):
        defects.add("unprefixed")
    if any(is_stage_direction(t) for t in middle):
        defects.add("stage_directions")
    if any(has_slot(t) for t in middle):
        defects.add("placeholders")
    if parsed.label_forms:
        defects.add("nonstandard_labels")
    if empty_utterance:
        defects.add("empty_utterance")
    return Conversation(
        id=cid,
        user1_persona=list(pair.user1_persona),
        user2_persona=list(pair.user2_persona),
        turns=turns,
        iteration=iteration,
        source="personaloom",
        pair_id=pair.id,
        raw=render_dialogue(turns),
        defects=[k for k in (*DEFECT_KINDS, "empty_utterance") if k in defects],
        user1_traits=pair.user1_traits,
        user2_traits=pair.user2_traits,
        language=language,
        label_forms=parsed.label_forms or None,
        trimmed=trimmed,
        scenario=pair.scenario.text if pair.scenario else None,
    )
