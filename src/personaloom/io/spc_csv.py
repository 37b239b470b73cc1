"""Synthetic-Persona-Chat CSV <-> Conversation.

In (reader): a CSV with the columns `user 1 personas`, `user 2 personas`, `Best Generated Conversation`
(matched case-insensitively; other columns, e.g. an index, are ignored). Personas are one attribute
per line. The conversation cell is parsed with dialogue.parse_dialogue (speaker prefixes parsed, never
cut by character count); a cell with no speaker label at all but paragraphs separated by blank lines is read as
alternating turns from User 1 (dialogue.alternating_paragraphs: defect "unprefixed", label form "inferred"). The
cell is kept as `raw` and its format defects as `defects`, so nothing is silently dropped. Out: Conversations
with ids `spc-00000`, ... in row order.

Out (writer): an SPC-compatible CSV with those three columns, and a fourth, `scenario`, when `scenario` is
set (conversations generated for scenarios: generate.scenarios); the reader reads that column back. The
conversation cell is `raw` when it is still consistent with the turns (so SPC CSV -> JSONL -> SPC CSV gives
identical cells), otherwise the turns rendered as `User n: text` lines.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from personaloom.dialogue import alternating_paragraphs, parse_dialogue, render_dialogue
from personaloom.errors import InputError
from personaloom.fsutil import atomic_open
from personaloom.io.textfile import read_text
from personaloom.records import Conversation

SOURCE = "spc"
USER1, USER2, CONVERSATION = "user 1 personas", "user 2 personas", "Best Generated Conversation"
COLUMNS = (USER1, USER2, CONVERSATION)
SCENARIO = "scenario"


def _personas(cell: str) -> list[str]:
    return [line.strip() for line in cell.replace("\r\n", "\n").split("\n") if line.strip()]


def _header_index(header: list[str], path: Path) -> list[int]:
    names = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c.lower() not in names]
    if missing:
        found = ", ".join(repr(h) for h in header[:8]) or "none"
        raise InputError(
            f"missing column(s) {', '.join(repr(c) for c in missing)} (found {found}); "
            "is this a Synthetic-Persona-Chat CSV?",
            path,
            1,
        )
    return [names.index(c.lower()) for c in COLUMNS]


def spc_conversation(user1: str, user2: str, raw: str, index: int, source: str = SOURCE,
                     scenario: str | None = None) -> Conversation:
    """One SPC row's cells (personas one per line, the conversation text, the optional scenario) -> the
    `index`-th Conversation."""
    parsed = parse_dialogue(raw)
    if not parsed.turns:
        parsed = alternating_paragraphs(raw) or parsed
    return Conversation(
        id=f"{source}-{index:05d}",
        user1_persona=_personas(user1),
        user2_persona=_personas(user2),
        turns=parsed.turns,
        source=source,
        raw=raw,
        defects=parsed.defects,
        label_forms=parsed.label_forms or None,
        scenario=scenario.strip() or None if scenario else None,
    )


def read_spc_csv(path: str | Path, source: str = SOURCE) -> list[Conversation]:
    p = Path(path)
    reader = csv.reader(io.StringIO(read_text(p), newline=""), strict=True)
    out: list[Conversation] = []
    index: list[int] | None = None
    scenario_at: int | None = None
    row_no = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            where = f" in row {row_no + 1}" if index is not None else " in the header"
            hint = "; truncated file or unterminated quote?" if "end of data" in str(exc) else ""
            raise InputError(f"malformed CSV{where} ({exc}{hint})", p, start) from None
        if not row or not any(cell.strip() for cell in row):
            continue
        if index is None:
            index = _header_index(row, p)
            names = [h.strip().lower() for h in row]
            scenario_at = names.index(SCENARIO) if SCENARIO in names else None
            continue
        row_no += 1
        if len(row) <= max(index):
            raise InputError(f"row {row_no} has {len(row)} field(s), expected {max(index) + 1}", p, start)
        user1, user2, raw = (row[i] for i in index)
        scenario = row[scenario_at] if scenario_at is not None and scenario_at < len(row) else None
        out.append(spc_conversation(user1, user2, raw, len(out), source, scenario))
    if index is None:
        raise InputError("empty file", p)
    if not out:
        raise InputError("no conversations after the header", p, 2)
    return out


def conversation_cell(conv: Conversation) -> str:
    """The original text when it still matches the turns, else the turns rendered."""
    if conv.raw is not None and parse_dialogue(conv.raw).turns == conv.turns:
        return conv.raw
    return render_dialogue(conv.turns)


def write_spc_csv(path: str | Path, conversations: Iterable[Conversation], *, scenario: bool = False) -> int:
    """The SPC CSV (see the module docstring), with the `scenario` column when `scenario`; the rows written."""
    n = 0
    with atomic_open(path) as fh:
        writer = csv.writer(fh)
        writer.writerow([*COLUMNS, SCENARIO] if scenario else COLUMNS)
        for conv in conversations:
            cells = ["\n".join(conv.user1_persona), "\n".join(conv.user2_persona), conversation_cell(conv)]
            writer.writerow([*cells, conv.scenario or ""] if scenario else cells)
            n += 1
    return n
