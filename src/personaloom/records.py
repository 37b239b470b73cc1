"""Pydantic records shared by every stage, reader and writer (DESIGN.md §3).

These are the JSON Lines shapes other tools rely on; field names must not change. Every record
forbids unknown fields so that a typo in a file is an error, not silently dropped data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Attribute(Record):
    """One persona attribute: a short first-person sentence."""

    id: str
    text: str
    source: Literal["seed", "generated"] = "seed"
    cluster: int | None = None


class Question(Record):
    """A persona question from query induction ("What pets do you have?")."""

    text: str


class Profile(Record):
    """A user profile: a consistent set of attributes (texts, with their attribute ids)."""

    id: str
    attributes: list[str]
    attribute_ids: list[str] = Field(default_factory=list)
    source: str = "generated"


class Pair(Record):
    """Two profiles that will talk to each other."""

    id: str
    user1_persona: list[str]
    user2_persona: list[str]
    user1_profile_id: str | None = None
    user2_profile_id: str | None = None
    similarity: int | None = None
    source: str = "paired"


class Turn(Record):
    speaker: Literal[1, 2]
    text: str


class Conversation(Record):
    """A conversation between two personas.

    `raw` keeps the original text where a reader had one (SPC CSV), so that format defects can be
    re-checked and round trips lose nothing; `defects` names the DESIGN.md §3 defect kinds found in it.
    """

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


EXPERTS = (
    "format",
    "depth",
    "coherency",
    "consistency",
    "diversity",
    "likeability",
    "faithfulness",
    "toxicity",
)
Expert = Literal[
    "format", "depth", "coherency", "consistency", "diversity", "likeability", "faithfulness", "toxicity"
]


class Verdict(Record):
    """One expert's decision about one candidate conversation.

    decision is e.g. "pass"/"reject" (format, faithfulness, toxicity) or "win"/"lose"/"tie" against
    `opponent_id` (quality experts, pairwise), or "rank=<n>" (listwise).
    """

    conversation_id: str
    expert: Expert
    decision: str
    rationale: str = ""
    opponent_id: str | None = None
    pair_id: str | None = None
    iteration: int | None = None


class Failure(Record):
    """A unit of work that produced nothing usable; kept so that it is counted and reported."""

    stage: str
    item_id: str
    reason: str
    detail: str = ""
    raw: str | None = None
    iteration: int | None = None
