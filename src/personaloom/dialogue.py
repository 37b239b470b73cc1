"""Dialogue text <-> turns: the one speaker-label grammar, the one slot detector, and the format defects
of DESIGN.md §3. Every reader, the metrics, the generator's parser and the format expert use these.

In: raw conversation text with one utterance per line. Out: `ParsedDialogue` with the turns, the defect
kinds found, the label forms seen and the lines no label attributes:
  empty             no turns at all
  blank_lines       blank lines between utterances
  unprefixed        a non-blank line with no speaker label (e.g. "* * *")
  placeholders      a template slot in any bracket: "[name]", "[User 1's name]", "(user 1's name)", "(city)",
                    "{friend's name}", "<NAME>", "[имя]"
  stage_directions  a bracketed narrative line or aside: "[Later that week]", "(The next day)", "(laughs)"
  same_speaker      two consecutive utterances by the same speaker
  nonstandard_labels a label written in another form than "User 1:" (which forms: `label_forms`)

Speaker labels (`split_label`): canonical "User 1:" (a full-width "：" counts as canonical, as CJK models
write it), and, recorded by form in `label_forms`:
  emphasis  "**User 1:**", "* * User 1: * *" (SPC's test split), "__User 2__:" — any spacing
  numbered  "1. User 1: ...", "2) User 2: ..."
  bulleted  "- User 1: ...", "• User 2: ..."
  named     "User 1 (Maya): ..."
  letter    "Person A: ...", "Speaker B: ..." (A is User 1, B is User 2)
  variant   "Person 1:", "Speaker 2 -", "user1:", "U1:", "User １:" (another word, spacing, case, digit or
            separator)
  names     "Maya: ...", "Tom: ..." — when a reply labels its lines with exactly two names and no
            User/Person labels, the names are User 1 and User 2 in order of appearance
Prefixes are recognised by parsing, never by cutting a fixed number of characters.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, field

import regex

from personaloom.records import Turn

DEFECT_KINDS = ("empty", "blank_lines", "unprefixed", "placeholders", "stage_directions", "same_speaker",
                "nonstandard_labels")
# "inferred": no label at all, turns taken from alternating paragraphs (a reader's `alternating_paragraphs`).
LABEL_FORMS = ("emphasis", "numbered", "bulleted", "named", "letter", "variant", "names", "inferred")

_EMPH = r"(?:[*_]\s*){1,4}"
_LABEL = re.compile(
    rf"""^\s*
        (?P<list>\d{{1,3}}[.)]\s+|[-•+–]\s+)?
        (?P<e1>{_EMPH})?
        (?P<word>user|person|speaker|participant|u|p)\s*[-_]?\s*(?P<n>[12１２]|[ab]\b)
        \s*(?P<name>\([^()\n]{{1,40}}\))?
        \s*(?P<e2>{_EMPH})?
        (?P<sep>[:：]|\s[-–—]|[-–—](?=\s))
        \s*(?P<e3>{_EMPH})?
    """,
    re.IGNORECASE | re.VERBOSE,
)
# A name used as a label: one or two capitalised words (any script) before a colon.
_NAME_LABEL = regex.compile(
    rf"^\s*(?:\d{{1,3}}[.)]\s+|[-•+–]\s+)?(?:{_EMPH})?(?P<name>\p{{Lu}}[\p{{L}}\p{{M}}'’.\-]{{0,20}}"
    rf"(?: \p{{Lu}}[\p{{L}}\p{{M}}'’.\-]{{0,20}})?)\s*(?:{_EMPH})?[:：]\s*(?:{_EMPH})?"
)
# Labels that are no speaker (a reply's notes and headings).
_NOT_NAMES = {"note", "notes", "conversation", "dialogue", "dialog", "example", "profile", "persona", "output",
              "answer", "title", "scene", "setting", "summary", "user", "assistant", "system", "response", "here",
              "explanation", "context", "topic", "end", "ps", "p.s."}
_WS = re.compile(r"\s+")

# ---------------------------------------------------------------- slots and stage directions

# A bracketed phrase: the bracket pair and what is inside (short, no nested brackets or line breaks).
_BRACKETED = regex.compile(r"\[([^\[\]\n]{1,60})\]|\{([^{}\n]{1,60})\}|<([^<>\n]{1,60})>|\(([^()\n]{1,60})\)")
# Words a template slot is made of: "[name]", "(city)", "{friend's name}", "<NAME>", "(user 1's job)".
_SLOT_WORDS = {
    "name", "names", "nickname", "city", "town", "country", "state", "place", "location", "address", "street",
    "job", "occupation", "profession", "company", "employer", "school", "university", "college", "team",
    "age", "number", "date", "pet", "hobby", "food", "band", "song", "book",
    "movie", "show", "restaurant", "store", "brand", "sport", "game", "language", "religion", "field",
    "subject", "major", "degree", "instrument", "artist", "author", "destination", "event", "topic", "color",
}
_SPEAKER_REF = re.compile(r"\b(?:user|person|speaker|partner)\s*[12ab]?\b|\b(?:your|my|his|her|their)\b",
                          re.IGNORECASE)
# Narrative cues: a bracketed phrase with one is no slot ("[Later that week]", "(laughs)", "[pause]").
_CUES = re.compile(
    r"\b(?:later|next|after|afterwards|meanwhile|earlier|eventually|the following|scene|pause[sd]?|silence|"
    r"laugh(?:s|ing)?|smil(?:es|ing)|sigh(?:s|ing)?|nod(?:s|ding)?|chuckl(?:es|ing)|grin(?:s|ning)?|"
    r"shrug(?:s|ging)?|wink(?:s|ing)?|hours?|days?|weeks?|months?|years?|minutes?|end|continued|"
    r"time skip|fast forward)\b",
    re.IGNORECASE,
)
_TOKEN = regex.compile(r"[\p{L}\p{M}\p{N}'’]+")


def _inside(m: regex.Match[str]) -> tuple[str, str]:
    """(bracket kind, content) of a _BRACKETED match."""
    for kind, group in zip("[{<(", m.groups(), strict=True):
        if group is not None:
            return kind, group.strip()
    return "(", ""


def _is_slot(kind: str, content: str) -> bool:
    tokens = _TOKEN.findall(content)
    if not tokens or not regex.match(r"\p{L}", content) or len(tokens) > 5:
        return False
    low = [t.lower().removesuffix("'s").removesuffix("’s") for t in tokens]
    if _CUES.search(content) and not any(w in _SLOT_WORDS for w in low):
        return False
    if any(w in _SLOT_WORDS for w in low) and len(tokens) <= 4:
        return True
    if kind == "(":
        # Round brackets hold ordinary asides too: only "(User 1)", "(your name)"-like references are slots.
        return _SPEAKER_REF.fullmatch(content) is not None or (
            len(tokens) <= 3 and _SPEAKER_REF.search(content) is not None and content.isascii()
            and any(w in _SLOT_WORDS for w in low))
    # Square, curly and angle brackets around a short phrase are template slots in any script ("[имя]").
    return len(tokens) <= 4


def find_slots(text: str) -> list[str]:
    """The template slots in `text`, brackets included ("[name]", "(city)"); DESIGN.md §3."""
    return list(_slots(text))


# Memoised: the generator's trim, its defect list and the format expert each ask about every utterance.
@functools.lru_cache(maxsize=16384)
def _slots(text: str) -> tuple[str, ...]:
    if "[" not in text and "(" not in text and "{" not in text and "<" not in text:
        return ()  # no opening bracket _BRACKETED could match
    return tuple(m.group(0) for m in _BRACKETED.finditer(text) if _is_slot(*_inside(m)))


def has_slot(text: str) -> bool:
    return bool(_slots(text))


@functools.lru_cache(maxsize=16384)
def is_stage_direction(line: str) -> bool:
    """A line (or an utterance) that is one bracketed narrative phrase, not a slot: "[Later that week]",
    "(The next day)", "(laughs)". Asides inside an utterance ("Ha (laughs) yes") are ordinary text."""
    stripped = line.strip().strip("*_ ")
    m = _BRACKETED.fullmatch(stripped)
    if m is None:
        return False
    kind, content = _inside(m)
    return kind != "<" and not _is_slot(kind, content)


# ---------------------------------------------------------------- labels


@dataclass
class ParsedDialogue:
    turns: list[Turn] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    # (line number, text) of lines that could not be attributed to a speaker
    unprefixed_lines: list[tuple[int, str]] = field(default_factory=list)
    # the non-canonical label forms seen (LABEL_FORMS), in that order
    label_forms: list[str] = field(default_factory=list)
    # line number of each turn (1-based), for callers that rebuild the line order
    turn_lines: list[int] = field(default_factory=list)


def normalise(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _utterance(rest: str) -> str:
    return normalise(rest.strip().rstrip("*_").strip())


def split_label(line: str) -> tuple[int, str, str | None] | None:
    """(speaker, utterance, form) when the line starts with a User/Person/Speaker label; form is None for
    the canonical "User 1:" and one of LABEL_FORMS otherwise. Names as labels need the whole reply
    (`parse_dialogue`)."""
    m = _LABEL.match(line)
    if m is None:
        return None
    n = m.group("n").lower()
    speaker = 1 if n in ("1", "１", "a") else 2
    form: str | None = None
    if m.group("e1") or m.group("e2") or m.group("e3"):
        form = "emphasis"
    elif m.group("list"):
        form = "numbered" if m.group("list")[0].isdigit() else "bulleted"
    elif m.group("name"):
        form = "named"
    elif n in ("a", "b"):
        form = "letter"
    elif not re.match(r"User [12]\s*[:：]$", m.group(0).strip()) or m.group("sep") not in (":", "："):
        form = "variant"
    return speaker, _utterance(line[m.end() :]), form


def split_prefix(line: str) -> tuple[int, str] | None:
    """(speaker, utterance) if the line starts with a speaker label, else None."""
    found = split_label(line)
    return None if found is None else (found[0], found[1])


def _name_labels(lines: list[str]) -> dict[str, int] | None:
    """{name: speaker} when the lines label utterances with exactly two names, in order of appearance."""
    order: list[str] = []
    labelled = 0
    for line in lines:
        m = _NAME_LABEL.match(line)
        if m is None or m.group("name").lower() in _NOT_NAMES:
            continue
        labelled += 1
        name = m.group("name")
        if name not in order:
            order.append(name)
    if len(order) != 2 or labelled < 2:
        return None
    return {order[0]: 1, order[1]: 2}


def turn_defects(turns: list[Turn]) -> list[str]:
    """Defects visible from turns alone (no raw text)."""
    found: list[str] = []
    if not turns:
        found.append("empty")
    if any(has_slot(t.text) for t in turns):
        found.append("placeholders")
    if any(is_stage_direction(t.text) for t in turns):
        found.append("stage_directions")
    if any(a.speaker == b.speaker for a, b in itertools.pairwise(turns)):
        found.append("same_speaker")
    return found


def parse_dialogue(raw: str) -> ParsedDialogue:
    """Turns, defects, label forms and unattributed lines of one conversation's text."""
    out = ParsedDialogue()
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    # Any blank line counts, a trailing newline included (the released SPC data has such rows).
    lines = text.split("\n") if text.strip() else []
    labels = [split_label(line) if line.strip() else None for line in lines]
    names = None if any(labels) else _name_labels(lines)
    forms: set[str] = set()
    blank = False
    for number, (line, label) in enumerate(zip(lines, labels, strict=True), start=1):
        if not line.strip():
            blank = True
            continue
        if label is None and names is not None:
            m = _NAME_LABEL.match(line)
            if m is not None and m.group("name") in names:
                label = (names[m.group("name")], _utterance(line[m.end() :]), "names")
        if label is None:
            out.unprefixed_lines.append((number, line.strip()))
            continue
        speaker, utterance, form = label
        if form is not None:
            forms.add(form)
        out.turns.append(Turn(speaker=speaker, text=utterance))
        out.turn_lines.append(number)
    out.label_forms = [f for f in LABEL_FORMS if f in forms]
    defects = turn_defects(out.turns)
    if blank:
        defects.append("blank_lines")
    loose = [t for _, t in out.unprefixed_lines]
    if any(is_stage_direction(t) for t in loose):
        defects.append("stage_directions")
    if any(not is_stage_direction(t) for t in loose):
        defects.append("unprefixed")
    if any(has_slot(t) for t in loose):
        defects.append("placeholders")
    if out.label_forms:
        defects.append("nonstandard_labels")
    out.defects = [k for k in DEFECT_KINDS if k in defects]
    return out


