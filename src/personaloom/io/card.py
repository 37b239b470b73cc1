"""A dataset card (README.md in the Hugging Face format) for a set of conversations.

In: conversations, a title, the sources, and optionally the resolved run config and stats.json.
Out: markdown with YAML front matter (licence, size category), counts (conversations, turns, unique
personas and attributes, mean utterances, defects), sources, config, licence and how to load it.
The text lives in prompts/dataset_card.j2.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from personaloom.dialogue import DEFECT_KINDS
from personaloom.fsutil import atomic_write_text
from personaloom.prompts import render
from personaloom.records import Conversation
from personaloom.text import primary_subtag

DEFAULT_LICENCE = "cc-by-4.0"


def card_counts(conversations: Iterable[Conversation]) -> dict[str, Any]:
    """The card's counts, in one pass (a run's kept conversations are streamed from disk); "languages"
    are the ISO 639 codes used (English unless --language said otherwise); "scenarios": conversations per
    scenario, commonest first (empty without generate.scenarios)."""
    personas: set[tuple[str, ...]] = set()
    attributes: set[str] = set()
    languages: set[str] = set()
    defects: Counter[str] = Counter()
    scenarios: Counter[str] = Counter()
    n = turns = with_defects = 0
    for c in conversations:
        n += 1
        turns += len(c.turns)
        for persona in (c.user1_persona, c.user2_persona):
            if persona:
                personas.add(tuple(persona))
            attributes.update(persona)
        languages.add(primary_subtag(c.language) if c.language else "en")
        defects.update(set(c.defects))
        with_defects += bool(c.defects)
        if c.scenario:
            scenarios[c.scenario] += 1
    return {
        "conversations": n,
        "turns": turns,
        "mean_utterances": turns / n if n else 0.0,
        "unique_personas": len(personas),
        "unique_attributes": len(attributes),
        "with_defects": with_defects,
        "defects": {k: defects[k] for k in DEFECT_KINDS if defects[k]},
        "languages": sorted(languages) or ["en"],
        "scenarios": dict(scenarios.most_common()),
    }


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    return next((label for bound, label in bounds if n < bound), "1M<n<10M")


def dataset_card(
    conversations: Iterable[Conversation],
    *,
    title: str,
    sources: Sequence[str],
    config: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    licence: str = DEFAULT_LICENCE,
    data_dir: str = "dataset",
) -> str:
    counts = card_counts(conversations)
    text = render(
        "dataset_card.j2",
        title=" ".join(title.split()) or "personaloom dataset",
        licence=licence,
        size_category=_size_category(counts["conversations"]),
        languages=counts["languages"],
        counts=counts,
        sources=list(sources),
        config=config,
        config_yaml=yaml.safe_dump(config, sort_keys=False).strip() if config else "",
        stats=stats,
        stats_json=json.dumps(stats, indent=2, sort_keys=True, default=str) if stats else "",
        data_dir=data_dir,
    )
    return text + "\n"


def write_dataset_card(
    path: str | Path,
    conversations: Iterable[Conversation],
    *,
    title: str,
    sources: Sequence[str],
    config: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    licence: str = DEFAULT_LICENCE,
    data_dir: str = "dataset",
) -> str:
    """Write the card to `path` (atomically) and return its text."""
    text = dataset_card(
        conversations, title=title, sources=sources, config=config, stats=stats, licence=licence, data_dir=data_dir
    )
    atomic_write_text(path, text)
    return text
