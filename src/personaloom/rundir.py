"""The run directory (DESIGN.md §3): its resume state, leftovers of killed runs, and the files a run writes
at its end.

In: a run directory and what a run produced (conversations, Stats, the RunConfig). Out: state.json (the
fingerprint each finished stage was computed with), conversations.jsonl, spc.csv, dataset/, README.md
(the dataset card), stats.json and failures.jsonl (every failed LLM call of the invocation, with the
server's words).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from rich.table import Table

from personaloom.config import PricesConfig, RunConfig
from personaloom.console import console
from personaloom.errors import BackendError, InputError, OutputError
from personaloom.fsutil import atomic_write_text
from personaloom.io import read_jsonl, write_dataset_card, write_hf_dataset, write_jsonl, write_spc_csv
from personaloom.records import Conversation, Failure
from personaloom.redact import redact, redact_data
from personaloom.stats import Stats, first_line

M = TypeVar("M", bound=BaseModel)


@dataclass
class RunState:
    """state.json: the fingerprint each finished stage was computed with."""

    path: Path
    done: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RunState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, {str(k): str(v) for k, v in data.get("done", {}).items()})
        except (FileNotFoundError, ValueError, AttributeError):
            return cls(path)

    def is_done(self, stage: str, fingerprint: str, *files: Path) -> bool:
        return self.done.get(stage) == fingerprint and all(f.exists() for f in files)

    def mark(self, stage: str, fingerprint: str) -> None:
        self.done[stage] = fingerprint
        atomic_write_text(self.path, json.dumps({"done": self.done}, indent=2, sort_keys=True) + "\n")


class Attempt:
    """One attempt at a checkpointed stage: the LLM calls it makes from its start, per stage-name prefix.

    `check_alive(label)` raises BackendError (with the server's first words) when every call of a prefix
    failed: the output would be empty and the next stage would fail naming no cause. `mark(key, fp)`
    checkpoints the stage in `state`, unless some calls failed: then the next run redoes it (its successful
    calls come from the cache) instead of trusting a result made without them."""

    def __init__(self, stats: Stats, state: RunState, *prefixes: str) -> None:
        self.stats, self.state = stats, state
        self.errors = stats.llm["errors"]
        self.before = {p: stats.stage_errors(p)[:2] for p in prefixes}

    def check_alive(self, label: str) -> None:
        for prefix, (calls_before, failed_before) in self.before.items():
            calls, failed, first = self.stats.stage_errors(prefix)
            calls, failed = calls - calls_before, failed - failed_before
            if calls and failed == calls:
                raise BackendError(f"{label}: all {calls} LLM calls failed; the server said: {first}")

    def mark(self, key: str, fingerprint: str) -> None:
        failed = self.stats.llm["errors"] - self.errors
        if failed:
            console.print(
                f"[yellow]{key}: {failed} LLM calls failed after retries; its output is kept but the stage "
                f"will be redone on the next run (successful calls are cached)[/yellow]"
            )
            return
        self.state.mark(key, fingerprint)


def remove_stale_temp(out: Path) -> None:
    """Temp files/folders of atomic writes that a killed run left behind (".<name>.<random>.tmp")."""
    for path in [*out.glob(".*.tmp"), *out.glob("iterations/*/.*.tmp")]:
        with contextlib.suppress(OSError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def files_fingerprint(*paths: Path) -> str:
    """Content hash of a stage's input files (a hand-edited profiles.jsonl changes what follows)."""
    digest = hashlib.sha256()
    for path in paths:
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file ({} when missing or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_dataset(out: Path, conversations: Iterable[Conversation], config: RunConfig, stats: Stats,
                  seed_name: str) -> None:
    """conversations.jsonl, spc.csv, dataset/ and the dataset card README.md, without the duplicates and
    contaminated conversations (personaloom.release: duplicates.jsonl, contaminated.jsonl, stats.json's "dedup"
    and "decontamination"). `conversations` is read once per file (a run's are streamed from its rounds'
    selected.jsonl: see KeptConversations)."""
    from personaloom.release import screen

    found = screen(conversations, config.dedup, config.decontaminate)
    found.write(out)
    stats.extra.update(found.summary)
    if found.duplicates or found.contaminated:
        console.print(f"{found.describe()}: listed in {found.listed_in()}")
    conversations = found.kept
    stats.conversations = write_jsonl(out / "conversations.jsonl", conversations)
    write_spc_csv(out / "spc.csv", conversations, scenario=config.generate.scenarios is not None)
    write_hf_dataset(out / "dataset", conversations)
    write_dataset_card(
        out / "README.md", conversations, title=f"personaloom dataset ({out.name})",
        sources=[f"seed data: {seed_name}", f"backend: {config.backend.kind}"],
        config=redact_data(config.model_dump(mode="json")), stats=redact_data(stats.to_dict()),
    )


USAGE_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "usage_unknown", "errors")


def read_stage_output(out: Path, name: str, model: type[M]) -> list[M]:
    """The records of `out`/`name` (a stage's JSONL output) as `model`s. Raises InputError when the file is missing
    (the previous stage has not run) or unreadable."""
    path = out / name
    if not path.exists():
        raise InputError(f"{name} not found in {out}: run the previous stage first (or `personaloom run`)", path=path)
    return read_jsonl(path, model)


def earlier_usage(out: Path) -> dict[str, Any]:
    """The usage of every earlier invocation on this run directory: the last stats.json's `total` (or, from
    a stats.json without one, its own figures); {} for a new run directory."""
    data = read_json(out / "stats.json")
    total = data.get("total")
    if isinstance(total, dict):
        return total
    llm = data.get("llm")
    if not isinstance(llm, dict):
        return {}
    return {**{k: llm.get(k, 0) for k in USAGE_KEYS}, "wall_s": data.get("wall_s", 0.0), "invocations": 1}


def usage_total(earlier: dict[str, Any], stats: Stats, wall_s: float, prices: PricesConfig) -> dict[str, Any]:
    """Usage over every invocation of the run directory, this one included (calls, tokens, wall time, cost)."""
    total: dict[str, Any] = {k: int(earlier.get(k, 0) or 0) + int(stats.llm[k]) for k in USAGE_KEYS}
    total["wall_s"] = round(float(earlier.get("wall_s", 0.0) or 0.0) + wall_s, 3)
    total["invocations"] = int(earlier.get("invocations", 0) or 0) + 1
    cost = prices.cost(total["prompt_tokens"], total["completion_tokens"])
    if cost is not None:
        total["cost"] = cost
    return total


def per_kept(total: dict[str, Any], kept: int) -> dict[str, float]:
    """What one kept conversation cost over the whole run directory: paid calls, prompt and completion
    tokens (and cost, when priced) of `total` divided by the `kept` conversations of the dataset."""
    keys = ("calls", "prompt_tokens", "completion_tokens", "cost")
    return {k: round(float(total[k]) / kept, 4 if k == "cost" else 2) for k in keys if k in total}


def write_stats(out: Path, stats: Stats, wall_s: float, earlier: dict[str, Any] | None = None,
                prices: PricesConfig | None = None) -> None:
    """stats.json — this invocation's figures, its `cost` at `prices`, and in `total` the usage of every
    invocation on this run directory (`earlier`: read with `earlier_usage` before this one wrote) —, and
    failures.jsonl: every LLM call of this invocation that failed, with the server's words."""
    prices = prices or PricesConfig()
    data = stats.to_dict()
    data["wall_s"] = round(wall_s, 3)
    cost = prices.cost(stats.llm["prompt_tokens"], stats.llm["completion_tokens"])
    if cost is not None:
        data["cost"] = cost
    data["total"] = usage_total(earlier or {}, stats, wall_s, prices)
    if stats.conversations:
        data["per_kept"] = per_kept(data["total"], stats.conversations)
    atomic_write_text(out / "stats.json", json.dumps(redact_data(data), indent=2, sort_keys=True) + "\n")
    failed = [Failure(stage=stage, item_id=item or stage, reason="llm_error", detail=redact(message))
              for stage, item, message in stats.failed_calls]
    write_jsonl(out / "failures.jsonl", failed)


def write_stopped_stats(out: Path, stats: Stats, exc: BaseException, wall_s: float, earlier: dict[str, Any],
                        prices: PricesConfig) -> None:
    """stats.json of an invocation that `exc` stopped: `partial`, and `stopped_by` naming what stopped it (the
    dataset files, if any, are then those of the last invocation that finished). This invocation's counters
    are worth keeping, but failing to write them (disk full) must not hide the error that stopped the run."""
    stats.extra["partial"] = True
    stats.extra["stopped_by"] = first_line(str(exc)) or type(exc).__name__
    with contextlib.suppress(OutputError):
        write_stats(out, stats, wall_s, earlier, prices)


def print_table1(table: dict[str, Any]) -> None:
    """The expansion's Table 1 (attributes, clusters, mean inter-cluster distance per set) on stderr."""
    t = Table(title="Expansion statistics (paper's Table 1)")
    for name, justify in (("set", "left"), ("attributes", "right"), ("clusters", "right"),
                          ("mean inter-cluster distance", "right")):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name, row in table.items():
        if isinstance(row, dict):
            dist = row.get("mean_inter_cluster_distance")
            t.add_row(name, str(row.get("attributes")), str(row.get("clusters")),
                      f"{dist:.3f}" if isinstance(dist, float) else str(dist))
    console.print(t)


def print_totals(stats: Stats, wall_s: float) -> None:
    """One line: LLM calls, cache hits, tokens (and how many calls reported no usage), wall time."""
    llm = stats.llm
    unknown = llm["usage_unknown"]
    unknown_note = f" (unknown for {unknown} calls: the server reported no usage)" if unknown else ""
    console.print(
        f"LLM calls {llm['calls']} (cache hits {llm['cache_hits']}), tokens {llm['prompt_tokens']} prompt + "
        f"{llm['completion_tokens']} completion{unknown_note}, {wall_s:.1f} s"
    )
