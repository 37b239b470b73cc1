"""Pydantic records shared by every stage, reader and writer (DESIGN.md §3).

These are the JSON Lines shapes other tools rely on; field names must not change. Every record
forbids unknown fields so that a typo in a file is an error, not silently dropped data.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializerFunctionWrapHandler,
    model_serializer,
)

# Big Five traits, in the usual OCEAN order. A level is "high", "low" or a score in [0, 1].
TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")


def _trait_level(value: Any) -> str | float:
    if value in ("high", "low"):
        return str(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise ValueError(f"a trait level is 'high', 'low' or a score from 0 to 1, not {value!r}")


TraitLevel = Annotated[Literal["high", "low"] | float, PlainValidator(_trait_level)]


def _known_traits(value: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(value) - set(TRAITS))
    if unknown:
        raise ValueError(f"unknown trait(s) {unknown}; known: {list(TRAITS)}")
    return value


Traits = Annotated[dict[str, TraitLevel], AfterValidator(_known_traits)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptionalFieldsRecord(Record):
    """A record whose optional extension fields (`omit_if_none`) are left out of its JSON when unset,
    so that files of runs that do not use a feature look exactly as before it existed."""

    omit_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.omit_if_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Attribute(Record):
    """One persona attribute: a short first-person sentence."""

    id: str
    text: str
    source: Literal["seed", "generated"] = "seed"
    cluster: int | None = None


class Question(Record):
    """A persona question from query induction ("What pets do you have?")."""

    text: str


class Profile(OptionalFieldsRecord):
    """A user profile: a consistent set of attributes (texts, with their attribute ids), and with
    --big-five a level for each Big Five trait (set by the user in profiles.jsonl, or sampled)."""

    omit_if_none = ("traits",)
    id: str
    attributes: list[str]
    attribute_ids: list[str] = Field(default_factory=list)
    source: str = "generated"
    traits: Traits | None = None


class Pair(OptionalFieldsRecord):
    """Two profiles that will talk to each other."""

    omit_if_none = ("user1_traits", "user2_traits")
    id: str
    user1_persona: list[str]
    user2_persona: list[str]
    user1_profile_id: str | None = None
    user2_profile_id: str | None = None
    similarity: int | None = None
    source: str = "paired"
    user1_traits: Traits | None = None
    user2_traits: Traits | None = None


class Turn(Record):
    speaker: Literal[1, 2]
    text: str


class Session(Record):
    """One session of a multi-session conversation: `gap` is the time since the previous session
    (None for the first), `memory` what each speaker remembered of the earlier sessions
    ({"user1": ..., "user2": ...}; None for the first)."""

    index: int
    gap: str | None = None
    memory: dict[str, str] | None = None
    turns: list[Turn]


class Conversation(OptionalFieldsRecord):
    """A conversation between two personas.

    `raw` keeps the original text where a reader had one (SPC CSV), so that format defects can be
    re-checked and round trips lose nothing; `defects` names the DESIGN.md §3 defect kinds found in it.
    Optional (left out of the JSON when unset): `user1_traits`/`user2_traits` (Big Five levels the
    speakers were given), `language` (BCP-47 code of a natively generated conversation), `sessions`
    (every session of a multi-session conversation; `turns` then holds the last one, so readers of the
    plain shape still work), `label_forms` (the speaker-label forms other than "User 1:" its source text
    used, e.g. ["emphasis"]; its turns are canonical whatever the form).
    """

    omit_if_none = ("user1_traits", "user2_traits", "language", "sessions", "label_forms")
    id: str
    user1_persona: list[str]
    user2_persona: list[str]
    turns: list[Turn]
    iteration: int | None = None
    source: str = "personaloom"
    critic: dict[str, Any] | None = None
    pair_id: str | None = None
    raw: str | None = None
    defects: list[str] = Field(default_factory=list)
    user1_traits: Traits | None = None
    user2_traits: Traits | None = None
    language: str | None = None
    sessions: list[Session] | None = None
    # The non-canonical speaker-label forms its text used (dialogue.LABEL_FORMS), when it had any.
    label_forms: list[str] | None = None

    def all_turns(self) -> list[Turn]:
        """Every utterance of every session (just `turns` for a one-session conversation)."""
        if not self.sessions:
            return self.turns
        return [t for s in self.sessions for t in s.turns]


# The paper's experts (DESIGN.md §3), then those of the optional features: traits (--big-five),
# language (--language), cross_session (--sessions).
PaperExpert = Literal[
    "format", "depth", "coherency", "consistency", "diversity", "likeability", "faithfulness", "toxicity"
]
Expert = Literal[PaperExpert, "traits", "language", "cross_session"]
EXPERTS: tuple[str, ...] = get_args(PaperExpert)
ALL_EXPERTS: tuple[str, ...] = get_args(Expert)


class Verdict(OptionalFieldsRecord):
    """One expert's decision about one candidate conversation.

    decision is e.g. "pass"/"reject" (format, faithfulness, toxicity, traits, language, cross_session) or
    "win"/"lose"/"tie" against `opponent_id` (quality experts, pairwise), or "rank=<n>" (listwise).
    `reading` is what the traits expert read: {"user1": {trait: level}, "user2": {...}, "agreement": x}.
    """

    omit_if_none = ("reading",)

    conversation_id: str
    expert: Expert
    decision: str
    rationale: str = ""
    opponent_id: str | None = None
    pair_id: str | None = None
    iteration: int | None = None
    reading: dict[str, Any] | None = None


class Failure(Record):
    """A unit of work that produced nothing usable; kept so that it is counted and reported."""

    stage: str
    item_id: str
    reason: str
    detail: str = ""
    raw: str | None = None
    iteration: int | None = None
