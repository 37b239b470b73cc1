"""Hugging Face personachat JSON -> Conversation.

In: `[{"personality": [...], "utterances": [{"history": [...], "candidates": [...]}, ...]}, ...]`, or
a dict of splits `{"train": [...], "valid": [...]}` (the transfer-learning-conv-ai file). The gold
reply of an utterance is its last candidate; the full dialogue is the last utterance's history plus
its gold reply. `personality` is the replying speaker's persona, so the reply is speaker 2 and
speakers alternate backwards from it; the partner's persona is not in the file (user1_persona = []).
`__ SILENCE __` utterances are dropped.
Out: Conversations with ids `hf-personachat-00000` (list form) or `hf-personachat-<split>-00000`.
Every structural problem is an InputError naming the file and the line where the entry starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personaloom.dialogue import turn_defects
from personaloom.errors import InputError
from personaloom.io.parlai import is_silence
from personaloom.io.textfile import read_text
from personaloom.records import Conversation, Turn

SOURCE = "hf-personachat"
_WS = " \t\n\r"
_DECODER = json.JSONDecoder()


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _array_items(text: str, i: int) -> tuple[list[tuple[int, Any]], int]:
    """The items of the JSON array at text[i] == "[", each with its start offset; and the array's end."""
    items: list[tuple[int, Any]] = []
    i = _skip(text, i + 1)
    if i < len(text) and text[i] == "]":
        return items, i + 1
    while True:
        start = _skip(text, i)
        value, i = _DECODER.raw_decode(text, start)
        items.append((start, value))
        i = _skip(text, i)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        if i < len(text) and text[i] == "]":
            return items, i + 1
        raise json.JSONDecodeError("expected ',' or ']'", text, i)


def _expect_end(text: str, i: int) -> None:
    i = _skip(text, i)
    if i < len(text):
        raise json.JSONDecodeError("extra data after the JSON value", text, i)


def _entries(text: str) -> list[tuple[str | None, int, Any]]:
    """(split, offset, entry) for a top-level list or a dict of split -> list."""
    i = _skip(text, 0)
    if i < len(text) and text[i] == "[":
        items, i = _array_items(text, i)
        _expect_end(text, i)
        return [(None, off, v) for off, v in items]
    if i < len(text) and text[i] == "{":
        out: list[tuple[str | None, int, Any]] = []
        i = _skip(text, i + 1)
        if i < len(text) and text[i] == "}":
            _expect_end(text, i + 1)
            return out
        while True:
            key, i = _DECODER.raw_decode(text, _skip(text, i))
            i = _skip(text, i)
            if not isinstance(key, str) or i >= len(text) or text[i] != ":":
                raise json.JSONDecodeError("expected a key and ':'", text, i)
            i = _skip(text, i + 1)
            if i < len(text) and text[i] == "[":
                items, i = _array_items(text, i)
                out.extend((key, off, v) for off, v in items)
            else:
                raise json.JSONDecodeError(f"split {key!r} is not a list of dialogues", text, i)
            i = _skip(text, i)
            if i < len(text) and text[i] == ",":
                i += 1
                continue
            if i < len(text) and text[i] == "}":
                break
            raise json.JSONDecodeError("expected ',' or '}'", text, i)
        _expect_end(text, i + 1)
        return out
    raise json.JSONDecodeError("expected a list of dialogues or a dict of splits", text, i)


def _str_list(value: Any, what: str, path: Path, line: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise InputError(f"{what} must be a list of strings", path, line)
    for x in value:
        # JSON allows "\ud800" escapes, which no UTF-8 output could hold later.
        if not x.isascii() and any("\ud800" <= ch <= "\udfff" for ch in x):
            raise InputError(f"{what} holds a lone surrogate escape (not valid Unicode text)", path, line)
    return value


def _conversation(entry: Any, conv_id: str, path: Path, line: int) -> Conversation:
    if not isinstance(entry, dict):
        raise InputError("a dialogue must be an object with 'personality' and 'utterances'", path, line)
    missing = [k for k in ("personality", "utterances") if k not in entry]
    if missing:
        raise InputError(f"dialogue lacks {', '.join(repr(k) for k in missing)}", path, line)
    persona = _str_list(entry["personality"], "'personality'", path, line)
    utterances = entry["utterances"]
    if not isinstance(utterances, list) or not utterances:
        raise InputError("'utterances' must be a non-empty list (persona with no dialogue)", path, line)
    last = utterances[-1]
    if not isinstance(last, dict) or "history" not in last or "candidates" not in last:
        raise InputError("each utterance needs 'history' and 'candidates'", path, line)
    history = _str_list(last["history"], "'history'", path, line)
    candidates = _str_list(last["candidates"], "'candidates'", path, line)
    if not candidates:
        raise InputError("'candidates' is empty (the gold reply is its last item)", path, line)
    if not persona:
        raise InputError("dialogue with no persona ('personality' is empty)", path, line)
    texts = [*history, candidates[-1]]
    # The reply (last text) is speaker 2; speakers alternate backwards from it.
    turns = [
        Turn(speaker=2 if (len(texts) - 1 - k) % 2 == 0 else 1, text=t)
        for k, t in enumerate(texts)
        if not is_silence(t)
    ]
    if not turns:
        raise InputError("dialogue has no utterances (only silence)", path, line)
    return Conversation(
        id=conv_id,
        user1_persona=[],
        user2_persona=persona,
        turns=turns,
        source=SOURCE,
        defects=turn_defects(turns),
    )


def read_hf_json(path: str | Path) -> list[Conversation]:
    p = Path(path)
    text = read_text(p)
    try:
        entries = _entries(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg})", p, exc.lineno) from None
    except (ValueError, RecursionError) as exc:
        # e.g. a number with thousands of digits, or nesting deeper than Python's recursion limit
        raise InputError(f"invalid JSON ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})", p) from None
    if not entries:
        raise InputError("no dialogues in the file", p)
    counters: dict[str | None, int] = {}
    out: list[Conversation] = []
    line, seen = 1, 0
    for split, offset, entry in entries:
        # Offsets only grow, so lines are counted once over the whole file.
        line += text.count("\n", seen, offset)
        seen = offset
        index = counters.get(split, 0)
        counters[split] = index + 1
        conv_id = f"{SOURCE}-{index:05d}" if split is None else f"{SOURCE}-{split}-{index:05d}"
        out.append(_conversation(entry, conv_id, p, line))
    return out
