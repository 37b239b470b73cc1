"""The stage contract (DESIGN.md §2): a `Step` turns plain items into requests and results into records.

In: items of any kind (an attribute, a pair, a candidate conversation, ...). Out, per item: the record(s)
its reply gives, or a `Failure` with the reason and the raw text. A Step never calls a backend or an
executor: `personaloom.executors.steps.run_step` runs it (fan-out over the items, one bound per endpoint,
cache, retries, failure and stats accounting) and returns a `StepRun`. A failed call never reaches
`parse`: the executor turns it into `Failure(reason="llm_error")` with the server's words.

Example (a stage that asks for one word per attribute)::

    class Rhyme(Step[Attribute, str]):
        stage = "expand.rhyme"
        role = "expansion"

        def request(self, item: Attribute) -> ChatRequest:
            return ChatRequest(messages=[Message(role="user", content=f"A rhyme for: {item.text}")],
                               metadata={"stage": self.stage, "id": item.id})

        def item_id(self, item: Attribute) -> str:
            return item.id

        def parse(self, item: Attribute, result: ChatResult) -> str | Failure:
            word = result.text.strip()
            return word or self.failure(item, "empty", raw=result.text)

    run = await run_step(Rhyme(), attributes, route)   # run.outputs: one str | Failure per attribute
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from personaloom.chat import ChatRequest, ChatResult
from personaloom.records import Failure, TokenCount

ItemT = TypeVar("ItemT")
OutT = TypeVar("OutT")


def count_tokens(results: Iterable[ChatResult]) -> TokenCount:
    """Calls and tokens of `results`."""
    rows = list(results)
    return TokenCount(calls=len(rows), prompt_tokens=sum(r.usage.prompt_tokens for r in rows),
                      completion_tokens=sum(r.usage.completion_tokens for r in rows))


def add_tokens(into: dict[str, TokenCount], rows: Mapping[str, TokenCount]) -> dict[str, TokenCount]:
    """Per-role token counts of `rows` added into `into` (returned)."""
    for role, count in rows.items():
        into[role] = into.get(role, TokenCount()) + count
    return into


class Step(abc.ABC, Generic[ItemT, OutT]):
    """One kind of LLM call: `request(item)` builds the request from plain data, `parse(item, result)` turns
    a successful result into the step's output or a `Failure`.

    `stage` names the step in stats, progress and failures ("profiles.nli"); `role` picks the client
    ("generator", "expansion", or an expert's name, which may have its own backend); `iteration` is
    stamped on the step's failures.
    """

    stage: ClassVar[str]
    role: ClassVar[str] = "generator"
    iteration: int | None = None

    def role_of(self, item: ItemT) -> str:
        """The role that serves `item` (one step may span several experts' clients)."""
        return self.role

    def stage_of(self, item: ItemT) -> str:
        """The stage name of `item`'s call (one step may span several experts)."""
        return self.stage

    def item_id(self, item: ItemT) -> str:
        """The id its Failure carries (the request's metadata id)."""
        return ""

    @abc.abstractmethod
    def request(self, item: ItemT) -> ChatRequest:
        """The request for one item (seeded by the item, so the response cache can answer it)."""

    @abc.abstractmethod
    def parse(self, item: ItemT, result: ChatResult) -> OutT | Failure:
        """The output of a successful result, or a Failure (e.g. reason "unparseable", raw text kept)."""

    def failure(self, item: ItemT, reason: str, detail: str = "", raw: str | None = None) -> Failure:
        """A Failure of this step for `item`."""
        return Failure(stage=self.stage_of(item), item_id=self.item_id(item), reason=reason, detail=detail, raw=raw,
                       iteration=self.iteration)


@dataclass
class StepRun(Generic[ItemT, OutT]):
    """What `run_step` returns: per item (in order) its output or Failure, and every result."""

    items: list[ItemT]
    outputs: list[OutT | Failure]
    results: list[ChatResult] = field(default_factory=list)

    @property
    def usage(self) -> TokenCount:
        return count_tokens(self.results)

    @property
    def failures(self) -> list[Failure]:
        return [o for o in self.outputs if isinstance(o, Failure)]

    def kept(self) -> list[tuple[ItemT, OutT]]:
        """(item, output) for every item that gave an output."""
        return [(i, o) for i, o in zip(self.items, self.outputs, strict=True) if not isinstance(o, Failure)]

    def get(self, index: int) -> OutT | None:
        out = self.outputs[index]
        return None if isinstance(out, Failure) else out
