"""Which conversation format a file is in, by its content first and its extension second.

In: a path. Out: one of FORMATS ("parlai", "hf-json", "spc-csv", "jsonl", "hf"). A directory saved by
Hugging Face `datasets` (save_to_disk) or a .parquet file is "hf". Otherwise looks at the first
non-blank line only: `<n> ...` or `text:...` is ParlAI; a header naming `user 1 personas` is SPC CSV; a one-line
JSON object is JSONL (unless it holds personachat keys); `[` or `{` otherwise is HF JSON. Files that
say nothing clear fall back to the extension (.txt, .csv, .json, .jsonl); else InputError.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from personaloom.errors import InputError
from personaloom.io.textfile import BOM, read_bytes

FORMATS = ("parlai", "hf-json", "spc-csv", "jsonl", "hf")
# What datasets' save_to_disk leaves in a directory (a Dataset: dataset_info.json; a DatasetDict: dataset_dict.json).
_HF_DIR_FILES = ("dataset_info.json", "dataset_dict.json")
BY_EXTENSION = {".txt": "parlai", ".csv": "spc-csv", ".json": "hf-json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_HF_KEYS = {"personality", "utterances", "train", "valid", "validation", "test"}
_NUMBERED = re.compile(r"\d{1,9}(?: |$)")


def check_format(fmt: str, path: str | Path | None = None) -> str:
    name = fmt.strip().lower()
    if name not in FORMATS:
        raise InputError(f"unknown input format {fmt!r}; valid formats: {', '.join(FORMATS)}", path)
    return name


def _first_line(data: bytes) -> str:
    # Sniffing only: undecodable bytes are the reader's to report, with their line.
    text = data[:65536].decode("utf-8", errors="replace").removeprefix(BOM)
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def _by_content(first: str, suffix: str) -> str | None:
    if _NUMBERED.match(first) or first.startswith("text:"):
        return "parlai"
    if "user 1 personas" in first.lower():
        return "spc-csv"
    if first.startswith("["):
        return "hf-json"
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):
            # A pretty-printed JSON document's first line is not a whole object.
            return "jsonl" if suffix in (".jsonl", ".ndjson") else "hf-json"
        if isinstance(obj, dict) and _HF_KEYS & set(obj) and suffix not in (".jsonl", ".ndjson"):
            return "hf-json"
        return "jsonl"
    return None


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        if any((p / name).is_file() for name in _HF_DIR_FILES):
            return "hf"
        hint = "; a run directory: give its conversations.jsonl or dataset/" if (p / "stats.json").is_file() else ""
        raise InputError(f"is a directory, expected a file or a Hugging Face dataset directory (save_to_disk){hint}", p)
    if p.suffix.lower() == ".parquet":
        return "hf"
    data = read_bytes(p)
    first = _first_line(data)
    if not first:
        raise InputError("empty file", p)
    suffix = p.suffix.lower()
    found = _by_content(first, suffix) or BY_EXTENSION.get(suffix)
    if found is None:
        raise InputError(f"cannot tell the format; pass --format (one of {', '.join(FORMATS)})", p)
    return found
