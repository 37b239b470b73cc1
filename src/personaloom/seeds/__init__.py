"""The built-in seed set, shipped as package data and written by this project (no dataset copied).

In: nothing (reads `attributes.jsonl` and `conversations.jsonl` beside this module via importlib.resources).
Out: `seed_attributes()` -> list[Attribute] (short first-person persona sentences, source "seed") and
`seed_conversations()` -> list[Conversation] (persona pairs with a natural conversation each; every persona
sentence is one of the seed attributes). `SEED_DATA_NAME` is the name `--seed-data` uses for this set.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TypeVar

from pydantic import ValidationError

from personaloom.errors import InputError
from personaloom.records import Attribute, Conversation, Record

SEED_DATA_NAME = "builtin"
ATTRIBUTES_FILE = "attributes.jsonl"
CONVERSATIONS_FILE = "conversations.jsonl"

R = TypeVar("R", bound=Record)


@cache
def _lines(name: str) -> tuple[str, ...]:
    # Cache the text, not the records: callers get fresh (mutable) pydantic objects every time.
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return tuple(text.splitlines())


def _load(name: str, model: type[R]) -> list[R]:
    where = f"{__name__}/{name}"
    out: list[R] = []
    for number, line in enumerate(_lines(name), start=1):
        if not line.strip():
            continue
        try:
            out.append(model.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            # Only reachable if the shipped files were edited badly; still name file and line.
            first = str(exc).splitlines()[0]
            raise InputError(
                f"bad {model.__name__} record in built-in seed data: {first}", where, number
            ) from exc
    if not out:
        raise InputError("built-in seed data file is empty", where)
    return out


def seed_attributes() -> list[Attribute]:
    """The built-in persona attributes (ids "seed-attr-NNN")."""
    return _load(ATTRIBUTES_FILE, Attribute)


def seed_conversations() -> list[Conversation]:
    """The built-in persona-pair conversations (ids "seed-conv-NN"), the Generator's first few-shot pool."""
    return _load(CONVERSATIONS_FILE, Conversation)


__all__ = ["SEED_DATA_NAME", "seed_attributes", "seed_conversations"]
