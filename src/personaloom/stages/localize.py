"""Persona attributes in the target language, for --language (native generation, no translation of
the conversations themselves).

In: a Pair whose attributes are in the seed data's language (English for the shipped seeds), the
language code, the generator's client. Out: the Pair with every attribute rendered in the target
language by the model (one request per distinct attribute, seeded by its text, so the response cache
pays each attribute once however many pairs share it), and a Failure for an attribute whose reply was
unusable (that attribute then stays as it was).
"""

from __future__ import annotations

import re

from personaloom import rng, stagenames
from personaloom.chat import ChatRequest, ChatResult, LLMClient, Message
from personaloom.config import RunConfig
from personaloom.executors.steps import run_step
from personaloom.prompts import quoted, render
from personaloom.records import Failure, Pair
from personaloom.step import Step, StepRun
from personaloom.text import LANGUAGES, is_english, language_name, primary_subtag

STAGE = stagenames.LOCALIZE
MAX_TOKENS = 64
# A label before the sentence ("French: ...", "Translation: ..."); only these words, so that a colon
# inside the sentence itself ("Tengo dos perros: Max y Rex.") is kept.
_LABEL = re.compile(r"^\s*(?:translation|answer|sentence|in \w+|\w+ translation)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'«»“”„‚‘’「」『』"


class Localize(Step[str, str]):
    """An attribute in the target language (the Failure keeps the attribute as written)."""

    stage = STAGE

    def __init__(self, language: str, config: RunConfig, iteration: int) -> None:
        self.language, self.config, self.iteration = language, config, iteration

    def request(self, item: str) -> ChatRequest:
        seed = rng.derive_seed(self.config.seed, STAGE, self.language, item)
        return ChatRequest(
            messages=[
                Message(role="system", content=render("localize.j2", language=language_name(self.language))),
                Message(role="user", content=quoted(item)),
            ],
            params=self.config.sampling_for("expansion").params(MAX_TOKENS, seed),
            metadata={"stage": STAGE, "id": self.item_id(item)},
        )

    def item_id(self, item: str) -> str:
        return item[:40]

    def parse(self, item: str, result: ChatResult) -> str | Failure:
        got = parse_reply(item, result, self.language)
        if got is None:
            return self.failure(item, "unparseable", f"attribute {item!r} kept as written", raw=result.text)
        return got


def parse_reply(original: str, result: ChatResult, language: str) -> str | None:
    """The rendered sentence, or None when the reply is empty, a refusal-length essay, or an error."""
    if not result.ok:
        return None
    # A lead-in line ("Here is the translation:") is skipped.
    lines = [ln for ln in result.text.splitlines() if ln.strip() and not ln.rstrip().endswith(":")]
    line = " ".join(lines[0].split()).strip(_QUOTES + " ") if lines else ""
    name = LANGUAGES.get(primary_subtag(language))
    labels = {n.casefold() for n in (name.name, name.native_name) if n} if name else set()
    head, sep, rest = line.partition(":")
    if sep and (head.strip().casefold() in labels or _LABEL.match(line)) and len(rest.strip()) > 3:
        line = rest.strip().strip(_QUOTES + " ")
    if not line or len(line) > 3 * len(original) + 60:
        return None
    return line


async def localize_pair(
    pair: Pair, llm: LLMClient, config: RunConfig, iteration: int
) -> tuple[Pair, StepRun[str, str]]:
    """(the pair in config.language, the step's run: its failures and results for token accounting)."""
    language = config.language
    texts = list(dict.fromkeys([*pair.user1_persona, *pair.user2_persona]))
    if language is None or is_english(language):
        return pair, StepRun([], [])
    run = await run_step(Localize(language, config, iteration), texts, llm)
    rendered = {text: out for text, out in run.kept()}
    update = {side: [rendered.get(t, t) for t in getattr(pair, side)] for side in ("user1_persona", "user2_persona")}
    return pair.model_copy(update=update), run
