"""`personaloom convert`: read conversations in one format, write them in another.

In: a source file (format detected or given), a destination, and the target format (default from the
destination: .jsonl -> jsonl, .csv -> spc-csv, .txt -> parlai, a directory or no extension -> hf).
Out: the written file/directory and a one-line summary, e.g.
"wrote 1000 conversations (jsonl) to x.jsonl; 367 have format defects".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from personaloom.errors import ConfigError, InputError
from personaloom.io.card import dataset_card
from personaloom.io.hf_dataset import write_hf_dataset
from personaloom.io.jsonl import write_jsonl
from personaloom.io.parlai import write_parlai
from personaloom.io.readers import read_conversations
from personaloom.io.spc_csv import write_spc_csv
from personaloom.records import Conversation

TARGETS = ("jsonl", "spc-csv", "parlai", "hf")
_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "spc-csv", ".txt": "parlai", "": "hf"}


def target_format(dst: str | Path, to: str | None) -> str:
    if to is not None:
        name = to.strip().lower()
        if name not in TARGETS:
            raise ConfigError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
        return name
    p = Path(dst)
    if p.is_dir():
        return "hf"
    found = _BY_SUFFIX.get(p.suffix.lower())
    if found is None:
        raise InputError(f"cannot tell the output format from the extension; pass --to ({', '.join(TARGETS)})", p)
    return found


def write_conversations(
    conversations: Sequence[Conversation], dst: str | Path, *, to: str | None = None, candidates: int = 19,
    seed: int = 0, title: str | None = None, sources: Sequence[str] = (),
) -> int:
    """Write `conversations` to `dst` in format `to` (default: from dst's extension, see the module docstring);
    the number written (ParlAI text skips conversations with no turns or no persona). ConfigError for an
    unknown format, InputError when dst's extension says none, OutputError when dst cannot be written."""
    if candidates < 0:
        raise ConfigError(f"--candidates {candidates}: must be 0 or more")
    target = target_format(dst, to)
    written = len(conversations)
    if target == "jsonl":
        write_jsonl(dst, conversations)
    elif target == "spc-csv":
        write_spc_csv(dst, conversations, scenario=any(c.scenario for c in conversations))
    elif target == "parlai":
        written = write_parlai(dst, conversations, candidates=candidates, seed=seed)
    else:
        card = dataset_card(conversations, title=title or f"{Path(dst).name}", sources=list(sources), data_dir=".")
        write_hf_dataset(dst, conversations, readme=card)
    return written


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    to: str | None = None,
    fmt: str | None = None,
    candidates: int = 19,
    seed: int = 0,
) -> str:
    """Read `src` (format `fmt`, default detected), write it to `dst`; the one-line summary."""
    if candidates < 0:
        raise ConfigError(f"--candidates {candidates}: must be 0 or more")
    target = target_format(dst, to)
    convs = read_conversations(src, fmt)
    written = write_conversations(convs, dst, to=target, candidates=candidates, seed=seed,
                                  title=f"{Path(src).stem} (converted)", sources=[str(src)])
    defective = sum(1 for c in convs if c.defects)
    summary = f"wrote {written} conversations ({target}) to {dst}; {defective} have format defects"
    if written < len(convs):
        summary += f"; {len(convs) - written} skipped (no turns or no persona, which ParlAI text cannot hold)"
    return summary
