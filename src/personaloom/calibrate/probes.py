"""Labelled probes for judge calibration, built from real conversations and hand-written data.

In: conversations with both personas (Persona-Chat, SPC, a run's output, or the seed set), optionally
reference pairs for the Turing judge. Out: `Comparison` probes (two conversations shown in a given order,
the index of the one that should win), `Verdict`-style `Check` probes (one conversation, "pass" or
"reject" expected) and `Contradiction` probes (two attributes, contradicting or not).

Degradations, one per quality expert's criterion (the original must win against its degraded copy):
  coherency    turns shuffled within the conversation (seeded);
  depth        cut to its first two exchanges;
  diversity    one speaker's lines replaced by that speaker's first line, repeated;
  consistency  a speaker's last line replaced by a statement contradicting one of their earlier ones;
  likeability  one speaker's lines replaced by curt, dismissive replies.
Faithfulness: the conversation with its own profiles ("pass") vs with one profile edited so that an
attribute the speaker expresses is negated ("reject"). Traits (--big-five): user 2 as written and made curt,
each given high and low agreeableness. Cross-session (--sessions): a conversation's second half after its
first, as is and opening with a contradiction of session 1. Scenario (generate.scenarios): a conversation with
the scenario it was generated for ("pass") and with another conversation's scenario ("reject"). Every comparison
is shown in both orders.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

from personaloom.records import Conversation, Session, SessionContext, Turn
from personaloom.rng import rng_for
from personaloom.text import words

CURT = ("Whatever.", "I don't care.", "Fine.", "Not interested.", "Sure, if you say so.", "Boring.", "Ok.")
_NEGATE = (
    (re.compile(r"^I am\b", re.I), "I am not"), (re.compile(r"^I'm\b", re.I), "I am not"),
    (re.compile(r"^I have\b", re.I), "I do not have"), (re.compile(r"^I've\b", re.I), "I have not"),
    (re.compile(r"^I can\b", re.I), "I cannot"), (re.compile(r"^I was\b", re.I), "I was not"),
    (re.compile(r"^I will\b", re.I), "I will not"), (re.compile(r"^My (\w+) is\b", re.I), r"My \1 is not"),
    (re.compile(r"^My (\w+) are\b", re.I), r"My \1 are not"), (re.compile(r"^I (\w+)\b", re.I), r"I do not \1"),
)


@dataclass(frozen=True)
class Comparison:
    """Two conversations in the order shown; `better` is the index (0 or 1) of the one a good judge picks
    (for the Turing judge: the machine-written one). `key` is shared by the two orders of one pair."""

    key: str
    shown: tuple[Conversation, Conversation]
    better: int


@dataclass(frozen=True)
class Check:
    """One conversation and the verdict a good filter gives it ("pass" or "reject"); `session`: the earlier
    session a cross-session probe continues."""

    key: str
    conversation: Conversation
    expected: str
    session: SessionContext | None = None


@dataclass(frozen=True)
class Contradiction:
    """Two attributes; `contradicts`: whether one person cannot hold both (the profiles' NLI rule)."""

    key: str
    premise: str
    hypothesis: str
    contradicts: bool
    label: str


def negate(statement: str) -> str:
    """A first-person statement negated by rule ("I have two dogs." -> "I do not have two dogs.")."""
    text = statement.strip()
    for pattern, replacement in _NEGATE:
        if pattern.search(text):
            return pattern.sub(replacement, text, count=1)
    return f"It is not true that {text[0].lower()}{text[1:]}" if text else text


def _speaker_turns(conv: Conversation, speaker: int) -> list[int]:
    return [i for i, t in enumerate(conv.turns) if t.speaker == speaker]


def _replace(conv: Conversation, suffix: str, turns: list[Turn]) -> Conversation:
    return conv.model_copy(update={"id": f"{conv.id}~{suffix}", "turns": turns, "raw": None, "defects": []})


def degrade(conv: Conversation, criterion: str, seed: int) -> Conversation:
    """`conv` made worse along one quality expert's criterion (see the module docstring)."""
    turns = list(conv.turns)
    rnd = rng_for(seed, "calibrate", criterion, conv.id)
    if criterion == "coherency":
        texts = [t.text for t in turns]
        for _ in range(10):
            rnd.shuffle(texts)
            if texts != [t.text for t in turns]:
                break
        return _replace(conv, criterion, [Turn(speaker=t.speaker, text=x) for t, x in zip(turns, texts, strict=True)])
    if criterion == "depth":
        return _replace(conv, criterion, turns[:4])
    speaker = 2 if criterion in ("diversity", "likeability") else 1
    mine = _speaker_turns(conv, speaker)
    if criterion == "diversity" and mine:
        first = turns[mine[0]].text
        return _replace(conv, criterion, [Turn(speaker=t.speaker, text=first) if i in mine else t
                                          for i, t in enumerate(turns)])
    if criterion == "likeability":
        return _replace(conv, criterion, [Turn(speaker=t.speaker, text=rnd.choice(CURT)) if i in mine else t
                                          for i, t in enumerate(turns)])
    if criterion == "consistency" and len(mine) >= 2:
        earlier = turns[mine[0]].text.split(".")[0].strip() or turns[mine[0]].text
        turns[mine[-1]] = Turn(speaker=speaker, text=f"{negate(earlier)}. I never said otherwise.")
        return _replace(conv, criterion, turns)
    return _replace(conv, criterion, turns[:2])


def comparisons(convs: list[Conversation], criterion: str, seed: int, limit: int) -> list[Comparison]:
    """`limit` originals vs their degraded copies, each in both orders (2 * limit probes)."""
    out: list[Comparison] = []
    for conv in [c for c in convs if len(c.turns) >= 6][:limit]:
        bad = degrade(conv, criterion, seed)
        key = f"{criterion}:{conv.id}"
        out += [Comparison(key, (conv, bad), 0), Comparison(key, (bad, conv), 1)]
    return out


def expressed(conv: Conversation, speaker: int) -> str | None:
    """The speaker's attribute with the most words in common with what the speaker says."""
    persona = conv.user1_persona if speaker == 1 else conv.user2_persona
    said = {w for t in conv.turns if t.speaker == speaker for w in words(t.text) if len(w) > 3}
    scored = sorted(persona, key=lambda a: -len({w for w in words(a) if len(w) > 3} & said))
    return scored[0] if scored else None


def faithfulness_checks(convs: list[Conversation], limit: int) -> list[Check]:
    """Per conversation: as written ("pass"), and with user 1's expressed attribute negated ("reject")."""
    out: list[Check] = []
    for conv in [c for c in convs if c.user1_persona and c.user2_persona][:limit]:
        attribute = expressed(conv, 1)
        if attribute is None:
            continue
        edited = [negate(a) if a == attribute else a for a in conv.user1_persona]
        bad = conv.model_copy(update={"id": f"{conv.id}~unfaithful", "user1_persona": edited})
        out += [Check(f"faithfulness:{conv.id}", conv, "pass"), Check(f"faithfulness:{conv.id}~", bad, "reject")]
    return out


def traits_checks(convs: list[Conversation], limit: int) -> list[Check]:
    """--big-five: user 2 as written (friendly: high agreeableness) and made curt and dismissive (low), each
    given both levels: the traits expert should pass the level that fits and reject the other."""
    out: list[Check] = []
    for conv in convs[:limit]:
        for shown, fits in ((conv, "high"), (degrade(conv, "likeability", 0), "low")):
            for given in ("high", "low"):
                probe = shown.model_copy(update={"id": f"{shown.id}~agreeableness-{given}", "user1_traits": None,
                                                 "user2_traits": {"agreeableness": given}})
                out.append(Check(f"traits:{shown.id}", probe, "pass" if given == fits else "reject"))
    return out


def cross_session_checks(convs: list[Conversation], limit: int) -> list[Check]:
    """--sessions: a conversation's first half as session 1; its second half as session 2 ("pass"), and the
    second half opening with user 1 contradicting what they said in session 1 ("reject")."""
    out: list[Check] = []
    for conv in convs[:limit]:
        half = len(conv.turns) // 2 // 2 * 2
        first, second = conv.turns[:half], conv.turns[half:]
        said = next((t.text for t in first if t.speaker == 1), "")
        ctx = SessionContext(index=2, gap="one week", memory={"user1": "", "user2": ""},
                             previous=[Session(index=1, turns=first)])
        contradiction = Turn(speaker=1, text=f"{negate(said.split('.')[0].strip() or said)}. I never said otherwise.")
        good = conv.model_copy(update={"id": f"{conv.id}~s2", "turns": second})
        bad = conv.model_copy(update={"id": f"{conv.id}~s2-contradicts", "turns": [contradiction, *second[1:]]})
        out += [Check(f"cross_session:{conv.id}", good, "pass", ctx),
                Check(f"cross_session:{conv.id}~", bad, "reject", ctx)]
    return out


def scenario_checks(convs: list[Conversation], limit: int) -> list[Check]:
    """generate.scenarios: each conversation with its own scenario ("pass") and with the next conversation's
    different scenario ("reject"); none when fewer than two distinct scenarios are at hand."""
    have = [c for c in convs if c.scenario]
    out: list[Check] = []
    for i, conv in enumerate(have[:limit]):
        other = next((c.scenario for c in have[i + 1:] + have[:i] if c.scenario != conv.scenario), None)
        if other is None:
            continue
        swapped = conv.model_copy(update={"id": f"{conv.id}~other-scenario", "scenario": other})
        out += [Check(f"scenario:{conv.id}", conv, "pass"), Check(f"scenario:{conv.id}~", swapped, "reject")]
    return out


def _data(name: str) -> list[dict[str, object]]:
    text = resources.files("personaloom.calibrate").joinpath("data", name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def toxicity_checks(limit: int) -> list[Check]:
    """Hand-written toxic ("reject") and benign ("pass") conversations, alternately, `limit` of each."""
    rows = _data("toxicity.jsonl")
    by_label = {label: [r for r in rows if r["label"] == label] for label in ("toxic", "benign")}
    out: list[Check] = []
    for toxic, benign in list(zip(by_label["toxic"], by_label["benign"], strict=False))[:limit]:
        for row in (toxic, benign):
            lines = row["utterances"]
            assert isinstance(lines, list)
            conv = Conversation(id=str(row["id"]), user1_persona=[], user2_persona=[],
                                turns=[Turn(speaker=1 + i % 2, text=str(x)) for i, x in enumerate(lines)])
            out.append(Check(f"toxicity:{row['id']}", conv, "reject" if row["label"] == "toxic" else "pass"))
    return out


def contradictions(limit: int) -> list[Contradiction]:
    """Hand-written attribute pairs (data/nli_pairs.jsonl: contradiction, entailment, neutral), up to
    `limit` contradicting ones and as many others, interleaved."""
    rows = _data("nli_pairs.jsonl")
    bad = [r for r in rows if r["label"] == "contradiction"][:limit]
    good = [r for r in rows if r["label"] != "contradiction"]
    good = [good[i] for i in range(0, len(good), max(1, len(good) // max(1, len(bad))))][: len(bad)]
    out: list[Contradiction] = []
    for i, row in enumerate(x for pair in zip(bad, good, strict=False) for x in pair):
        out.append(Contradiction(f"nli:{i:03d}", str(row["premise"]), str(row["hypothesis"]),
                                 row["label"] == "contradiction", str(row["label"])))
    return out
