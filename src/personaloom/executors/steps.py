"""Runs a stage's `Step` (personaloom.step) over its items: the only caller of an `LLMClient`.

In: a Step, its items, and the client(s): one `LLMClient`, or a `Router` (role -> client) when the step's
items go to different experts' backends. Out: a `StepRun` — per item its output or Failure, in order,
and every result (for token accounting).

The items' requests go out together, one `complete` per distinct client, gathered, so every endpoint is
kept busy; the clients own the cache, the concurrency bound of their endpoint, retries and the stats of
every call. A failed call becomes `Failure(reason="llm_error", detail=<the server's words>)` and never
reaches the step's `parse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

from personaloom.aio import gather_all
from personaloom.chat import ChatResult, LLMClient, Router
from personaloom.records import Failure
from personaloom.step import Step, StepRun

ItemT = TypeVar("ItemT")
OutT = TypeVar("OutT")


async def run_step(
    step: Step[ItemT, OutT], items: Sequence[ItemT], clients: LLMClient | Router
) -> StepRun[ItemT, OutT]:
    """Every item's request through its client; each result parsed by the step (see module docstring)."""
    items = list(items)
    if not items:
        return StepRun([], [], [])
    requests = [step.request(item) for item in items]
    route = _router(clients)
    groups: dict[int, tuple[LLMClient, list[int]]] = {}
    for i, item in enumerate(items):
        client = route(step.role_of(item))
        groups.setdefault(id(client), (client, []))[1].append(i)
    batches = list(groups.values())
    replies = await gather_all(client.complete([requests[i] for i in idx]) for client, idx in batches)
    results: list[ChatResult] = [ChatResult()] * len(items)
    for (_, idx), batch in zip(batches, replies, strict=True):
        for i, result in zip(idx, batch, strict=True):
            results[i] = result
    outputs: list[OutT | Failure] = []
    for item, result in zip(items, results, strict=True):
        if result.ok:
            outputs.append(step.parse(item, result))
        else:
            outputs.append(step.failure(item, result.error_reason or "llm_error", result.error or "no text"))
    return StepRun(items, outputs, results)


def _router(clients: LLMClient | Router) -> Router:
    if callable(getattr(clients, "complete", None)):
        client = cast(LLMClient, clients)
        return lambda _role: client
    return cast(Router, clients)
