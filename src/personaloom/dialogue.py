"""Dialogue text <-> turns, and the format defects of DESIGN.md §3.

In: raw conversation text with one utterance per line ("User 1: ...", "**User 2:** ...",
"Person 1: ...", "user1: ..."). Out: `ParsedDialogue` with the turns and the defect kinds found:
  empty        no turns at all
  blank_lines  blank lines between utterances
  unprefixed   a non-blank line with no speaker prefix (e.g. "* * *", "[Later]")
  placeholders a bracketed template slot such as "[name]", "[User 1's name]", "[country]", "[имя]"
  same_speaker two consecutive utterances by the same speaker
Prefixes are recognised by parsing, never by cutting a fixed number of characters.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import regex

from personaloom.records import Turn

DEFECT_KINDS = ("empty", "blank_lines", "unprefixed", "placeholders", "same_speaker")

# "User 1:", "**User 1:**", "**User 1**:", "Person 2 -", "user1:", "Speaker 2:", "U1:", "- User 2:"
# (case-insensitive); CJK models also write a full-width colon or digit ("User 1：你好", "User １: ...").
_PREFIX = re.compile(
    r"""^\s*(?:[-•]\s+)?(?:[*_]{1,2}\s*)?
        (?:user|person|speaker|u|p)\s*[-_]?\s*(?P<n>[12１２])
        \s*(?:[*_]{1,2}\s*)?[:：\-–—]\s*(?:[*_]{1,2}\s*)?
    """,
    re.IGNORECASE | re.VERBOSE,
)
# What a clean line starts with; anything else that still parses (e.g. "* User 1: Hi! *") is attributed
# to its speaker but counted as an unprefixed-line defect.
_STRICT_PREFIX = re.compile(r"^(?:\*\*)?(?:user|person|speaker) ?[12](?:\*\*)? ?[:：](?:\*\*)?", re.IGNORECASE)
# A bracketed slot in any script: [name], [User 1's name], {country}, <city>, [имя], [名前], {città}. Short,
# starting with a letter; `regex` because `re`'s \w misses combining marks (Devanagari vowel signs).
_PLACEHOLDER = regex.compile(r"[\[{<]\s*\p{L}[\p{L}\p{M}\p{N} '’_.\-]{0,40}\s*[\]}>]")
_WS = re.compile(r"\s+")


@dataclass
class ParsedDialogue:
    turns: list[Turn] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    # (line number, text) of lines that could not be attributed to a speaker
    unprefixed_lines: list[tuple[int, str]] = field(default_factory=list)


def normalise(text: str) -> str:
    return _WS.sub(" ", text).strip()


def split_prefix(line: str) -> tuple[int, str] | None:
    """(speaker, utterance) if the line starts with a speaker prefix, else None."""
    m = _PREFIX.match(line)
    if m is None:
        return None
    return int(m.group("n")), normalise(line[m.end() :].strip("*_ "))


def has_placeholder(text: str) -> bool:
    return _PLACEHOLDER.search(text) is not None


def turn_defects(turns: list[Turn]) -> list[str]:
    """Defects visible from turns alone (no raw text)."""
    found: list[str] = []
    if not turns:
        found.append("empty")
    if any(has_placeholder(t.text) for t in turns):
        found.append("placeholders")
    if any(a.speaker == b.speaker for a, b in itertools.pairwise(turns)):
        found.append("same_speaker")
    return found


def parse_dialogue(raw: str) -> ParsedDialogue:
    out = ParsedDialogue()
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    # Any blank line counts, a trailing newline included (the released SPC data has such rows).
    lines = text.split("\n") if text.strip() else []
    blank = False
    loose = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            blank = True
            continue
        parsed = split_prefix(line)
        if parsed is None:
            out.unprefixed_lines.append((number, line.strip()))
            continue
        speaker, utterance = parsed
        loose = loose or _STRICT_PREFIX.match(line) is None
        out.turns.append(Turn(speaker=1 if speaker == 1 else 2, text=utterance))
    defects = turn_defects(out.turns)
    if blank:
        defects.append("blank_lines")
    if out.unprefixed_lines or loose:
        defects.append("unprefixed")
    if any(has_placeholder(text) for _, text in out.unprefixed_lines) and "placeholders" not in defects:
        defects.append("placeholders")
    out.defects = [k for k in DEFECT_KINDS if k in defects]
    return out


def render_dialogue(turns: list[Turn]) -> str:
    return "\n".join(f"User {t.speaker}: {t.text}" for t in turns)
