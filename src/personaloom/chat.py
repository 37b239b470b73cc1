"""Chat requests and results: the types every layer shares (config, backends, executors, stages).

A `ChatRequest` carries chat messages, sampling parameters, an optional JSON schema for structured
output and metadata (stage, record id). A `ChatResult` carries the text(s), token usage, finish
reason, latency and an error, if any. `Sampling` holds the paper's defaults (top-k 40, temperature
0.7) once; `SamplingParams` adds one request's token cap, stop strings and seed. `LLMClient` is what an
executor offers (cache, concurrency, accounting in front of a backend); only the executor's `run_step`
calls it (personaloom.executors.steps).

This module imports nothing of personaloom but the record base class, so that config, backends and
stages can all depend on it without cycles.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from pydantic import Field

from personaloom.records import Record

# Cache keys hash this canonical JSON; keys must stay byte-identical across versions (a changed key is a
# cache miss: a resumed run would pay again). One encoder, built once.
_KEY_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def _message_json(role: str, content: str) -> str:
    return _KEY_JSON.encode({"role": role, "content": content})


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(Record):
    """Sampling settings; the defaults are the paper's (top-k 40, temperature 0.7). A field set to None is
    not sent: the server's own default applies (`top_k: null` for an endpoint that rejects it)."""

    temperature: float | None = 0.7
    top_k: int | None = 40
    top_p: float | None = 1.0

    def params(self, max_tokens: int, seed: int, **override: Any) -> SamplingParams:
        """One request's sampling parameters: these settings, its token cap and its derived seed
        (`override`: e.g. the generator's stop strings)."""
        values: dict[str, Any] = {
            "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "max_tokens": max_tokens,
            "seed": seed,
        }
        return SamplingParams(**{**values, **override})


# Judges (the evaluation's Turing, faithfulness, toxicity and feature tests) decode greedily: a test, not
# a sample.
GREEDY = Sampling(temperature=0.0, top_k=1, top_p=1.0)


class SamplingParams(Sampling):
    """One request's sampling: the settings plus its token cap, stop strings and seed."""

    max_tokens: int = 256
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


# Tokens of one chat message beyond its text (role and separators of the chat template): what a token count
# of the text alone leaves out (executors/window.py, the backends' count_tokens).
PER_MESSAGE_TOKENS = 4


class ChatRequest(Record):
    messages: list[Message]
    params: SamplingParams = Field(default_factory=SamplingParams)
    json_schema: dict[str, Any] | None = None
    # stage, record id, ...: for accounting and progress only; not part of the cache key.
    metadata: dict[str, str] = Field(default_factory=dict)
    # (first index, count): messages[first:first + count] are few-shot examples, (user, assistant) pairs, that may
    # be dropped from the end to fit a context window (executors/window.py). Not part of the cache key: the
    # messages are.
    few_shot: tuple[int, int] | None = None

    @property
    def stage(self) -> str:
        return self.metadata.get("stage", "llm")

    def cache_key(self, backend_kind: str, model_id: str) -> str:
        """Hash of everything that determines the reply (backend kind, model, messages, params, schema)."""
        # The JSON of {"backend", "messages", "model", "params", "schema"} with sorted keys, built from parts so
        # that a message shared by many requests (a system prompt, the few-shot turns of a pair's candidates)
        # is encoded once.
        encode = _KEY_JSON.encode
        messages = ",".join(_message_json(m.role, m.content) for m in self.messages)
        blob = (
            f'{{"backend":{encode(backend_kind)},"messages":[{messages}],"model":{encode(model_id)},'
            f'"params":{encode(self.params.model_dump())},"schema":{encode(self.json_schema)}}}'
        )
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
    # The failure's reason when the executor knows it ("context_window": never sent, it cannot fit); None:
    # "llm_error", the server's or the transport's words in `error`.
    error_reason: str | None = None
    cached: bool = False
    # Transport retries (429, 5xx, timeouts...): 0 means the server took the request at the first try.
    retries: int = 0
    # Extra calls asking again for a reply that was not valid JSON of the request's schema.
    reasks: int = 0
    # What the server sent as reasoning (message.reasoning_content / message.reasoning), one per text;
    # read by replies.normalize, which drops it: it is never an answer and never cached.
    reasoning: list[str] | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.texts)


class LLMClient(Protocol):
    """An executor's client (cache + concurrency + accounting + progress) in front of a backend. Stages
    never call it: they hand a `Step` to `personaloom.executors.steps.run_step`."""

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order; failures are results with `error` set."""
        ...

    async def aclose(self) -> None:
        """Release the backend's connections."""
        ...


# A role ("generator", "expansion" or an expert's name) -> the client that serves it (an expert may be
# judged by its own backend).
Router = Callable[[str], LLMClient]
