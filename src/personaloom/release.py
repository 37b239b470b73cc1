"""Release filters: a dataset less its contaminated conversations (personaloom.decontaminate) and its duplicates
(personaloom.dedup), as `personaloom run` writes it and `personaloom dedup` filters any file.

In: conversations (re-iterable: a run's are streamed from disk, one pass here), a DedupConfig and a
DecontaminateConfig. Out: `screen(...)` -> a `Screening`: the duplicates and contaminated conversations found (the
records duplicates.jsonl and contaminated.jsonl hold), the summary stats.json, the card and the report show, and
`kept`, the conversations without them (re-iterable, in order). Contaminated conversations are dropped first, so
that none is kept as a twin.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personaloom.config import DecontaminateConfig, DedupConfig
from personaloom.decontaminate import Contaminated, References
from personaloom.dedup import Deduplicator, Duplicate
from personaloom.io.jsonl import write_jsonl
from personaloom.records import Conversation

DUPLICATES = "duplicates.jsonl"
CONTAMINATED = "contaminated.jsonl"


@dataclass(frozen=True)
class Kept:
    """`conversations` without those at the positions in `removed` (0-based; ids need not be unique in a file):
    re-iterable, `count` long."""

    conversations: Iterable[Conversation]
    removed: frozenset[int]
    count: int

    def __iter__(self) -> Iterator[Conversation]:
        return (c for i, c in enumerate(self.conversations) if i not in self.removed)

    def __len__(self) -> int:
        return self.count


@dataclass
class Screening:
    """What `screen` found: `duplicates`, `contaminated`, `summary` ({"dedup": ..., "decontamination": ...},
    each present when that filter ran) and `kept`."""

    kept: Kept
    duplicates: list[Duplicate] = field(default_factory=list)
    contaminated: list[Contaminated] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: Path, prefix: str = "") -> None:
        """duplicates.jsonl and contaminated.jsonl (each name after `prefix`) in `folder`, for the filters that
        ran; a file an earlier invocation wrote for a filter now off is removed (it would describe other data)."""
        for name, key, records in ((DUPLICATES, "dedup", self.duplicates),
                                   (CONTAMINATED, "decontamination", self.contaminated)):
            if key in self.summary:
                write_jsonl(folder / f"{prefix}{name}", records)
            else:
                (folder / f"{prefix}{name}").unlink(missing_ok=True)

    def describe(self, removed: bool = True) -> str:
        """One line: what the filters found, `removed` or not ("" when none ran), and the files that list it."""
        parts = []
        if "decontamination" in self.summary:
            d = self.summary["decontamination"]
            parts.append(f"{'dropped' if removed else 'found'} {d['contaminated']} contaminated (a {d['ngram']}-word "
                         f"run of {', '.join(Path(s).name for s in d['sources'])})")
        if "dedup" in self.summary:
            d = self.summary["dedup"]
            parts.append(f"{'removed' if removed else 'found'} {d['exact']} exact and {d['near']} near duplicates "
                         f"(similarity >= {d['threshold']})")
        return "; ".join(parts)

    def listed_in(self, prefix: str = "") -> str:
        """The files `write` writes, by name."""
        return " and ".join(f"{prefix}{name}" for name, key in ((DUPLICATES, "dedup"),
                                                                (CONTAMINATED, "decontamination"))
                            if key in self.summary)


def screen(conversations: Iterable[Conversation], dedup: DedupConfig,
           decontaminate: DecontaminateConfig, drop: bool = True) -> Screening:
    """Find the contaminated conversations (when `decontaminate.paths` names files) and the duplicates (when
    `dedup.enabled`) in one pass over `conversations`; with `drop` False (personaloom evaluate) contaminated ones
    are only counted, and every conversation is kept. InputError: a reference file cannot be read."""
    references = References(decontaminate.paths, decontaminate.ngram) if decontaminate.paths else None
    finder = Deduplicator(dedup.threshold, dedup.shingle) if dedup.enabled else None
    duplicates: list[Duplicate] = []
    contaminated: list[Contaminated] = []
    removed: set[int] = set()
    overlap = with_overlap = sentences = total = 0
    for position, conversation in enumerate(conversations):
        total += 1
        if references is not None:
            shared = references.persona_overlap(conversation)
            overlap += shared
            with_overlap += shared > 0
            sentences += len(conversation.user1_persona) + len(conversation.user2_persona)
            found = references.match(conversation)
            if found is not None:
                contaminated.append(found)
                if drop:
                    removed.add(position)
                    continue
        twin = finder.check(conversation) if finder is not None else None
        if twin is not None:
            duplicates.append(twin)
            removed.add(position)
    summary: dict[str, Any] = {}
    if finder is not None:
        summary["dedup"] = {**finder.counts(), "removed": len(duplicates)}
    if references is not None:
        summary["decontamination"] = {
            "sources": references.sources, "ngram": references.ngram, "reference_utterances": references.utterances,
            "checked": total, "contaminated": len(contaminated), "dropped": len(contaminated) if drop else 0,
            "persona_overlap": {"sentences": overlap, "of": sentences, "share": round(overlap / sentences, 4)
                                if sentences else 0.0, "conversations": with_overlap},
        }
    return Screening(Kept(conversations, frozenset(removed), total - len(removed)), duplicates, contaminated, summary)


__all__ = ["CONTAMINATED", "DUPLICATES", "Kept", "Screening", "screen"]
