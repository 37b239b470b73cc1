"""Persona collections as seed data: PersonaHub / FinePersonas descriptions and Nemotron-Personas records.

In: a JSONL, CSV/TSV or Parquet file of persona records, read as a stream (a million lines are never in
memory at once), in one of two shapes, told apart by the first record's fields (or forced):
- "persona-descriptions" (PersonaHub, FinePersonas): one text field — `persona`, `description`,
  `input persona`, `persona_description`, `profile` or `text` — e.g. "A retired nurse who volunteers at
  an animal shelter";
- "persona-records" (Nemotron-Personas): named fields (age, sex, occupation, city, state, country,
  education_level, marital_status, hobbies_and_interests, skills_and_expertise, ... and the `*_persona`
  texts), optionally Big Five scores (`openness` ... or a `big_five` / `big_five_scores` mapping; 0-1 or
  0-100), which become the profile's `traits`.
Out: `PersonaRecord`s — an id, the text for the describe stage (stages/describe.py turns it into
first-person attributes with the LLM), the attributes its named fields state directly ("I am 34 years
old.", "I work as a nurse."), and its traits. `sample_personas` draws k of them with a seeded reservoir
(one pass, O(k) memory).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personaloom.errors import InputError
from personaloom.io.textfile import BOM
from personaloom.records import TRAITS

DESCRIPTIONS = "persona-descriptions"
RECORDS = "persona-records"
KINDS = (DESCRIPTIONS, RECORDS)
TEXT_FIELDS = ("persona", "description", "input persona", "input_persona", "persona_description", "profile", "text")
# Named fields of a structured persona record (Nemotron-Personas and the like).
RECORD_FIELDS = (
    "age", "sex", "gender", "occupation", "city", "state", "country", "education_level", "marital_status",
    "hobbies_and_interests", "skills_and_expertise", "career_goals_and_ambitions", "professional_persona",
    "sports_persona", "arts_persona", "travel_persona", "culinary_persona", "cultural_background",
)
# Free-text fields of a record that go to the describe stage, in this order.
_RECORD_TEXTS = ("persona", "professional_persona", "hobbies_and_interests", "skills_and_expertise",
                 "career_goals_and_ambitions", "sports_persona", "arts_persona", "travel_persona",
                 "culinary_persona", "cultural_background")
_CONVERSATION_FIELDS = {"turns", "utterances", "personality", "user 1 personas", "Best Generated Conversation"}


@dataclass
class PersonaRecord:
    """One persona of a collection (`line`: where it is in the file, for messages and ids)."""

    id: str
    line: int
    text: str
    attributes: list[str] = field(default_factory=list)
    traits: dict[str, float] | None = None


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, record) for every record of the file, streamed."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            yield from _parquet(path)
            return
        with path.open(encoding="utf-8", newline="" if suffix in (".csv", ".tsv") else None) as fh:
            if suffix in (".csv", ".tsv"):
                rows = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                for i, row in enumerate(rows, start=2):
                    yield i, {str(k).removeprefix(BOM).strip(): v for k, v in row.items() if k is not None}
                return
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"not a JSON object per line ({exc.msg})", path, i) from None
                if not isinstance(value, dict):
                    raise InputError("expected one JSON object per line", path, i)
                yield i, value
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", path) from None
    except csv.Error as exc:
        raise InputError(f"malformed CSV ({exc})", path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", path) from None


def _parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
        row = 0
        for batch in reader.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except Exception as exc:  # pyarrow's own errors: a damaged or non-Parquet file
        raise InputError(f"cannot read Parquet ({type(exc).__name__}: {exc})", path) from None


def _text_field(record: dict[str, Any]) -> str | None:
    lowered = {str(k).lower(): k for k in record}
    for name in TEXT_FIELDS:
        key = lowered.get(name)
        if key is not None and isinstance(record[key], str) and record[key].strip():
            return str(key)
    return None


def persona_kind(path: str | Path) -> str | None:
    """DESCRIPTIONS or RECORDS when the file is a persona collection, None when it is something else
    (a conversation file, say); judged by its first record."""
    p = Path(path)
    if p.suffix.lower() not in (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".json"):
        return None
    try:
        _, first = next(_records(p))
    except (StopIteration, InputError):
        return None
    keys = {str(k).lower() for k in first}
    if keys & {k.lower() for k in _CONVERSATION_FIELDS}:
        return None
    if len(keys & set(RECORD_FIELDS)) >= 3:
        return RECORDS
    return DESCRIPTIONS if _text_field(first) is not None else None


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _field_attributes(record: dict[str, Any]) -> list[str]:
    """Attributes stated directly by a record's named fields."""
    def get(name: str) -> str:
        value = record.get(name)
        return " ".join(str(value).replace("_", " ").split()) if value not in (None, "") else ""

    out: list[str] = []
    age = get("age")
    if age.isdigit():
        out.append(f"I am {age} years old.")
    job = get("occupation")
    if job and job.lower() not in ("not in workforce", "unemployed", "none"):
        out.append(f"I work as {_article(job)} {job.lower()}.")
    place = ", ".join(x for x in (get("city"), get("state")) if x) or get("country")
    if place:
        out.append(f"I live in {place}.")
    status = get("marital_status").lower()
    if status:
        out.append("I have never been married." if "never" in status else f"I am {status}.")
    education = get("education_level").lower()
    if education:
        out.append(f"My highest level of education is {education}.")
    return out


