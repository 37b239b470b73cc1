"""Persona-Chat / ConvAI2 ParlAI text <-> Conversation.

In (reader), either of ParlAI's two text forms:
- the Persona-Chat files: numbered lines; a line numbered 1 starts an episode; `your persona: ...` and
  `partner's persona: ...` lines, then `utterance<TAB>reply` lines, optionally followed by
  `<TAB>reward<TAB>cand1|cand2|...`;
- ParlAI's own export (`parlai display_data` / `convert_to_parlai`): one message a line,
  `text:...<TAB>labels:...<TAB>label_candidates:a|b<TAB>episode_done:True`, the persona lines at the start of
  an episode's first `text` (joined by an escaped newline `\n`).
The first column / `text` is the partner's utterance (speaker 1, persona = partner's persona), the reply /
`labels` is "self" (speaker 2, persona = your persona). `__SILENCE__` (and empty) utterances are dropped;
`__PIPE__` (ParlAI's escape of "|" inside candidate lists) reads back as "|". Files without persona lines
(Persona-Chat's `*_none_*` variants, the no-persona setting) give conversations with empty personas.
Out: one Conversation per episode, ids `persona-chat-00000`, ...

Out (writer): the same numbered text, optionally with N distractor candidates per reply sampled (seeded,
keyed by conversation and line, not by call order) from other conversations' utterances, the label at a
seeded position among them; "|" inside a label or candidate is written `__PIPE__`, as ParlAI does.
Consecutive utterances by one speaker get a `__SILENCE__` filler on the
other side, which the reader drops again, so ParlAI -> JSONL -> ParlAI is lossless.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from personaloom.dialogue import turn_defects
from personaloom.errors import InputError
from personaloom.fsutil import atomic_open
from personaloom.io.textfile import lines_of, read_text
from personaloom.records import Conversation, Turn
from personaloom.rng import rng_for

SOURCE = "persona-chat"
SILENCE = "__SILENCE__"
PIPE = "__PIPE__"
YOUR = "your persona:"
PARTNER = "partner's persona:"

# At most 9 digits: int() of thousands of digits is refused by Python (and no file has that many lines).
_NUMBERED = re.compile(r"(\d{1,9})(?: |$)")
_SILENCE = re.compile(r"_+\s*silence\s*_+", re.IGNORECASE)


def is_silence(text: str) -> bool:
    return not text.strip() or _SILENCE.fullmatch(text.strip()) is not None


@dataclass
class _Episode:
    start_line: int
    your: list[str] = field(default_factory=list)
    partner: list[str] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    first_dialogue_line: int | None = None


def _persona_text(body: str, prefix: str) -> str:
    # Only the prefix and the one space after it go: the attribute text stays as it was.
    return body[len(prefix) :].removeprefix(" ")


def _finish(ep: _Episode, index: int, path: Path, source: str) -> Conversation:
    if not ep.turns:
        if ep.first_dialogue_line is None:
            raise InputError("persona lines with no dialogue after them", path, ep.start_line)
        raise InputError("episode has no utterances (only silence)", path, ep.start_line)
    return Conversation(
        id=f"{source}-{index:05d}",
        user1_persona=ep.partner,
        user2_persona=ep.your,
        turns=ep.turns,
        source=source,
        defects=turn_defects(ep.turns),
    )


def _unpipe(text: str) -> str:
    return text.replace(PIPE, "|")


def _add_persona_or_turns(ep: _Episode, body: str, reply: str | None, p: Path, lineno: int) -> None:
    """One line's persona statement, or its (partner utterance, reply) turns."""
    low = body.lower()
    if low.startswith(YOUR) or low.startswith(PARTNER):
        if ep.first_dialogue_line is not None:
            raise InputError("persona line after the dialogue started (episodes start at line 1)", p, lineno)
        if low.startswith(YOUR):
            ep.your.append(_persona_text(body, YOUR))
        else:
            ep.partner.append(_persona_text(body, PARTNER))
        return
    if ep.first_dialogue_line is None:
        ep.first_dialogue_line = lineno
    if not is_silence(body):
        ep.turns.append(Turn(speaker=1, text=_unpipe(body)))
    if reply is not None and not is_silence(reply):
        ep.turns.append(Turn(speaker=2, text=_unpipe(reply)))


def _fields(line: str) -> dict[str, str]:
    """ParlAI's `key:value<TAB>key:value` message line, with its escapes (\\n, \\t) undone."""
    out: dict[str, str] = {}
    for part in line.split("\t"):
        key, sep, value = part.partition(":")
        if sep:
            out[key.strip()] = value.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "")
    return out


