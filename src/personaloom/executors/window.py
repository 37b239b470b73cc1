"""Requests fitted to a model's context window, so that none is sent that the server must refuse or cut.

In: a ChatRequest (the Generator's mark their few-shot examples with `ChatRequest.few_shot`) and its endpoint's
`Window` when known: `backend.context_window`, the embedded model's `n_ctx`, or learned from a server's
context-length refusal (`refusal`: vLLM/OpenAI/SGLang "maximum context length is N tokens", llama.cpp's "request
(P tokens) exceeds the available context size (N tokens)"). Out: `fit(request, window)` -> the request as it may
be sent (few-shot examples dropped from the end until the prompt plus max_tokens fits with a margin) and the
number dropped, or None when even the request without examples does not fit; `cut(result, ...)` -> the error of a
reply whose reported prompt tokens show that the server cut the prompt (a server that truncates silently).

Prompt tokens are estimated from characters, `Window.chars_per_token` (3.0 unless a refusal said how many tokens
a prompt of known length had): deterministic for a given window, so a resumed run fits every request as before
and the response cache answers it. The windows learned are kept in the run directory (context_windows.json).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from personaloom.chat import ChatRequest, ChatResult

# Characters per prompt token assumed when nothing was measured: below English BPE's ~4, so that the estimate
# errs on the long side (a request fitted on it is not refused).
CHARS_PER_TOKEN = 3.0
# Tokens kept free beyond prompt + max_tokens: chat-template tokens the character count cannot see.
MARGIN = 32
_PER_MESSAGE = 4  # role and separators of one chat message
_WINDOW = (
    re.compile(r"maximum context length is (\d+) tokens", re.IGNORECASE),  # vLLM, OpenAI, SGLang
    re.compile(r"available context size \((\d+) tokens\)", re.IGNORECASE),  # llama.cpp's server
    re.compile(r"context (?:length|window|size) (?:of|is) (\d+)", re.IGNORECASE),  # others, and `cut`'s own
)
_PROMPT = (
    re.compile(r"\((\d+) in the messages", re.IGNORECASE),  # vLLM before 0.8: "(2578 in the messages, 400 ..."
    re.compile(r"request has (\d+) input tokens", re.IGNORECASE),  # vLLM since
    re.compile(r"request \((\d+) tokens\) exceeds", re.IGNORECASE),  # llama.cpp
)


@dataclass
class Window:
    """An endpoint's context window in tokens, where it came from, and the characters per token to estimate with."""

    tokens: int
    source: str
    chars_per_token: float = CHARS_PER_TOKEN


def prompt_chars(request: ChatRequest) -> int:
    return sum(len(m.content) for m in request.messages)


def estimate(request: ChatRequest, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """Prompt tokens of `request`, estimated (see the module docstring)."""
    return math.ceil(prompt_chars(request) / chars_per_token) + _PER_MESSAGE * len(request.messages)


def needed(request: ChatRequest, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """Tokens `request` needs: its prompt (estimated), its completion budget and the margin."""
    return estimate(request, chars_per_token) + (request.params.max_tokens or 0) + MARGIN


def refusal(error: str, request: ChatRequest) -> Window | None:
    """The window a context-length refusal names (None: `error` is not one); with the prompt's token count,
    when the server gave it, the characters per token of this very prompt."""
    found = next((m for m in (p.search(error) for p in _WINDOW) if m), None)
    if found is None:
        return None
    tokens = int(found.group(1))
    said = next((m for m in (p.search(error) for p in _PROMPT) if m), None)
    ratio = CHARS_PER_TOKEN
    if said is not None and int(said.group(1)) > 0:
        # What this server's tokenizer made of this prompt, less a tenth so that the estimate stays on the long side.
        ratio = min(8.0, max(1.0, 0.9 * prompt_chars(request) / int(said.group(1))))
    if error.startswith("the server cut"):
        # Its prompt was longer than `used` tokens: fewer characters per token than this reading says.
        return Window(tokens, "a prompt the server cut", round(min(CHARS_PER_TOKEN, 0.7 * prompt_chars(request)
                                                                    / max(1, tokens)), 3))
    return Window(tokens, "learned from the server's refusal", round(ratio, 3))


def cut(result: ChatResult, request: ChatRequest, window: Window | None) -> str | None:
    """The error of a reply to a prompt the server cut (Ollama does, silently, at its num_ctx), or None. A fitted
    prompt leaves max_tokens and a margin free in the window, so a reported prompt at the window was truncated
    (the estimate was short: a script it counts badly, say). With the window unknown nothing can be told."""
    used = result.usage.prompt_tokens
    if window is None or not result.ok or not result.usage.reported or used < window.tokens - MARGIN:
        return None
    return (f"the server cut the prompt: it counted {used} prompt tokens, at its context window of {window.tokens} "
            f"tokens ({window.source}), so the reply followed a prompt without its start")


def fit(request: ChatRequest, window: Window) -> tuple[ChatRequest | None, int]:
    """(the request that fits `window`, few-shot examples dropped); (None, 0) when none does (see the module)."""
    if needed(request, window.chars_per_token) <= window.tokens:
        return request, 0
    if request.few_shot is None:
        return None, 0
    start, count = request.few_shot
    messages = list(request.messages)
    for kept in range(count - 2, -1, -2):  # whole (user, assistant) examples, the last ones first
        trial = request.model_copy(update={"messages": messages[: start + kept] + messages[start + count:],
                                           "few_shot": (start, kept) if kept else None})
        if needed(trial, window.chars_per_token) <= window.tokens:
            return trial, (count - kept) // 2
    return None, 0


def too_long(request: ChatRequest, window: Window, endpoint: str) -> str:
    """The error of a request that cannot fit even without its examples: the window, the need and the settings."""
    return (f"context window: this request needs about {needed(request, window.chars_per_token)} tokens (prompt "
            f"{estimate(request, window.chars_per_token)}, max_tokens {request.params.max_tokens}) but {endpoint} "
            f"has {window.tokens} ({window.source}); lower generate.few_shot, generate.example_max_turns or "
            "max_tokens, or use a model with a larger window (backend.context_window if the server's is larger)")


def load(path: Path) -> dict[str, Window]:
    """context_windows.json: endpoint name -> Window ({} when absent or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): Window(**v) for k, v in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save(path: Path, windows: dict[str, Window]) -> None:
    from personaloom.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps({k: asdict(v) for k, v in sorted(windows.items())}, indent=2) + "\n")


__all__ = ["CHARS_PER_TOKEN", "Window", "cut", "estimate", "fit", "load", "needed", "refusal", "save", "too_long"]
