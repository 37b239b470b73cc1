"""A scripted backend for unit tests of prompt building, parsing and control flow.

Replies come from a `responder(request) -> str` callable, or from a list consumed in order (cycling),
or default to echoing the last user message. Every request received is recorded in `requests`.
Never the only proof that a feature works: the same tests run against the real backends too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from personaloom.backends.base import Backend, ChatRequest, ChatResult, Usage

Responder = Callable[[ChatRequest], str]


class FakeBackend(Backend):
    kind = "fake"

    def __init__(
        self,
        replies: Sequence[str] | Responder | None = None,
        *,
        model: str = "fake-model",
        max_concurrency: int = 16,
        delay_s: float = 0.0,
    ) -> None:
        self._model = model
        self.max_concurrency = max_concurrency
        self.delay_s = delay_s
        self.requests: list[ChatRequest] = []
        self._replies = replies
        self._next = 0

    @property
    def model_id(self) -> str:
        return self._model

    def _reply(self, request: ChatRequest) -> str:
        if self._replies is None:
            users = [m.content for m in request.messages if m.role == "user"]
            return users[-1] if users else ""
        if callable(self._replies):
            return self._replies(request)
        if not self._replies:
            return ""
        text = self._replies[self._next % len(self._replies)]
        self._next += 1
        return text

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult] = []
        for request in requests:
            start = time.perf_counter()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.requests.append(request)
            texts = [self._reply(request) for _ in range(max(1, request.params.n))]
            prompt_tokens = sum(len(m.content.split()) for m in request.messages)
            results.append(
                ChatResult(
                    texts=texts,
                    usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=sum(len(t.split()) for t in texts)),
                    finish_reason="stop",
                    latency_s=time.perf_counter() - start,
                )
            )
        return results
