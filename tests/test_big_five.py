"""--big-five with the scripted backend: trait levels (set, configured, sampled), the generator's
style cues, the traits expert's request, parsing and vote, and the evaluation's agreement table."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from conftest import BackendClient
from personaloom.backends.base import ChatRequest, ChatResult, Usage
from personaloom.backends.fake import FakeBackend
from personaloom.config import BigFiveConfig, GenerateConfig, RunConfig, SamplingConfig, build_config
from personaloom.evaluate.features import big_five
from personaloom.records import TRAITS, Conversation, CriticSummary, Pair, Profile, Turn
from personaloom.stages import generator
from personaloom.stages.critic.experts import build_traits_request, parse_traits
from personaloom.stages.sessions import converse
from personaloom.traits import agreement, assign_to_pair, assign_to_profiles, level, resolve

ON = BigFiveConfig(enabled=True)
HIGH_E = {
    "openness": "high",
    "conscientiousness": "low",
    "extraversion": "high",
    "agreeableness": "high",
    "neuroticism": "low",
}
LOW_E = {
    "openness": "low",
    "conscientiousness": "high",
    "extraversion": "low",
    "agreeableness": "low",
    "neuroticism": "high",
}
PAIR = Pair(
    id="p1",
    user1_persona=["I love parties."],
    user2_persona=["I read at home."],
    user1_traits=HIGH_E,
    user2_traits=LOW_E,
)
DIALOGUE = (
    "User 1: Hi! Great party, right?\nUser 2: It is loud.\nUser 1: I know everyone here!\n"
    "User 2: I should go home soon.\nUser 1: Stay, we are dancing next!\nUser 2: Maybe one song."
)


def conv(**update: object) -> Conversation:
    base = Conversation(
        id="c1",
        user1_persona=["a"],
        user2_persona=["b"],
        turns=[Turn(speaker=1, text="Hi!"), Turn(speaker=2, text="Hello.")],
        user1_traits=HIGH_E,
        user2_traits=LOW_E,
        pair_id="p1",
        iteration=1,
    )
    return base.model_copy(update=update)


def reply(payload: object) -> ChatResult:
    return ChatResult(texts=[json.dumps(payload)], usage=Usage(), finish_reason="stop")


def test_levels_priority_and_determinism() -> None:
    cfg = BigFiveConfig(enabled=True, levels={"openness": 0.9})
    own = {"extraversion": "low"}
    got = resolve("profile-1", own, cfg, seed=3)
    assert list(got) == list(TRAITS)
    assert got["extraversion"] == "low" and got["openness"] == 0.9
    assert resolve("profile-1", own, cfg, seed=3) == got
    # setting one trait does not change the draws of the others
    plain = resolve("profile-1", None, ON, seed=3)
    assert {t: plain[t] for t in ("conscientiousness", "agreeableness", "neuroticism")} == {
        t: got[t] for t in ("conscientiousness", "agreeableness", "neuroticism")
    }
    draws = [resolve(f"p{i}", None, ON, 0)["neuroticism"] for i in range(200)]
    assert 70 < draws.count("high") < 130
    assert level(0.5) == "high" and level(0.49) == "low"


def test_profiles_then_pairs_carry_the_same_levels() -> None:
    profiles = [Profile(id="a", attributes=["x"]), Profile(id="b", attributes=["y"], traits={"openness": "low"})]
    assert assign_to_profiles(profiles, BigFiveConfig(), 0) == profiles  # off: unchanged
    with_levels = assign_to_profiles(profiles, ON, 0)
    assert with_levels[1].traits is not None and with_levels[1].traits["openness"] == "low"
    pair = Pair(id="p", user1_persona=["x"], user2_persona=["y"], user1_profile_id="a", user2_profile_id="b")
    done = assign_to_pair(pair, ON, 0, {p.id: p for p in with_levels})
    assert done.user1_traits == with_levels[0].traits and done.user2_traits == with_levels[1].traits
    # a pair without profiles (hand-written pairs.jsonl) still gets levels, stably
    assert assign_to_pair(pair, ON, 0).user1_traits == assign_to_pair(pair, ON, 0).user1_traits
    # per trait: the pair's own level, then its profile's
    partial = pair.model_copy(update={"user2_traits": {"neuroticism": "high"}})
    merged = assign_to_pair(partial, ON, 0, {p.id: p for p in with_levels}).user2_traits
    assert merged is not None and merged["neuroticism"] == "high" and merged["openness"] == "low"
    # levels set in run.yaml switch the feature on without --big-five
    from_yaml = BigFiveConfig(levels={"extraversion": "low"})
    assert from_yaml.active and assign_to_profiles(profiles, from_yaml, 0)[0].traits["extraversion"] == "low"  # type: ignore[index]


def test_bad_levels_are_config_errors(tmp_path: object) -> None:
    with pytest.raises(ValidationError):
        Profile(id="a", attributes=[], traits={"opennes": "high"})
    with pytest.raises(ValidationError):
        Profile(id="a", attributes=[], traits={"openness": 1.5})
    from personaloom.errors import ConfigError

    with pytest.raises(ConfigError, match=r"big_five\.levels"):
        build_config(None, ["big_five.levels.openness=medium"])


def test_generator_shows_traits_without_naming_them() -> None:
    reqs = generator.build_requests(PAIR, [], GenerateConfig(candidates=1), SamplingConfig(), 0, 1)
    target = reqs[0].messages[-1].content
    assert "outgoing and energetic" in target and "quiet and reserved" in target
    assert not any(t in target.lower() for t in TRAITS)
    parsed = generator.parse_candidate(PAIR, DIALOGUE, 1, 0)
    assert isinstance(parsed, Conversation) and parsed.user1_traits == HIGH_E and parsed.user2_traits == LOW_E


def test_traits_expert_reads_blind_and_scores_agreement() -> None:
    req = build_traits_request(conv(), SamplingConfig(), 0)
    system, user = (m.content for m in req.messages)
    assert "openness" in system and "Hi!" in user
    assert "high" not in user and "low" not in user  # the levels are not shown to the judge
    assert req.json_schema is not None and set(req.json_schema["properties"]["user1"]["properties"]) == set(TRAITS)
    exact = parse_traits(conv(), reply({"user1": HIGH_E, "user2": LOW_E, "rationale": "ok"}), 0.6)
    assert exact.decision == "pass" and exact.reading is not None and exact.reading["agreement"] == 1.0
    flipped = parse_traits(conv(), reply({"user1": LOW_E, "user2": HIGH_E, "rationale": "no"}), 0.6)
    assert flipped.decision == "reject" and flipped.rationale.startswith("0 of 10")
    half = {**HIGH_E, "openness": "low", "extraversion": "low"}
    partial = parse_traits(conv(), reply({"user1": half, "user2": LOW_E, "rationale": ""}), 0.8)
    assert partial.decision == "pass" and partial.reading is not None and partial.reading["agreement"] == 0.8
    broken = parse_traits(conv(), ChatResult(texts=["I think user 1 is outgoing"], usage=Usage()), 0.6)
    assert broken.decision == "abstain"
    cut = json.dumps({"user1": HIGH_E, "user2": LOW_E, "rationale": "User 1 is very outgoing and"})[:-20]
    salvaged = parse_traits(conv(), ChatResult(texts=[cut], usage=Usage(), finish_reason="length"), 0.6)
    assert salvaged.decision == "pass" and salvaged.reading is not None and salvaged.reading["agreement"] == 1.0
    assert agreement({"user1": HIGH_E}, {"user1": {"openness": "high", "extraversion": "low"}}) == {
        "openness": (1, 1),
        "extraversion": (0, 1),
    }


def _responder(traits_reply: dict[str, object]) -> object:
    def answer(req: ChatRequest) -> str:
        if req.stage == "generate":
            return DIALOGUE
        if req.stage == "critic.traits":
            return json.dumps(traits_reply)
        if req.stage == "critic.faithfulness":
            return json.dumps({"verdict": "faithful", "rationale": ""})
        if req.stage == "critic.toxicity":
            return json.dumps({"label": "safe", "rationale": ""})
        return json.dumps({"better": "A", "rationale": ""})

    return answer


@pytest.mark.parametrize(
    ("reading", "kept"), [({"user1": HIGH_E, "user2": LOW_E}, True), ({"user1": LOW_E, "user2": HIGH_E}, False)]
)
def test_traits_expert_filters_in_the_critic(reading: dict[str, object], kept: bool) -> None:
    fake = FakeBackend(_responder({**reading, "rationale": "r"}))  # type: ignore[arg-type]
    client = BackendClient(fake)
    out = asyncio.run(converse(PAIR, [], lambda _: client, RunConfig(), 1))
    traits = [v for v in out.verdicts if v.expert == "traits"]
    assert len(traits) == len(out.candidates) == 3
    assert "traits" in out.summary.experts
    assert (out.selected is not None) == kept
    if out.selected is not None:
        assert out.selected.critic is not None and out.selected.critic.traits["agreement"] == 1.0
    else:
        assert all(r == ["traits"] for r in out.summary.filtered.values())


def test_evaluation_agreement_from_critic_and_judge() -> None:
    reading = {"user1": HIGH_E, "user2": {**LOW_E, "neuroticism": "low"}, "agreement": 0.9}
    convs = [conv(id=f"c{i}", critic=CriticSummary(mode="pairwise", traits=reading)) for i in range(3)]
    judge = BackendClient(FakeBackend(lambda r: json.dumps({"user1": HIGH_E, "user2": HIGH_E, "rationale": ""})))
    m, verdicts = asyncio.run(big_five(convs, judge, seed=0, sample=convs[:2]))
    assert m is not None and m["conversations"] == 3
    assert m["critic"]["traits"]["neuroticism"] == {"agreement": 0.5, "matches": 3, "judged": 6}
    assert m["critic"]["overall"] == 0.9
    assert m["judge"]["readings"] == 2 and len(verdicts) == 2
    assert m["judge"]["traits"]["openness"]["agreement"] == 0.5
    assert asyncio.run(big_five([conv(user1_traits=None, user2_traits=None)], None, 0)) == (None, [])
