"""Pydantic records shared by every stage, reader and writer (DESIGN.md §3).

These are the JSON Lines shapes other tools rely on; field names must not change. Every record
forbids unknown fields so that a typo in a file is an error, not silently dropped data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


class Scenario(OptionalFieldsRecord):
    """What a conversation is about (generate.scenarios): `text`, one or two sentences. From
    `generate.scenarios: auto`, the `topic` and `subtopic` it was expanded from; from a JSONL/CSV file, its other
    columns as `fields` (the Generator's templates receive them as `scenario_fields`)."""

    omit_if_none = ("topic", "subtopic", "fields")
    id: str
    text: str
    topic: str | None = None
    subtopic: str | None = None
    fields: dict[str, str] | None = None


class Pair(OptionalFieldsRecord):
    """Two profiles that will talk to each other; `scenario`: what about (assigned when generating)."""

    omit_if_none = ("user1_traits", "user2_traits", "scenario")
    id: str
    user1_persona: list[str]
    user2_persona: list[str]
    user1_profile_id: str | None = None
    user2_profile_id: str | None = None
    similarity: int | None = None
    source: str = "paired"
    user1_traits: Traits | None = None
    user2_traits: Traits | None = None
    scenario: Scenario | None = None


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


class TokenCount(Record):
    """Calls and tokens of a set of LLM results (cached ones included: what an output cost to make)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: TokenCount) -> TokenCount:
        return TokenCount(calls=self.calls + other.calls, prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                          completion_tokens=self.completion_tokens + other.completion_tokens)

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Trim(Record):
    """Where the generator cut a reply (generate.trim): `kept` of `of` utterances, before a defect `at`."""

    kept: int
    of: int
    at: str


class CriticSummary(OptionalFieldsRecord):
    """How the Critic chose a kept conversation (its `critic` field).

    mode: "pairwise" | "listwise"; winner: the kept candidate's id; votes / wins: weighted and unweighted
    quality scores per surviving candidate; filtered: candidate id -> reasons ("format:too_short",
    "faithfulness", ...); abstained: candidate id -> experts that gave no usable verdict; decided_by:
    "score", "wins", "index", "only_survivor" or "none"; weights: quality expert -> weight; experts: every
    expert that judged; tokens: role -> TokenCount (the conversation's cost). Optional: trimmed (the
    winner's generator cut), traits (the traits expert's reading of the winner), sessions (one summary
    per session of a multi-session conversation).
    """

    omit_if_none = ("trimmed", "traits", "sessions")
    mode: str
    winner: str | None = None
    votes: dict[str, float] = Field(default_factory=dict)
    wins: dict[str, float] = Field(default_factory=dict)
    filtered: dict[str, list[str]] = Field(default_factory=dict)
    abstained: dict[str, list[str]] = Field(default_factory=dict)
    decided_by: str = "none"
    weights: dict[str, float] = Field(default_factory=dict)
    experts: list[str] = Field(default_factory=list)
    tokens: dict[str, TokenCount] = Field(default_factory=dict)
    trimmed: Trim | None = None
    traits: dict[str, Any] | None = None
    sessions: list[CriticSummary] | None = None


class Conversation(OptionalFieldsRecord):
    """A conversation between two personas.

    `raw` keeps the original text where a reader had one (SPC CSV), so that format defects can be
    re-checked and round trips lose nothing; `defects` names the DESIGN.md §3 defect kinds found in it.
    Optional (left out of the JSON when unset): `user1_traits`/`user2_traits` (Big Five levels the
    speakers were given), `language` (BCP-47 code of a natively generated conversation), `sessions`
    (every session of a multi-session conversation; `turns` then holds the last one, so readers of the
    plain shape still work), `label_forms` (the speaker-label forms other than "User 1:" its source text
    used, e.g. ["emphasis"]; its turns are canonical whatever the form), `trimmed` (a candidate the
    generator cut before its first defect), `scenario` (what it was generated to be about, generate.scenarios).
    """

    omit_if_none = ("user1_traits", "user2_traits", "language", "sessions", "label_forms", "trimmed", "scenario")
    id: str
    user1_persona: list[str]
    user2_persona: list[str]
    turns: list[Turn]
    iteration: int | None = None
    source: str = "personaloom"
    critic: CriticSummary | None = None
    pair_id: str | None = None
    raw: str | None = None
    defects: list[str] = Field(default_factory=list)
    user1_traits: Traits | None = None
    user2_traits: Traits | None = None
    language: str | None = None
    sessions: list[Session] | None = None
    # The non-canonical speaker-label forms its text used (dialogue.LABEL_FORMS), when it had any.
    label_forms: list[str] | None = None
    trimmed: Trim | None = None
    scenario: str | None = None

    def all_turns(self) -> list[Turn]:
        """Every utterance of every session (just `turns` for a one-session conversation)."""
        if not self.sessions:
            return self.turns
        return [t for s in self.sessions for t in s.turns]


# The paper's experts (DESIGN.md §3), then those of the optional features: traits (--big-five),
# language (--language), cross_session (--sessions), scenario (generate.scenarios).
PaperExpert = Literal[
    "format", "depth", "coherency", "consistency", "diversity", "likeability", "faithfulness", "toxicity"
]
Expert = Literal[PaperExpert, "traits", "language", "cross_session", "scenario"]
EXPERTS: tuple[str, ...] = get_args(PaperExpert)
ALL_EXPERTS: tuple[str, ...] = get_args(Expert)


class Verdict(OptionalFieldsRecord):
    """One expert's decision about one candidate conversation.

    decision is "pass"/"reject" (format, faithfulness, toxicity, traits, language, cross_session, and any
    registered filter expert), "win"/"lose"/"tie" against `opponent_id` (quality experts, pairwise),
    "rank" with `rank` = 1 for the best (listwise), or "abstain" (no usable reply). `reasons`: the
    format expert's rejection codes ("too_short", ...). `reading` is what the traits expert read:
    {"user1": {trait: level}, "user2": {...}, "agreement": x}. `expert` is a built-in expert's name
    (`ALL_EXPERTS`) or a registered one's (stages/critic/registry.py).
    """

    omit_if_none = ("reading", "reasons", "rank")

    conversation_id: str
    expert: str
    decision: str
    rank: int | None = None
    reasons: list[str] | None = None
    rationale: str = ""
    opponent_id: str | None = None
    pair_id: str | None = None
    iteration: int | None = None
    reading: dict[str, Any] | None = None


@dataclass
class SessionContext:
    """A later session of a multi-session conversation being generated: its number (2, 3, ...), the gap
    since the previous one, each speaker's memory of the earlier ones, and the earlier sessions themselves."""

    index: int
    gap: str
    memory: dict[str, str]
    previous: list[Session] = field(default_factory=list)
    # 0, then 1, 2, ... for a session generated again after none of its candidates survived.
    attempt: int = 0

    @property
    def tag(self) -> str:
        return f"s{self.index}" + (f"r{self.attempt}" if self.attempt else "")


class Failure(Record):
    """A unit of work that produced nothing usable; kept so that it is counted and reported."""

    stage: str
    item_id: str
    reason: str
    detail: str = ""
    raw: str | None = None
    iteration: int | None = None
