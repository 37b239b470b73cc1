"""One pair, one iteration, with the optional features: the conversation the pipeline keeps.

In: a Pair (with Big Five levels when --big-five is on), the example pool, `llm_for(role)`, the
RunConfig and the iteration. Out: a `PairOutcome` over everything done for the pair.
  --language: the pair's attributes are first rendered in the language (stages/localize.py).
  --sessions S: session 1 is generated and critiqued as usual; before each later session each
      speaker's memory of the earlier sessions is written by the model (one short summary per
      speaker, updated after every session), and the next session's candidates are generated `gap`
      later, conditioned on those memories, and critiqued with the cross-session expert too. The kept
      conversation holds every session in `sessions`, and the last one in `turns`/`raw`/`defects` (its
      id stays session 1's winner's). A later session none of whose candidates survives is generated
      again with new seeds (`sessions.retries` times); if it still fails, the sessions kept so far are
      the conversation and a Failure records the missing ones.
"""

from __future__ import annotations

import re

from personaloom import rng
from personaloom.backends.base import ChatRequest, ChatResult, Message
from personaloom.config import RunConfig
from personaloom.fingerprint import StageInputs
from personaloom.prompts import render
from personaloom.records import Conversation, Failure, Pair, Session, Turn
from personaloom.stages.critic.pair_round import LLMFor, PairOutcome, account, generate_and_critique
from personaloom.stages.generator import SessionContext
from personaloom.stages.localize import localize_pair
from personaloom.stats import merge_tokens
from personaloom.text import prompt_language

MEMORY_STAGE = "sessions.memory"
# The resume fingerprint's inputs of one Generator-Critic round (personaloom.fingerprint); the round's
# pairs and its few-shot pool are the data inputs. Every prompt a round can render is part of it.
INPUTS = StageInputs("generate", ("seed", "generate", "critic", "sampling", "language", "big_five", "sessions"),
                     ("generator*.j2", "critic_*.j2", "big_five.j2", "session_memory*.j2", "localize.j2",
                      "backend_json*.j2"), llm="critic")
MEMORY_MAX_CHARS = 600
MEMORY_SENTENCES = 4
# A sentence: up to and including its end mark (any script's), or the unfinished rest of the text.
_SENTENCE = re.compile(r"[^.!?。！？]+[.!?。！？]+[\"'”」]?|[^.!?。！？]+$")


def session_gap(config: RunConfig, pair_id: str, index: int) -> str:
    return rng.rng_for(config.seed, "session-gap", pair_id, index).choice(config.sessions.gaps)


def build_memory_request(
    pair_id: str, speaker: int, memory: str, turns: list[Turn], index: int, config: RunConfig
) -> ChatRequest:
    seed = rng.derive_seed(config.seed, MEMORY_STAGE, pair_id, index, speaker)
    params = config.sampling_for("expansion").params(config.sessions.memory_max_tokens, seed)
    system = render("session_memory.j2", speaker=speaker, language=prompt_language(config.language))
    return ChatRequest(
        messages=[
            Message(role="system", content=system),
            Message(role="user", content=render("session_memory_user.j2", memory=memory, turns=turns)),
        ],
        params=params,
        metadata={"stage": MEMORY_STAGE, "id": f"{pair_id}-s{index}-u{speaker}"},
    )


def parse_memory(result: ChatResult) -> str | None:
    """The new memory as one line (None: unusable reply; the caller keeps the one before).

    Small models loop ("I'll take you to the mountains. I'll take you to the mountains. ..."): repeated
    sentences are dropped and at most MEMORY_SENTENCES kept, so a loop does not become the memory."""
    text = " ".join(result.text.split()).strip('"') if result.ok else ""
    kept: list[str] = []
    for sentence in _SENTENCE.findall(text):
        sentence = sentence.strip()
        if sentence and sentence.casefold() not in {k.casefold() for k in kept}:
            kept.append(sentence)
    return " ".join(kept[:MEMORY_SENTENCES])[:MEMORY_MAX_CHARS] or None


def _merge(total: PairOutcome, part: PairOutcome) -> None:
    total.candidates.extend(part.candidates)
    total.verdicts.extend(part.verdicts)
    total.failures.extend(part.failures)
    merge_tokens(total.tokens, part.tokens)


async def converse(
    pair: Pair, examples: list[Conversation], llm_for: LLMFor, config: RunConfig, iteration: int
) -> PairOutcome:
    total = PairOutcome(pair_id=pair.id, iteration=iteration)
    pair, failures, results = await localize_pair(pair, llm_for("generator"), config, iteration)
    total.failures.extend(failures)
    if results:
        account(total.tokens, "localize", results)
    first = await generate_and_critique(pair, examples, llm_for, config, iteration)
    _merge(total, first)
    total.summary = {**first.summary, "tokens": total.tokens}
    if first.selected is None or config.sessions.count == 1:
        if first.selected is not None:
            # The winner's own summary (with its traits reading, any trim), costed with localization too.
            critic = {**(first.selected.critic or first.summary), "tokens": total.tokens}
            total.selected = first.selected.model_copy(update={"critic": critic})
        return total

    kept = first.selected
    sessions = [Session(index=1, turns=kept.turns)]
    # Each session's vote summary as its winner carries it (with the traits reading and any trim).
    summaries = [kept.critic or first.summary]
    memory = {"user1": "", "user2": ""}
    last = kept
    for index in range(2, config.sessions.count + 1):
        memory = await _remember(pair.id, memory, last.turns, index, llm_for, config, total)
        gap = session_gap(config, pair.id, index)
        for attempt in range(config.sessions.retries + 1):
            ctx = SessionContext(index=index, gap=gap, memory=dict(memory), previous=list(sessions), attempt=attempt)
            part = await generate_and_critique(pair, examples, llm_for, config, iteration, ctx)
            _merge(total, part)
            if part.selected is not None:
                break
        if part.selected is None:
            total.failures.append(
                Failure(
                    stage="sessions", item_id=pair.id, reason="session_not_kept",
                    detail=f"no candidate of session {index} survived the critic in {attempt + 1} tries; "
                    f"kept {len(sessions)} sessions",
                    iteration=iteration,
                )
            )
            break
        last = part.selected
        sessions.append(Session(index=index, gap=gap, memory=dict(memory), turns=last.turns))
        summaries.append(last.critic or part.summary)
    total.summary = {**summaries[-1], "sessions": summaries, "tokens": total.tokens}
    # The id stays session 1's winner's; turns, raw and defects are the last session's.
    total.selected = kept.model_copy(
        update={"turns": last.turns, "raw": last.raw, "defects": last.defects, "sessions": sessions,
                "critic": total.summary}
    )
    return total


async def _remember(
    pair_id: str, memory: dict[str, str], turns: list[Turn], index: int, llm_for: LLMFor, config: RunConfig,
    total: PairOutcome,
) -> dict[str, str]:
    """Both speakers' memories updated with the session before `index`."""
    requests = [build_memory_request(pair_id, n, memory[f"user{n}"], turns, index, config) for n in (1, 2)]
    results = await llm_for("generator").complete(requests)
    account(total.tokens, "memory", results)
    updated = dict(memory)
    for n, result in zip((1, 2), results, strict=True):
        got = parse_memory(result)
        if got is None:
            total.failures.append(
                Failure(
                    stage=MEMORY_STAGE, item_id=f"{pair_id}-s{index}-u{n}",
                    reason="llm_error" if result.error else "empty", detail="memory kept as before",
                    iteration=total.iteration,
                )
            )
        else:
            updated[f"user{n}"] = got
    return updated