def _read_fields(p: Path, lines: list[str], source: str) -> list[Conversation]:
    out: list[Conversation] = []
    ep: _Episode | None = None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        msg = _fields(line)
        if "text" not in msg:
            raise InputError("expected a ParlAI message line ('text:...<TAB>labels:...<TAB>episode_done:...')",
                             p, lineno)
        if ep is None:
            ep = _Episode(start_line=lineno)
        label = msg.get("labels", msg.get("eval_labels"))
        label = label.split("|")[0] if label is not None else None
        parts = msg["text"].split("\n")
        for i, part in enumerate(parts):
            _add_persona_or_turns(ep, part, label if i == len(parts) - 1 else None, p, lineno)
        if msg.get("episode_done", "").strip().lower() == "true":
            out.append(_finish(ep, len(out), p, source))
            ep = None
    if ep is not None and (ep.turns or ep.your or ep.partner):
        out.append(_finish(ep, len(out), p, source))
    return out


def read_parlai(path: str | Path, source: str = SOURCE) -> list[Conversation]:
    p = Path(path)
    lines = lines_of(read_text(p))
    first = next((ln for ln in lines if ln.strip()), "")
    if first.lstrip().startswith("text:"):
        return _read_fields(p, lines, source)
    out: list[Conversation] = []
    ep: _Episode | None = None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        m = _NUMBERED.match(line)
        if m is None:
            raise InputError(
                "expected a numbered line ('<n> text', Persona-Chat) or a ParlAI message line ('text:...')", p, lineno
            )
        number, body = int(m.group(1)), line[m.end() :]
        if ep is None or number == 1:
            if ep is not None:
                out.append(_finish(ep, len(out), p, source))
            ep = _Episode(start_line=lineno)
        cols = body.split("\t")
        _add_persona_or_turns(ep, cols[0], cols[1] if len(cols) > 1 else None, p, lineno)
    if ep is not None:
        out.append(_finish(ep, len(out), p, source))
    return out


def _clean(text: str) -> str:
    # Tabs and newlines are the format's separators; anything else is kept as-is.
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def dialogue_rows(turns: Sequence[Turn]) -> list[tuple[str, str | None]]:
    """(partner utterance, reply) rows; a trailing partner utterance has reply None."""
    rows: list[tuple[str, str | None]] = []
    i = 0
    while i < len(turns):
        turn = turns[i]
        if turn.speaker == 2:
            rows.append((SILENCE, _clean(turn.text)))
            i += 1
        elif i + 1 < len(turns) and turns[i + 1].speaker == 2:
            rows.append((_clean(turn.text), _clean(turns[i + 1].text)))
            i += 2
        elif i + 1 < len(turns):
            rows.append((_clean(turn.text), SILENCE))
            i += 1
        else:
            rows.append((_clean(turn.text), None))
            i += 1
    return rows


def writable(conv: Conversation) -> bool:
    """What the reader accepts back: at least one turn (personas may be empty: the no-persona files)."""
    return bool(conv.turns)


def _distractors(
    label: str, pool: list[tuple[int, str]], conv_index: int, n: int, rng_parts: tuple[object, ...]
) -> list[str]:
    rng = rng_for(*rng_parts)
    chosen: list[str] = []
    seen = {label}
    for _ in range(n * 20):
        if len(chosen) >= n or not pool:
            break
        owner, text = pool[rng.randrange(len(pool))]
        if owner == conv_index or text in seen:
            continue
        seen.add(text)
        chosen.append(text)
    chosen.insert(rng.randrange(len(chosen) + 1), label)
    return chosen


def write_parlai(path: str | Path, conversations: Iterable[Conversation], candidates: int = 19, seed: int = 0) -> int:
    """Write ParlAI text; returns how many conversations were written (those with turns and a persona)."""
    convs = [c for c in conversations if writable(c)]
    pool: list[tuple[int, str]] = []
    if candidates > 0:
        pool = [(ci, _clean(t.text)) for ci, c in enumerate(convs) for t in c.turns if not is_silence(t.text)]
    with atomic_open(path) as fh:
        for ci, conv in enumerate(convs):
            n = 0
            for attr in conv.user2_persona:
                n += 1
                fh.write(f"{n} {YOUR} {_clean(attr)}\n")
            for attr in conv.user1_persona:
                n += 1
                fh.write(f"{n} {PARTNER} {_clean(attr)}\n")
            for ri, (text, label) in enumerate(dialogue_rows(conv.turns)):
                n += 1
                if label is None:
                    fh.write(f"{n} {text}\n")
                elif candidates > 0:
                    cands = _distractors(label, pool, ci, candidates, (seed, "parlai-candidates", ci, conv.id, ri))
                    # "|" separates candidates: inside one it is escaped, in the label too (ParlAI's rule).
                    piped = "|".join(c.replace("|", PIPE) for c in cands)
                    fh.write(f"{n} {text}\t{label.replace('|', PIPE)}\t\t{piped}\n")
                else:
                    fh.write(f"{n} {text}\t{label}\n")
    return len(convs)
