"""Scenarios: what each conversation is about (generate.scenarios), and which pair talks about which.

In: the run's GenerateConfig — `scenarios` as a list, a file (.txt: one per line; .jsonl or .csv: a `scenario`
field plus optional other fields) or "auto" with `topics` (a list or a .txt file) —, its LLM client (for "auto")
and embedder. Out: `build_scenarios` -> `Built` (the Scenario records, written to scenarios.jsonl, and their
counts for stats.json); `assign(pairs, scenarios, seed)` -> the pairs, each with its scenario.

"auto" follows DiaSynth (Suresh et al., 2024, "DiaSynth: Synthetic Dialogue Generation Framework"): each topic is
expanded by the LLM into `subtopics` subtopics (prompts/scenario_subtopics.j2), each subtopic into
`scenarios_per_subtopic` concrete scenarios (prompts/scenario_expand.j2); every call is cached and seeded, and a
scenario whose embedding cosine to an earlier one is >= `scenario_similarity` is dropped as a near-duplicate.
Assignment is seeded and balanced: the pairs take the scenarios in a shuffled order, reshuffled for each pass
over them, so that no scenario is used more than once more than any other.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from personaloom import rng, stagenames
from personaloom.chat import ChatRequest, ChatResult, LLMClient, Message, Router, Sampling
from personaloom.config import GenerateConfig
from personaloom.errors import InputError
from personaloom.executors.steps import run_step
from personaloom.fingerprint import StageInputs
from personaloom.prompts import render
from personaloom.records import Failure, Pair, Scenario
from personaloom.step import Step

STAGE = stagenames.SCENARIOS
INPUTS = StageInputs(STAGE, ("seed", "embed", "sampling"), ("scenario_*.j2",), llm="main")
SETTINGS = ("scenarios", "topics", "subtopics", "scenarios_per_subtopic", "scenario_similarity")
# A line longer than this is not a subtopic or a scenario but prose.
_MAX_WORDS = 60
_MAX_TOKENS = 256
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


@dataclass
class Built:
    scenarios: list[Scenario]
    counts: dict[str, Any] = field(default_factory=dict)


def sources(cfg: GenerateConfig) -> list[Path]:
    """The files the scenarios are read from (their contents belong in the stage's fingerprint)."""
    return [Path(v) for v in (cfg.scenarios, cfg.topics) if isinstance(v, str) and v != "auto"]


def read_lines(path: Path, what: str) -> list[str]:
    """A text file's non-empty lines (a `#` line is a comment). InputError names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the {what} ({exc})", path=path) from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"no {what} in the file (one per line)", path=path)
    return lines


def _record(text: str, index: int, fields: dict[str, Any] | None = None, path: Path | None = None,
            line: int | None = None) -> Scenario:
    if not text.strip():
        raise InputError("a scenario is empty", path=path, line=line)
    extra = {str(k): str(v) for k, v in (fields or {}).items() if v not in (None, "")}
    return Scenario(id=f"s{index:04d}", text=" ".join(text.split()), fields=extra or None)


def read_scenarios(path: Path) -> list[Scenario]:
    """Scenarios from a file: .jsonl or .csv with a `scenario` field (other fields kept as `fields`), else one
    per line. InputError names the file and line of a bad row."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        return [_record(text, i) for i, text in enumerate(read_lines(path, "scenarios"))]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the scenarios ({exc})", path=path) from None
    rows: list[tuple[int, dict[str, Any]]] = []
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"not JSON ({exc.msg})", path=path, line=n) from None
            if not isinstance(row, dict):
                raise InputError("expected a JSON object with a \"scenario\" field", path=path, line=n)
            rows.append((n, row))
    else:
        reader = csv.DictReader(text.splitlines())
        if "scenario" not in (reader.fieldnames or []):
            raise InputError(f"no \"scenario\" column (columns: {', '.join(reader.fieldnames or [])})", path=path,
                             line=1)
        rows = [(n, dict(row)) for n, row in enumerate(reader, start=2)]
    found: list[Scenario] = []
    for n, row in rows:
        value = row.pop("scenario", None)
        if not isinstance(value, str):
            raise InputError("no \"scenario\" text in this row", path=path, line=n)
        found.append(_record(value, len(found), row, path, n))
    if not found:
        raise InputError("no scenarios in the file", path=path)
    return found


def parse_lines(text: str, n: int) -> list[str]:
    """Up to `n` distinct items from a one-per-line reply (numbering, bullets and quotes removed)."""
    items: list[str] = []
    for line in text.splitlines():
        item = _BULLET.sub("", line).strip().strip('"').strip()
        if item and len(item.split()) <= _MAX_WORDS and item.lower() not in {i.lower() for i in items}:
            items.append(item)
    return items[:n]


