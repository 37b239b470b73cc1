"""A run directory as a Python object: what `personaloom.run` returns and `personaloom.load` opens.

In: a run directory (DESIGN.md §3). Out: `Run` — its folder, its typed `stats` (stats.json: this invocation's
LLM usage, the usage of every invocation in `total`, `per_kept`, `partial`, `stopped_by`), its resolved
`config`, streaming readers of its records (`conversations()`, `attributes()`, `profiles()`, `pairs()`), the
dataset as a Hugging Face `datasets.Dataset` (`to_hf()`) or a pandas DataFrame (`to_pandas()`), and the
report's path. Nothing is held in memory: every property reads the files when asked, so a `Run` of a run
directory that another call has since resumed shows the new state.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from personaloom.config import RunConfig, load_yaml
from personaloom.errors import InputError
from personaloom.records import Attribute, Conversation, Pair, Profile, Record

M = TypeVar("M", bound=BaseModel)


def _pick(model: type[M], data: Any) -> M:
    """`model` from the keys of `data` it knows (stats.json carries more, and grows between versions)."""
    known = {k: v for k, v in data.items() if k in model.model_fields} if isinstance(data, Mapping) else {}
    return model.model_validate(known)


class LLMUsage(Record):
    """One invocation's LLM usage (stats.json `llm`): paid calls, cache hits, tokens, transport retries, failed
    calls, and paid calls whose server reported no token counts (`usage_unknown`: their tokens are unknown)."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    errors: int = 0
    usage_unknown: int = 0


class TotalUsage(Record):
    """The usage of every invocation on the run directory (stats.json `total`): calls, tokens, wall time in
    seconds, invocations, and `cost` (currency units) when prices were given."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_unknown: int = 0
    errors: int = 0
    wall_s: float = 0.0
    invocations: int = 0
    cost: float | None = None


class PerKept(Record):
    """`total` divided by the kept conversations: paid calls, prompt and completion tokens (and cost)."""

    calls: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cost: float | None = None


class RunStats(Record):
    """stats.json, typed: `latest` is the last invocation's usage (a resumed run that found everything cached
    has `latest.calls == 0`), `total` every invocation's; `partial` is true when the last invocation was stopped
    (by the user: `stopped_by` says how) or failed; `raw` is the whole file."""

    latest: LLMUsage = Field(default_factory=LLMUsage)
    total: TotalUsage = Field(default_factory=TotalUsage)
    per_kept: PerKept | None = None
    conversations: int = 0
    partial: bool = False
    stopped_by: str | None = None
    failures: dict[str, int] = Field(default_factory=dict)
    wall_s: float = 0.0
    cost: float | None = None
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    raw: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStats:
        """From stats.json's content."""
        per_kept = data.get("per_kept")
        return cls(
            latest=_pick(LLMUsage, data.get("llm")), total=_pick(TotalUsage, data.get("total")),
            per_kept=_pick(PerKept, per_kept) if isinstance(per_kept, Mapping) else None,
            conversations=int(data.get("conversations") or 0), partial=bool(data.get("partial")),
            stopped_by=data.get("stopped_by"), failures=dict(data.get("failures") or {}),
            wall_s=float(data.get("wall_s") or 0.0), cost=data.get("cost"), stages=dict(data.get("stages") or {}),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Run:
    """A run directory (see the module docstring). `Run(out)` opens one without checking it; `load` checks."""

    out: Path

    @classmethod
    def load(cls, out: str | Path) -> Run:
        """The run directory `out`; InputError when it is missing or holds no run (no config.yaml)."""
        path = Path(out)
        if not path.is_dir():
            raise InputError("no such run directory", path=path)
        if not (path / "config.yaml").is_file():
            raise InputError("not a run directory (no config.yaml): run personaloom.run(out=...) first", path=path)
        return cls(path)

    @property
    def stats(self) -> RunStats:
        """stats.json, typed (an empty RunStats before the first invocation has written one)."""
        try:
            data = json.loads((self.out / "stats.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return RunStats()
        except (OSError, ValueError) as exc:
            raise InputError(f"unreadable stats.json ({exc})", path=self.out / "stats.json") from None
        return RunStats.from_dict(data if isinstance(data, dict) else {})

    @property
    def config(self) -> RunConfig:
        """The resolved configuration the last invocation ran with (config.yaml)."""
        return RunConfig.model_validate(load_yaml(self.out / "config.yaml"))

    @property
    def report_path(self) -> Path:
        """report.html (metrics and plots; written by `run` and `personaloom report`)."""
        return self.out / "report.html"

    @property
    def dataset_path(self) -> Path:
        """conversations.jsonl, the dataset."""
        return self.out / "conversations.jsonl"

    def _records(self, name: str, model: type[M]) -> Iterator[M]:
        from personaloom.io.jsonl import iter_jsonl

        path = self.out / name
        if not path.is_file():
            raise InputError(f"no {name} in this run directory: run the stage that writes it first", path=path)
        return iter_jsonl(path, model)

    def conversations(self) -> Iterator[Conversation]:
        """The dataset's conversations, one at a time (conversations.jsonl; InputError when there is none)."""
        return self._records("conversations.jsonl", Conversation)

    def attributes(self) -> Iterator[Attribute]:
        """The persona attributes after expansion (attributes.jsonl)."""
        return self._records("attributes.jsonl", Attribute)

    def profiles(self) -> Iterator[Profile]:
        """The user profiles (profiles.jsonl)."""
        return self._records("profiles.jsonl", Profile)

    def pairs(self) -> Iterator[Pair]:
        """The user pairs (pairs.jsonl)."""
        return self._records("pairs.jsonl", Pair)

    def to_hf(self) -> Any:
        """The dataset as a Hugging Face `datasets.Dataset` (a `DatasetDict` if dataset/ holds splits), memory-
        mapped from dataset/; InputError when the run has written none yet."""
        from datasets import load_from_disk

        path = self.out / "dataset"
        if not path.is_dir():
            raise InputError("no dataset/ in this run directory: the run has not written its dataset yet", path=path)
        return load_from_disk(str(path))

    def to_pandas(self) -> Any:
        """The dataset as a pandas DataFrame (one row per conversation; columns as `to_hf`)."""
        return self.to_hf().to_pandas()

    def __repr__(self) -> str:
        stats = self.stats
        state = ", partial" if stats.partial else ""
        return f"Run({str(self.out)!r}: {stats.conversations} conversations, {stats.total.calls} LLM calls{state})"

    def _repr_html_(self) -> str:
        stats = self.stats
        rows = [("run directory", str(self.out)), ("conversations", str(stats.conversations)),
                ("LLM calls (this time / in all)", f"{stats.latest.calls} / {stats.total.calls}"),
                ("cache hits (this time)", str(stats.latest.cache_hits)),
                ("tokens in all (prompt + completion)",
                 f"{stats.total.prompt_tokens:,} + {stats.total.completion_tokens:,}"),
                ("partial", f"yes ({stats.stopped_by})" if stats.partial else "no")]
        if stats.per_kept is not None:
            rows.append(("calls per kept conversation", f"{stats.per_kept.calls:g}"))
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in rows)
        return f"<table>{body}</table>"


__all__ = ["LLMUsage", "PerKept", "Run", "RunStats", "TotalUsage"]