def _traits(record: dict[str, Any]) -> dict[str, float] | None:
    nested = record.get("big_five") or record.get("big_five_scores")
    source = nested if isinstance(nested, dict) else record
    found: dict[str, float] = {}
    for trait in TRAITS:
        value = source.get(trait, source.get(trait.capitalize()))
        if isinstance(value, int | float) and not isinstance(value, bool):
            score = float(value) / 100.0 if value > 1 else float(value)
            if 0.0 <= score <= 1.0:
                found[trait] = round(score, 3)
    return found or None


def iter_personas(path: str | Path, kind: str | None = None) -> Iterator[PersonaRecord]:
    """Every persona of the file, streamed. InputError for a record with nothing to use."""
    p = Path(path)
    kind = kind or persona_kind(p)
    if kind not in KINDS:
        raise InputError(f"not a persona collection (expected a text field such as {TEXT_FIELDS[0]!r}, "
                         f"or named fields such as {', '.join(RECORD_FIELDS[:4])})", p)
    for number, record in _records(p):
        if kind == DESCRIPTIONS:
            key = _text_field(record)
            if key is None:
                raise InputError(f"no persona text (one of {', '.join(TEXT_FIELDS)})", p, number)
            text, attributes = " ".join(str(record[key]).split()), []
        else:
            parts = [" ".join(str(record[k]).split()) for k in _RECORD_TEXTS
                     if isinstance(record.get(k), str) and record[k].strip()]
            text, attributes = " ".join(parts[:3]), _field_attributes(record)
            if not text and not attributes:
                raise InputError("persona record with no usable field", p, number)
        rid = str(record.get("uuid") or record.get("id") or f"line-{number}")
        yield PersonaRecord(id=rid, line=number, text=text, attributes=attributes, traits=_traits(record))


def sample_personas(path: str | Path, k: int, seed: int, kind: str | None = None) -> list[PersonaRecord]:
    """k personas drawn uniformly from the file in one streamed pass (seeded reservoir sampling,
    Vitter's algorithm R), in file order."""
    rng = random.Random(f"{seed}:personas")
    kept: list[PersonaRecord] = []
    for i, persona in enumerate(iter_personas(path, kind)):
        if i < k:
            kept.append(persona)
        else:
            j = rng.randrange(i + 1)
            if j < k:
                kept[j] = persona
    if not kept:
        raise InputError("no personas in the file", path)
    return sorted(kept, key=lambda p: p.line)