class _Expand(Step[tuple[str, ...], list[str]]):
    """(topic,) -> subtopics (`Subtopics`), or (topic, subtopic) -> scenarios (`Scenes`): one cached, seeded call
    each, asking for `n` items one per line."""

    role = "expansion"
    template: ClassVar[str]

    def __init__(self, n: int, sampling: Sampling, seed: int) -> None:
        self.n, self.sampling, self.seed = n, sampling, seed

    def item_id(self, item: tuple[str, ...]) -> str:
        return " / ".join(item)

    def request(self, item: tuple[str, ...]) -> ChatRequest:
        names = ("topic", "subtopic")[: len(item)]
        prompt = render(self.template, n=self.n, **dict(zip(names, item, strict=True)))
        return ChatRequest(
            messages=[Message(role="user", content=prompt)],
            params=self.sampling.params(_MAX_TOKENS, rng.derive_seed(self.seed, self.stage, *item)),
            metadata={"stage": self.stage, "id": self.item_id(item)},
        )

    def parse(self, item: tuple[str, ...], result: ChatResult) -> list[str] | Failure:
        found = parse_lines(result.text, self.n)
        return found or self.failure(item, "empty", raw=result.text)


class Subtopics(_Expand):
    stage = stagenames.SCENARIOS_SUBTOPICS
    template = "scenario_subtopics.j2"


class Scenes(_Expand):
    stage = stagenames.SCENARIOS_EXPAND
    template = "scenario_expand.j2"


async def expand_topics(topics: list[str], cfg: GenerateConfig, llm: LLMClient | Router, embedder: Any,
                        sampling: Sampling, seed: int) -> Built:
    """generate.scenarios auto: topics -> subtopics -> scenarios, near-duplicates dropped (module docstring)."""
    from personaloom.embed import dedup_mask

    first = await run_step(Subtopics(cfg.subtopics, sampling, seed), [(t,) for t in topics], llm)
    pairs = [(t, s) for (t,), got in first.kept() for s in got]
    second = await run_step(Scenes(cfg.scenarios_per_subtopic, sampling, seed), pairs, llm)
    drafted = [(t, s, text) for (t, s), got in second.kept() for text in got]
    keep: list[bool] = []
    if drafted:
        keep = dedup_mask(embedder.encode([text for _, _, text in drafted]), cfg.scenario_similarity).tolist()
    kept = [d for d, k in zip(drafted, keep, strict=True) if k]
    scenarios = [Scenario(id=f"s{i:04d}", text=text, topic=topic, subtopic=sub)
                 for i, (topic, sub, text) in enumerate(kept)]
    counts = {"topics": len(topics), "subtopics": len(pairs), "drafted": len(drafted),
              "near_duplicates": len(drafted) - len(kept), "scenarios": len(scenarios),
              "failures": len(first.failures) + len(second.failures)}
    if not scenarios:
        raise InputError(f"generate.scenarios auto: the LLM gave no usable scenario for the {len(topics)} topics "
                         f"({counts['failures']} replies unusable); check the server, or give the scenarios")
    return Built(scenarios, counts)


async def build_scenarios(cfg: GenerateConfig, llm: LLMClient | Router, embedder: Any, sampling: Sampling,
                          seed: int) -> Built:
    """The run's scenarios from generate.scenarios (see the module docstring); InputError for a bad file."""
    source = cfg.scenarios
    if source == "auto":
        topics = cfg.topics if isinstance(cfg.topics, list) else read_lines(Path(str(cfg.topics)), "topics")
        return await expand_topics([" ".join(t.split()) for t in topics if t.strip()], cfg, llm, embedder,
                                   sampling, seed)
    if isinstance(source, str):
        found = read_scenarios(Path(source))
    else:
        found = [_record(text, i) for i, text in enumerate(source or [])]
    return Built(found, {"scenarios": len(found)})


def assign(pairs: list[Pair], scenarios: list[Scenario], seed: int) -> list[Pair]:
    """Each pair with a scenario: pass k over the pairs takes the scenarios in the order of a permutation seeded
    by (seed, k), so the counts differ by at most one and the same pairs get the same scenarios on a re-run."""
    if not scenarios:
        return pairs
    out, order = [], list(range(len(scenarios)))
    for i, p in enumerate(pairs):
        k, at = divmod(i, len(scenarios))
        if at == 0:
            order = rng.rng_for(seed, STAGE, k).sample(range(len(scenarios)), len(scenarios))
        out.append(p.model_copy(update={"scenario": scenarios[order[at]]}))
    return out


__all__ = ["INPUTS", "SETTINGS", "Built", "assign", "build_scenarios", "read_scenarios", "sources"]
