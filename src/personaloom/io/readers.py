"""Read conversations from any supported format.

In: a path and an optional format name (None = detect it). Out: list[Conversation]. Every problem
with the file is an InputError naming it (and the line/row where there is one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from personaloom.io.detect import check_format, detect_format
from personaloom.io.hf_dataset import read_hf_dataset
from personaloom.io.hf_json import read_hf_json
from personaloom.io.jsonl import read_conversations_jsonl
from personaloom.io.parlai import read_parlai
from personaloom.io.spc_csv import read_spc_csv
from personaloom.records import Conversation

READERS: dict[str, Callable[[Path], list[Conversation]]] = {
    "parlai": read_parlai,
    "hf-json": read_hf_json,
    "spc-csv": read_spc_csv,
    "jsonl": read_conversations_jsonl,
    "hf": read_hf_dataset,
}


def read_conversations(path: str | Path, fmt: str | None = None) -> list[Conversation]:
    p = Path(path)
    name = check_format(fmt, p) if fmt is not None else detect_format(p)
    return READERS[name](p)
