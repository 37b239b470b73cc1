"""One pair, one iteration, with the optional features: the conversation the pipeline keeps.

In: a Pair (with Big Five levels when --big-five is on), the example pool, a `Router` (role -> client), the
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

from personaloom import rng, stagenames
from personaloom.chat import ChatRequest, ChatResult, Message, Router
from personaloom.config import RunConfig
from personaloom.executors.steps import run_step
from personaloom.fingerprint import StageInputs
from personaloom.prompts import render
from personaloom.records import Conversation, Failure, Pair, Session, SessionContext, Turn
from personaloom.stages.localize import localize_pair
from personaloom.stages.round import PairOutcome, generate_and_critique
from personaloom.step import Step
from personaloom.text import prompt_language

MEMORY_STAGE = stagenames.SESSIONS_MEMORY
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


class Remember(Step[int, str]):
    """Speaker n's memory (n = 1, 2) updated with the session before `index` (a Failure keeps the old one)."""

    stage = MEMORY_STAGE

    def __init__(self, pair_id: str, memory: dict[str, str], turns: list[Turn], index: int, config: RunConfig,
                 iteration: int) -> None:
        self.pair_id, self.memory, self.turns, self.index, self.config = pair_id, memory, turns, index, config
        self.iteration = iteration

    def item_id(self, item: int) -> str:
        return f"{self.pair_id}-s{self.index}-u{item}"

    def request(self, item: int) -> ChatRequest:
        config = self.config
        seed = rng.derive_seed(config.seed, MEMORY_STAGE, self.pair_id, self.index, item)
        system = render("session_memory.j2", speaker=item, language=prompt_language(config.language))
        user = render("session_memory_user.j2", memory=self.memory[f"user{item}"], turns=self.turns)
        return ChatRequest(
            messages=[Message(role="system", content=system), Message(role="user", content=user)],
            params=config.sampling_for("expansion").params(config.sessions.memory_max_tokens, seed),
            metadata={"stage": MEMORY_STAGE, "id": self.item_id(item)},
        )

    def parse(self, item: int, result: ChatResult) -> str | Failure:
        got = parse_memory(result)
        return got if got is not None else self.failure(item, "empty", "memory kept as before", raw=result.text)


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


async def converse(
    pair: Pair, examples: list[Conversation], route: Router, config: RunConfig, iteration: int
) -> PairOutcome:
    total = PairOutcome(pair_id=pair.id, iteration=iteration)
    pair, localized = await localize_pair(pair, route("generator"), config, iteration)
    total.add("localize", localized)
    first = await generate_and_critique(pair, examples, route, config, iteration)
    total.merge(first)
    total.summary = first.summary
    if first.selected is None or config.sessions.count == 1:
        if first.selected is not None and first.selected.critic is not None:
            # The winner's own summary (with its traits reading, any trim), costed with localization too.
            critic = first.selected.critic.model_copy(update={"tokens": total.tokens})
            total.selected = first.selected.model_copy(update={"critic": critic})
        total.summary = total.summary.model_copy(update={"tokens": total.tokens})
        return total

    kept = first.selected
    sessions = [Session(index=1, turns=kept.turns)]
    # Each session's vote summary as its winner carries it (with the traits reading and any trim).
    summaries = [kept.critic or first.summary]
    memory = {"user1": "", "user2": ""}
    last = kept
    for index in range(2, config.sessions.count + 1):
        remembered = await run_step(Remember(pair.id, memory, last.turns, index, config, iteration), (1, 2), route)
        total.add("memory", remembered)
        memory = {**memory, **{f"user{n}": got for n, got in remembered.kept()}}
        gap = session_gap(config, pair.id, index)
        for attempt in range(config.sessions.retries + 1):
            ctx = SessionContext(index=index, gap=gap, memory=dict(memory), previous=list(sessions), attempt=attempt)
            part = await generate_and_critique(pair, examples, route, config, iteration, ctx)
            total.merge(part)
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
    total.summary = summaries[-1].model_copy(update={"sessions": summaries, "tokens": total.tokens})
    # The id stays session 1's winner's; turns, raw and defects are the last session's.
    total.selected = kept.model_copy(
        update={"turns": last.turns, "raw": last.raw, "defects": last.defects, "sessions": sessions,
                "critic": total.summary}
    )
    return total
