"""The backend protocol: requests in, results out, batch-first (the types are in personaloom.chat).

Backends only move text: no caching, no retries across
requests' semantics, no parsing of what the text means (that is the stages' job).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence
from typing import ClassVar

from personaloom.chat import ChatRequest, ChatResult, LLMClient, Message, SamplingParams, Usage

# The longest Retry-After waited for, as the openai client does (its MAX_RETRY_AFTER_DELAY): a longer one is a
# quota or billing window, not a burst, and waiting it out silently would look like a hung run.
MAX_RETRY_AFTER_S = 120.0
# While waiting to retry, or for a Retry-After window to end, how often to look whether the user asked the
# run to stop (seconds).
STOP_POLL_S = 0.25

__all__ = [
    "MAX_RETRY_AFTER_S", "STOP_POLL_S", "Backend", "ChatRequest", "ChatResult", "LLMClient", "Message",
    "SamplingParams", "Usage",
]


class Backend(abc.ABC):
    """A source of chat completions.

    Subclasses implement `agenerate`. `max_concurrency` declares how many requests the executor may hand
    over at once (1 for the in-process embedded model, backend.concurrency for a server); the executor
    enforces it (one bound per endpoint), a backend holds no bound of its own.
    """

    kind: ClassVar[str]
    max_concurrency: int = 1
    # Whether the model behind it may cut an over-long prompt silently: "never", "maybe" (a server behind the
    # OpenAI API) or "ollama" (one that answered Ollama's API: it keeps num_ctx tokens). The executor reads a
    # reply's usage for a cut even before it knows the window (executors/window.py `cut`).
    silent_cut: str = "never"
    # Set by the executor: called with the server's Retry-After (or None) when a request meets a 429, a 503
    # or a timeout, so that the endpoint's bound comes down (see executors.local.Endpoint).
    on_overload: Callable[[float | None], None] | None = None
    # Set by the executor: true once the user asked the run to stop (personaloom.stop); a backend waiting to
    # retry a request gives up then, and the request fails (uncached: a re-run sends it again).
    stopping: Callable[[], bool] | None = None

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """Identity of the model for cache keys (file name + size for GGUF, model name for servers)."""

    @abc.abstractmethod
    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Return one result per request, in order. Per-request failures go in `ChatResult.error`;
        raise `BackendError` only when the backend cannot be used at all."""

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return asyncio.run(self.agenerate(requests))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections / model memory."""

    async def context_window(self) -> tuple[int, str] | None:
        """(the model's context window in tokens, where the server said it), when the server says it; None
        otherwise (the executor then learns it from a refusal, executors/window.py)."""
        return None

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """The prompt tokens of `request` as the model's own tokenizer counts them, where it can be asked
        cheaply; None otherwise (the executor then estimates from characters, executors/window.py)."""
        return None
