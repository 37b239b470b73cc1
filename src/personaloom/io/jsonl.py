"""JSON Lines <-> pydantic records (any record type: Conversation, Attribute, Verdict, ...).

In: a file with one JSON object per line (blank lines are skipped). Out: validated records. A line
that is not JSON, or not a valid record, is an InputError naming file:line and the offending field.
Writing is atomic (temp file + rename), one `model_dump_json()` per line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from personaloom.errors import InputError
from personaloom.fsutil import atomic_open
from personaloom.io.textfile import BOM
from personaloom.records import Conversation

T = TypeVar("T", bound=BaseModel)


def _problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    if err["type"].startswith("json_"):
        return f"not valid JSON ({err['msg']})"
    loc = ".".join(str(x) for x in err["loc"])
    msg = " ".join(str(err["msg"]).split()).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def iter_jsonl(path: str | Path, model: type[T]) -> Iterator[T]:
    """The file's records one line at a time (memory holds one line, whatever the file's size).

    Raises InputError (file and line) for a missing or unreadable file, non-UTF-8 bytes or a bad record."""
    p = Path(path)
    if p.is_dir():
        raise InputError("is a directory, expected a file", p)
    try:
        fh = p.open("rb")
    except FileNotFoundError:
        raise InputError("file not found", p) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", p) from None
    with fh:
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
            except UnicodeDecodeError as exc:
                at = offset + exc.start
                raise InputError(f"not UTF-8 text (byte {at}: {raw[exc.start : exc.start + 1]!r})", p, lineno) from None
            offset += len(raw)
            if lineno == 1:
                line = line.removeprefix(BOM)
            if not line.strip():
                continue
            try:
                yield model.model_validate_json(line)
            except ValidationError as exc:
                raise InputError(f"bad {model.__name__} record: {_problem(exc)}", p, lineno) from None
            except (ValueError, RecursionError) as exc:
                # pydantic-core reports some limits (nesting depth, huge numbers) as plain errors
                raise InputError(f"bad {model.__name__} record ({type(exc).__name__})", p, lineno) from None


def read_jsonl(path: str | Path, model: type[T], *, allow_empty: bool = True) -> list[T]:
    """Every record in the file; an empty file gives [] unless allow_empty is False."""
    out = list(iter_jsonl(path, model))
    if not out and not allow_empty:
        raise InputError("empty file", path)
    return out


def read_conversations_jsonl(path: str | Path) -> list[Conversation]:
    return read_jsonl(path, Conversation, allow_empty=False)


def write_jsonl(path: str | Path, records: Iterable[BaseModel]) -> int:
    n = 0
    with atomic_open(path) as fh:
        for record in records:
            fh.write(record.model_dump_json())
            fh.write("\n")
            n += 1
    return n
