"""Reading model replies: the one place that turns a server's message into the text a stage reads.

In: a `ChatResult` as a backend produced it (texts from `message.content`, the server's reasoning fields,
finish reason) and its `ChatRequest`. Out (`normalize`): the same result holding only answers —
reasoning stripped (a leading `<think>` block and its variants, the answer after `</think>` when the
chat template opened the block, `message.reasoning_content` / `message.reasoning`), or, when no answer is
left, a failed result whose error names the cause and the fix. Failed results are never cached, and the
executor normalises cached results again on read, so an empty or reasoning-only reply stored by an older
version can never be served as an answer.

Also `json_object`: the first JSON object in a reply (bare, fenced, or with chatter around it). Every
parser of a structured answer (critic experts, profile consistency, evaluation judges) starts there.
"""

from __future__ import annotations

import json
import re
from typing import Any

from personaloom.chat import ChatRequest, ChatResult

_DECODER = json.JSONDecoder()

# (opening, closing) markers of a reasoning block as models write them: DeepSeek-R1 / Qwen3 / QwQ
# (<think>), Claude-style and others (<thinking>, <reasoning>, <thought>), Kimi (◁think▷), Magistral
# ([THINK]), OpenThoughts (<|begin_of_thought|>).
_BLOCKS = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<reasoning>", "</reasoning>"),
    ("<thought>", "</thought>"),
    ("◁think▷", "◁/think▷"),
    ("[THINK]", "[/THINK]"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
)
# gpt-oss (harmony format) served raw: the answer follows the final channel's marker.
_HARMONY_FINAL = re.compile(r"<\|channel\|>\s*final\s*<\|message\|>", re.IGNORECASE)
_HARMONY_END = re.compile(r"<\|(?:return|end)\|>\s*$")

THINKING_OFF = (
    "turn thinking off for this model (vLLM/SGLang: --set 'backend.extra_body={chat_template_kwargs: "
    "{enable_thinking: false}}'; Ollama: --set backend.extra_body.reasoning_effort=none) or raise max_tokens"
)


def _plain_answer(text: str) -> bool:
    """True when `text` is non-blank and holds none of the characters every reasoning marker above
    starts with: nothing to strip (three substring scans, no copy)."""
    return bool(text) and not text.isspace() and "<" not in text and "[" not in text and "◁" not in text


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of one reply's text. No reasoning markers: ("", text).

    An unclosed opening marker at the start means the reply was cut off while reasoning: ("...", "").
    A closing marker without an opening one (the chat template opened the block in the prompt, as
    DeepSeek-R1's does) ends the reasoning there.
    """
    final = list(_HARMONY_FINAL.finditer(text))
    if final:
        return text[: final[-1].start()], _HARMONY_END.sub("", text[final[-1].end() :]).strip()
    stripped = text.lstrip()
    lowered = stripped.lower()
    for opening, closing in _BLOCKS:
        end = lowered.rfind(closing.lower())
        starts = lowered.startswith(opening.lower())
        if end >= 0 and (starts or opening.lower() not in lowered[:end]):
            head = stripped[len(opening) : end] if starts else stripped[:end]
            return head.strip(), stripped[end + len(closing) :].strip()
        if starts:
            return stripped[len(opening) :].strip(), ""
    return "", text


def normalize(result: ChatResult, request: ChatRequest) -> ChatResult:
    """`result` with reasoning removed from every text; a failed result when an answer is missing.

    Errors name the cause: a reply that was all reasoning (with the field or marker it came in, and
    whether max_tokens cut it), or an empty reply. Results that already failed pass through unchanged.
    """
    if result.error is not None:
        return result
    if result.reasoning is None and result.texts and all(_plain_answer(t) for t in result.texts):
        return result  # the common case: nothing to strip, no copy
    answers: list[str] = []
    thought: list[str] = []
    fields = result.reasoning or []
    for i, text in enumerate(result.texts):
        reasoning, answer = split_reasoning(text)
        field = fields[i] if i < len(fields) else ""
        answers.append(answer)
        thought.append(reasoning or field or "")
    clean = result.model_copy(update={"texts": answers, "reasoning": None})
    if answers and all(a.strip() for a in answers):
        return clean
    where = f"stage {request.stage}, max_tokens {request.params.max_tokens}"
    cut = result.finish_reason == "length"
    if any(t.strip() for t in thought):
        source = "message.reasoning_content/reasoning" if any(fields) else "a <think> block"
        how = "it spent all max_tokens thinking" if cut else "its answer (message.content) was empty"
        error = f"the model replied with reasoning only ({source}) and no answer: {how} ({where}); {THINKING_OFF}"
    elif not answers:
        error = f"the server returned no choices ({where})"
    else:
        error = (
            f"empty reply (message.content empty, finish_reason {result.finish_reason or 'none'}; {where}): "
            "the server returned no text; check the model with `personaloom doctor`"
        )
    return clean.model_copy(update={"texts": [], "error": error})


def json_object(text: str) -> dict[str, Any] | None:
    """The first `{...}` in `text` that parses as a JSON object, or None."""
    for match in re.finditer(r"\{", text):
        try:
            value, _ = _DECODER.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
