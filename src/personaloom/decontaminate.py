"""Test-set contamination: conversations that reproduce utterances of the benchmark they will be evaluated on.

In: reference files (any conversation file the readers accept: Persona-Chat's test split, SPC's) and
conversations. Out: `References.match(c)` -> None or a `Contaminated` record naming the matching n-gram, the file
and the utterance it came from; `References.persona_overlap(c)` -> how many of the conversation's persona
sentences are persona sentences of the files (expected when seeding from Persona-Chat: reported, never dropped).

The rule is the usual one (GPT-3's, Brown et al. 2020, appendix C: 13-grams): a conversation is contaminated when
a run of `ngram` words inside one of its turns equals a run of `ngram` words inside one utterance of a reference
file, words as personaloom.text.words gives them (case-folded, punctuation dropped). Utterances shorter than
`ngram` words cannot match: a short reply ("i love dogs too") is common speech, not a copy. The index holds a
64-bit hash per reference n-gram (Persona-Chat's test split: about 100,000).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from personaloom.errors import InputError
from personaloom.io.readers import read_conversations
from personaloom.records import Conversation, Record
from personaloom.text import words

NGRAM = 13


class Contaminated(Record):
    """A conversation that shares the word n-gram `ngram` with `utterance` of the reference file `source`."""

    id: str
    ngram: str
    source: str
    utterance: str


def _grams(tokens: list[str], n: int) -> Iterable[tuple[int, str]]:
    for i in range(len(tokens) - n + 1):
        gram = " ".join(tokens[i: i + n])
        yield int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "little"), gram


def persona_key(sentence: str) -> str:
    return " ".join(words(sentence))


def check_sources(paths: Sequence[str | Path]) -> None:
    """InputError for a reference file that does not exist: said before a run pays for anything."""
    for path in paths:
        if not Path(path).exists():
            raise InputError("no such file or directory (--decontaminate)", path=path)


class References:
    """The n-grams and persona sentences of reference files (read with the readers: InputError names a file that
    cannot be read). `ngram`: words per n-gram (>= 3)."""

    def __init__(self, paths: Sequence[str | Path], ngram: int = NGRAM) -> None:
        if ngram < 3:
            raise ValueError(f"decontamination n-gram of {ngram} words: expected at least 3")
        self.ngram = ngram
        self.sources = [str(p) for p in paths]
        self._grams: dict[int, tuple[int, str]] = {}
        self.personas: set[str] = set()
        self.utterances = 0
        for index, path in enumerate(self.sources):
            for conversation in read_conversations(path):
                self.personas.update(persona_key(p) for p in (*conversation.user1_persona,
                                                             *conversation.user2_persona))
                for text in (t.text for t in conversation.all_turns()):
                    self.utterances += 1
                    for key, _ in _grams(words(text), ngram):
                        self._grams.setdefault(key, (index, text))
        self.personas.discard("")

    def match(self, conversation: Conversation) -> Contaminated | None:
        """The first n-gram of `conversation` found in an utterance of the files, or None."""
        for turn in conversation.all_turns():
            for key, gram in _grams(words(turn.text), self.ngram):
                found = self._grams.get(key)
                if found is not None:
                    return Contaminated(id=conversation.id, ngram=gram, source=self.sources[found[0]],
                                        utterance=found[1])
        return None

    def persona_overlap(self, conversation: Conversation) -> int:
        """How many persona sentences of `conversation` (both speakers) are persona sentences of the files."""
        return sum(persona_key(p) in self.personas for p in (*conversation.user1_persona,
                                                             *conversation.user2_persona))


__all__ = ["NGRAM", "Contaminated", "References", "check_sources"]
