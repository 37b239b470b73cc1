"""Conversations <-> a Hugging Face `datasets` directory (save_to_disk) plus `data.parquet` in it.

Writer: conversations and a directory in; the directory out, loadable with `datasets.load_from_disk(dir)` or
`datasets.load_dataset("parquet", data_files=f"{dir}/data.parquet")`. Columns follow the
conversation record of DESIGN.md §3; `critic` (the CriticSummary) and the Big Five levels (`user1_traits`,
`user2_traits`: levels or scores) are stored as JSON strings; `language`, `scenario` and `sessions` are null
for conversations that do not use those features. The directory is
built beside the target and renamed into place, so a crash never leaves a half-written dataset.

Reader (`read_hf_dataset`): such a directory (a Dataset or a DatasetDict: every split, in order) or a Parquet
file, with these columns or Synthetic-Persona-Chat's (`user 1 personas`, `user 2 personas`, `Best Generated
Conversation`, as the dataset's Parquet files on the Hub have them) -> Conversations.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from personaloom.errors import InputError, OutputError
from personaloom.fsutil import ensure_dir
from personaloom.io.spc_csv import COLUMNS as SPC_COLUMNS
from personaloom.io.spc_csv import spc_conversation
from personaloom.records import Conversation

PARQUET = "data.parquet"


def _features() -> Any:
    from datasets import Features, Value

    turns = [{"speaker": Value("int8"), "text": Value("string")}]
    return Features(
        {
            "id": Value("string"),
            "user1_persona": [Value("string")],
            "user2_persona": [Value("string")],
            "turns": turns,
            "iteration": Value("int32"),
            "source": Value("string"),
            "critic": Value("string"),
            "pair_id": Value("string"),
            "raw": Value("string"),
            "defects": [Value("string")],
            "user1_traits": Value("string"),
            "user2_traits": Value("string"),
            "language": Value("string"),
            "scenario": Value("string"),
            "sessions": [
                {
                    "index": Value("int32"),
                    "gap": Value("string"),
                    "memory": {"user1": Value("string"), "user2": Value("string")},
                    "turns": turns,
                }
            ],
        }
    )


def _row(conv: Conversation, columns: Iterable[str]) -> dict[str, Any]:
    """The conversation's values of `columns` (fields outside the schema, such as `trimmed`, are left out;
    a field the record omits is null)."""
    row = conv.model_dump(mode="json")
    for key in ("critic", "user1_traits", "user2_traits"):
        value = row.get(key)
        row[key] = None if value is None else json.dumps(value, ensure_ascii=False)
    return {k: row.get(k) for k in columns}


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move tmp to target; an existing target is moved aside first and removed after."""
    old: Path | None = None
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"{target}: exists and is not a directory")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_hf_dataset(directory: str | Path, conversations: Iterable[Conversation], *, readme: str | None = None) -> int:
    """Write the dataset (and README.md = `readme` when given); returns the number of conversations.

    The rows stream through datasets' ArrowWriter into a scratch Arrow file (memory holds one batch),
    which is memory-mapped to save the dataset and its Parquet copy."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    target = Path(directory)
    ensure_dir(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror})") from None
    scratch = tmp / "scratch"
    # A one-line CLI summary is the output; datasets' progress bars would clutter stderr.
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        scratch.mkdir()
        features = _features()
        with ArrowWriter(features=features, path=str(scratch / "rows.arrow"), writer_batch_size=1000) as writer:
            for conv in conversations:
                writer.write(_row(conv, features))
            n, _ = writer.finalize()
        ds = datasets.Dataset.from_file(str(scratch / "rows.arrow"))
        built = tmp / "dataset"
        # One shard when empty: zero shards would not load back (datasets 5.x).
        ds.save_to_disk(str(built), num_shards=1 if not n else None)
        ds.to_parquet(str(built / PARQUET))
        del ds  # the memory map of the scratch file
        if readme is not None:
            (built / "README.md").write_text(readme, encoding="utf-8")
        _replace_dir(built, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write dataset ({exc.strerror or exc})") from None
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
        shutil.rmtree(tmp, ignore_errors=True)
    return int(n)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a save_to_disk directory (all splits) or of a Parquet file."""
    try:
        if path.is_dir():
            import datasets

            loaded = datasets.load_from_disk(str(path))
            parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
            return [row for part in parts for row in part.to_list()]
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    except FileNotFoundError as exc:
        raise InputError(f"not a Hugging Face dataset directory or Parquet file ({exc})", path) from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"cannot read as a Hugging Face dataset ({type(exc).__name__}: {exc})", path) from None


def read_hf_dataset(path: str | Path) -> list[Conversation]:
    """Conversations of a dataset directory or Parquet file (see the module docstring). InputError, naming
    the row, for a row that is not a conversation; for columns of neither known shape."""
    p = Path(path)
    rows = _rows(p)
    if not rows:
        raise InputError("no rows", p)
    columns = {name.strip().lower(): name for name in rows[0]}
    out: list[Conversation] = []
    for n, row in enumerate(rows, 1):
        try:
            if all(c.lower() in columns for c in SPC_COLUMNS):
                user1, user2, raw = (str(row[columns[c.lower()]] or "") for c in SPC_COLUMNS)
                out.append(spc_conversation(user1, user2, raw, len(out)))
            elif {"id", "user1_persona", "user2_persona", "turns"} <= set(row):
                values = {k: v for k, v in row.items() if v is not None}
                for key in ("critic", "user1_traits", "user2_traits"):
                    if isinstance(values.get(key), str):
                        values[key] = json.loads(values[key])
                out.append(Conversation.model_validate(values))
            else:
                found = ", ".join(repr(c) for c in list(rows[0])[:8])
                raise InputError(f"columns {found}: neither personaloom's (id, user1_persona, user2_persona, turns) "
                                 f"nor Synthetic-Persona-Chat's ({', '.join(repr(c) for c in SPC_COLUMNS)})", p)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"row {n} is not a conversation ({first})", p) from None
    return out
