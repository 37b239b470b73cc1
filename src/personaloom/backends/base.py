"""The backend protocol: requests in, results out, batch-first.

A `ChatRequest` carries chat messages, sampling parameters, an optional JSON schema for structured
output and metadata (stage, record id). A `ChatResult` carries the text(s), token usage, finish
reason, latency and an error, if any. Backends only move text: no caching, no retries across
requests' semantics, no parsing of what the text means (that is the stages' job).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol

from pydantic import Field

from personaloom.records import Record


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(Record):
    """The paper samples every call with top-k 40, temperature 0.7. A field set to None is not sent
    (the server's own default applies): `top_k: null` for an endpoint that rejects it."""

    temperature: float | None = 0.7
    top_k: int | None = 40
    top_p: float | None = 1.0
    max_tokens: int = 256
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class ChatRequest(Record):
    messages: list[Message]
    params: SamplingParams = Field(default_factory=SamplingParams)
    json_schema: dict[str, Any] | None = None
    # stage, record id, ...: for accounting and progress only; not part of the cache key.
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def stage(self) -> str:
        return self.metadata.get("stage", "llm")

    def cache_key(self, backend_kind: str, model_id: str) -> str:
        """Hash of everything that determines the reply (backend kind, model, messages, params, schema)."""
        payload = {
            "backend": backend_kind,
            "model": model_id,
            "messages": [m.model_dump() for m in self.messages],
            "params": self.params.model_dump(),
            "schema": self.json_schema,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Usage(Record):
    """Token counts of one call. `reported` is False when the server sent no usage block: the counts
    are then unknown (0 here, and counted apart in stats), never a measured zero."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = True


class ChatResult(Record):
    texts: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    latency_s: float = 0.0
    # Set when this request failed after the backend's own retries; texts is then empty.
    error: str | None = None
    cached: bool = False
    retries: int = 0
    # What the server sent as reasoning (message.reasoning_content / message.reasoning), one per text;
    # read by replies.normalize, which drops it: it is never an answer and never cached.
    reasoning: list[str] | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.texts)


class Backend(abc.ABC):
    """A source of chat completions.

    Subclasses implement `agenerate`. `max_concurrency` tells the executor how many requests it may
    hand over at once (1 for the in-process embedded model, N for servers).
    """

    kind: ClassVar[str]
    max_concurrency: int = 1

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


class LLMClient(Protocol):
    """What stages talk to: the executor's client (cache + concurrency + accounting + progress) in
    front of a backend. Stages never hold a Backend directly."""

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order; failures are results with `error` set."""
        ...
