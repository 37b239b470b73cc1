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

from personaloom import rng
from personaloom.backends.base import ChatRequest, ChatResult, LLMClient, Message
from personaloom.config import RunConfig
from personaloom.prompts import quoted, render
from personaloom.records import Failure, Pair
from personaloom.text import LANGUAGES, is_english, language_name, primary_subtag

STAGE = "localize"
MAX_TOKENS = 64
# A label before the sentence ("French: ...", "Translation: ..."); only these words, so that a colon
# inside the sentence itself ("Tengo dos perros: Max y Rex.") is kept.
_LABEL = re.compile(r"^\s*(?:translation|answer|sentence|in \w+|\w+ translation)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'«»“”„‚‘’「」『』"


def build_request(text: str, language: str, config: RunConfig) -> ChatRequest:
    params = config.sampling_for("expansion").params(MAX_TOKENS, rng.derive_seed(config.seed, STAGE, language, text))
    return ChatRequest(
        messages=[
            Message(role="system", content=render("localize.j2", language=language_name(language))),
            Message(role="user", content=quoted(text)),
        ],
        params=params,
        metadata={"stage": STAGE, "id": text[:40]},
    )


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
) -> tuple[Pair, list[Failure], list[ChatResult]]:
    """(the pair in config.language, failures, every result for token accounting)."""
    language = config.language
    if language is None or is_english(language):
        return pair, [], []
    texts = list(dict.fromkeys([*pair.user1_persona, *pair.user2_persona]))
    results = await llm.complete([build_request(t, language, config) for t in texts])
    rendered: dict[str, str] = {}
    failures: list[Failure] = []
    for text, result in zip(texts, results, strict=True):
        got = parse_reply(text, result, language)
        if got is None:
            failures.append(
                Failure(
                    stage=STAGE, item_id=pair.id, reason="llm_error" if result.error else "unparseable",
                    detail=f"attribute {text!r} kept as written", raw=result.text or None, iteration=iteration,
                )
            )
        rendered[text] = got or text
    return (
        pair.model_copy(
            update={
                "user1_persona": [rendered[t] for t in pair.user1_persona],
                "user2_persona": [rendered[t] for t in pair.user2_persona],
            }
        ),
        failures,
        results,
    )