def alternating_paragraphs(raw: str) -> ParsedDialogue | None:
    """A conversation with no speaker label anywhere, written as paragraphs separated by blank lines (a few rows of
    the released SPC data): the paragraphs as alternating turns from User 1, with the defect "unprefixed" and
    the label form "inferred". None when the text has a label, or fewer than two paragraphs. For readers of
    existing data only: a Generator reply without labels is not a conversation."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    if any(split_label(line) for line in text.split("\n") if line.strip()):
        return None
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) < 2:
        return None
    turns = [Turn(speaker=1 + i % 2, text=p) for i, p in enumerate(paragraphs)]
    defects = set(turn_defects(turns)) | {"unprefixed", "blank_lines"}
    return ParsedDialogue(turns=turns, defects=[k for k in DEFECT_KINDS if k in defects], label_forms=["inferred"])


def describe_non_dialogue(raw: str) -> str:
    """What a reply with no labelled utterance had instead (for a Failure's detail)."""
    lines = [ln.strip() for ln in raw.replace("\r", "\n").split("\n") if ln.strip()]
    if not lines:
        return "the reply was empty"
    first = lines[0][:80]
    if lines[0].startswith(("{", "[")):
        kind = "JSON"
    elif lines[0].startswith("```"):
        kind = "a code block"
    elif all(re.match(r"\d{1,3}[.)]\s", ln) for ln in lines[:3]):
        kind = "a numbered list without speaker labels"
    elif _name_labels(lines) is None and sum(1 for ln in lines if _NAME_LABEL.match(ln)) >= 2:
        names = sorted({m.group("name") for ln in lines if (m := _NAME_LABEL.match(ln))})
        kind = f"lines labelled with {len(names)} names ({', '.join(names[:4])}), not two"
    else:
        kind = "prose"
    return f"no line starts with a speaker label such as 'User 1:'; the reply had {len(lines)} lines of {kind}, " \
           f"first: {first!r}"


def render_dialogue(turns: list[Turn]) -> str:
    return "\n".join(f"User {t.speaker}: {t.text}" for t in turns)
