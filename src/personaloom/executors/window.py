"""Requests fitted to a model's context window, so that none is sent that the server must refuse or cut.

In: a ChatRequest (the Generator's mark their few-shot examples with `ChatRequest.few_shot`) and its endpoint's
`Window` when known (backend.context_window, the embedded n_ctx, what the server states: backends/serverinfo.py)
or learned from a server's context-length refusal (`refusal`: vLLM/OpenAI/SGLang "maximum context length is N
tokens", llama.cpp's "request (P tokens) exceeds the available context size (N tokens)"). Out: `fit(request,
window)` -> the request as it may be sent (few-shot examples dropped from the end down to one, then that one's
dialogue capped at CAPS turns, then none, until the prompt plus max_tokens fits with a margin), the examples
dropped and the cap, or None when nothing fits; `cut(result, ...)` -> the error of a reply whose reported prompt
tokens show that the server cut the prompt (Ollama truncates silently), with the window known or not;
`corrected` and `counted_ratio` -> the characters per token measured by a reply's usage or the server's tokenizer.

Prompt tokens are estimated from characters, `Window.chars_per_token` (3.0 unless a refusal or a long prompt's
reported usage measured this server's tokenizer, only ever lowered): deterministic for a given window and ratio,
so a resumed run fits every request as before and the response cache answers it (a ratio lowered mid-run fits
the later requests more tightly: those may be fitted anew). The windows learned are kept in the run directory
(context_windows.json).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from personaloom.chat import PER_MESSAGE_TOKENS as _PER_MESSAGE
from personaloom.chat import ChatRequest, ChatResult

# Characters per prompt token assumed when nothing was measured: below English BPE's ~4, so that the estimate
# errs on the long side (a request fitted on it is not refused).
CHARS_PER_TOKEN = 3.0
# Tokens kept free beyond prompt + max_tokens: chat-template tokens the character count cannot see.
MARGIN = 32
# Turns the one example left is capped to, in turn, when even it does not fit whole.
CAPS = (8, 4, 2)
# Below this many estimated prompt tokens a low reported count tells nothing about a cut (see `cut`).
CUT_AT = 1024
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


def cut(result: ChatResult, request: ChatRequest, window: Window | None, silent: str = "ollama") -> str | None:
    """The error of a reply to a prompt the server cut (Ollama does, silently, at its num_ctx), or None; it names
    the window ("context window is N tokens"), which `refusal` reads back.

    With the window known: a fitted prompt leaves max_tokens and a margin free in it, so a reported prompt at
    the window was truncated (the estimate was short: a script it counts badly, say). With the window unknown
    and `silent` (Backend.silent_cut) not "never": a prompt of at least CUT_AT estimated tokens reported at
    under half the estimate (Ollama drops whole messages until the prompt fits num_ctx, and the estimate errs
    long, never by half), or, from a server known to be Ollama (`silent` "ollama"), at exactly a power of two
    no larger than the estimate (its runner keeps num_ctx tokens: 2,048 or 4,096 unless set; from another
    server a prompt of exactly 2,048 tokens is no sign): the window is taken to be that power of two, or the
    one at or above the reported count."""
    used = result.usage.prompt_tokens
    if not result.ok or not result.usage.reported or used <= 0:
        return None
    if window is not None:
        if used < window.tokens - MARGIN:
            return None
        return (f"the server cut the prompt: it counted {used} prompt tokens, at its context window of "
                f"{window.tokens} tokens ({window.source}), so the reply followed a prompt without its start")
    guess = estimate(request)
    power = silent == "ollama" and not used & (used - 1)
    if silent == "never" or guess < CUT_AT or used > guess or (not power and 2 * used >= guess):
        return None
    size = 1 << (used - 1).bit_length()
    return (f"the server cut the prompt: it counted {used} prompt tokens of about {guess} sent, so its context "
            f"window is {size} tokens or less and the reply followed a prompt without its start (set "
            "backend.context_window to the server's window, Ollama's num_ctx, if you know it)")


def corrected(window: Window, request: ChatRequest, used: int) -> Window | None:
    """`window` with fewer characters per token when a reply's reported prompt tokens (`used`) show that the
    estimate was short (a script or text the tokenizer splits finely), else None. Only ever lowered: a fit
    decision changes only where the old estimate would have let a request through that the server refuses."""
    if used <= estimate(request, window.chars_per_token) or estimate(request) < CUT_AT:
        return None  # a short prompt's chat-template tokens would skew the ratio
    ratio = 0.9 * prompt_chars(request) / max(1, used - _PER_MESSAGE * len(request.messages))
    return Window(window.tokens, window.source, round(max(1.0, min(ratio, window.chars_per_token)), 3))


def counted_ratio(request: ChatRequest, tokens: int) -> float:
    """Characters per token of `request` as the server's tokenizer counted it (`tokens`), less a few percent
    (the examples dropped to fit may tokenize a little differently from the whole)."""
    return round(max(1.0, min(8.0, 0.97 * prompt_chars(request) / max(1, tokens - _PER_MESSAGE
                                                                        * len(request.messages)))), 3)


def _capped(text: str, turns: int) -> str:
    return "\n".join([line for line in text.splitlines() if line.strip()][:turns])


def fit(request: ChatRequest, window: Window, chars_per_token: float | None = None) -> tuple[
        ChatRequest | None, int, int]:
    """(the request that fits `window`, few-shot examples dropped, turns each kept example was capped to: 0 for
    none); (None, 0, 0) when none does. Whole examples go from the end down to one; then that one's dialogue
    is capped at CAPS turns; then it goes too. `chars_per_token`: the request's own ratio, when the server
    counted it (else the window's)."""
    ratio = chars_per_token or window.chars_per_token
    if needed(request, ratio) <= window.tokens:
        return request, 0, 0
    if request.few_shot is None:
        return None, 0, 0
    start, count = request.few_shot
    messages = list(request.messages)

    def keep(n: int, cap: int = 0) -> ChatRequest:
        shots = [m.model_copy(update={"content": _capped(m.content, cap)}) if cap and m.role == "assistant" else m
                 for m in messages[start: start + n]]
        return request.model_copy(update={"messages": messages[:start] + shots + messages[start + count:],
                                          "few_shot": (start, n) if n else None})

    trials = [(kept, 0) for kept in range(count - 2, 1, -2)]  # whole (user, assistant) examples, the last first
    if count >= 2:
        lines = len(_capped(messages[start + 1].content, 10**6).splitlines())
        trials += [(2, cap) for cap in CAPS if cap < lines]
    for kept, cap in [*trials, (0, 0)]:
        trial = keep(kept, cap)
        if needed(trial, ratio) <= window.tokens:
            return trial, (count - kept) // 2, cap
    return None, 0, 0


def too_long(request: ChatRequest, window: Window, endpoint: str) -> str:
    """The error of a request that cannot fit even without its examples: the window, the need and the settings."""
    lower = "generate.few_shot, generate.example_max_turns or generate.max_tokens" if request.few_shot is not None \
        else f"the max_tokens of {request.stage} (in the {request.stage.split('.')[0]} settings)"
    return (f"context window: this request needs about {needed(request, window.chars_per_token)} tokens (prompt "
            f"{estimate(request, window.chars_per_token)}, max_tokens {request.params.max_tokens}) but {endpoint} "
            f"has {window.tokens} ({window.source}); lower {lower}, or use a model with a larger window "
            "(backend.context_window if the server's is larger)")


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


__all__ = ["CHARS_PER_TOKEN", "Window", "corrected", "counted_ratio", "cut", "estimate", "fit", "load", "needed",
           "refusal", "save", "too_long"]
