"""--sessions with the scripted backend: memory requests, session prompts, the cross-session expert,
the kept conversation's shape, a later session that fails, and the evaluation line."""

from __future__ import annotations

import asyncio
import json

from conftest import BackendClient
from personaloom.backends.base import ChatRequest, ChatResult, Usage
from personaloom.backends.fake import FakeBackend
from personaloom.config import RunConfig, SessionsConfig
from personaloom.evaluate.features import sessions as session_metrics
from personaloom.records import Conversation, Pair, Session, Turn
from personaloom.stages.critic.experts import build_cross_session_request, parse_cross_session
from personaloom.stages.sessions import converse

PAIR = Pair(id="p1", user1_persona=["I have two dogs."], user2_persona=["I bake bread."])
FIRST = (
    "User 1: Hi, I just walked my dogs.\nUser 2: Nice! I baked bread this morning.\nUser 1: What kind?\n"
    "User 2: Sourdough, my favourite.\nUser 1: My dogs would love a slice.\nUser 2: Bring them over sometime."
)
LATER = (
    "User 1: Hello again! The dogs still talk about your bread.\nUser 2: Ha, I made rye this time.\n"
    "User 1: Did it rise well?\nUser 2: Better than the sourdough.\nUser 1: Save me some.\nUser 2: Deal."
)
LAST = (
    "User 1: Hi! I finally tried baking myself.\nUser 2: How did it turn out?\nUser 1: Flat, but tasty.\n"
    "User 2: Flat bread is still bread.\nUser 1: True. Any tips?\nUser 2: Give the dough more time."
)


def responder(contradicts_from: int = 99) -> FakeBackend:
    def answer(req: ChatRequest) -> str:
        rid = str(req.metadata["id"])
        if req.stage == "generate":
            return LAST if "-s3" in rid else LATER if "-s" in rid else FIRST
        if req.stage == "sessions.memory":
            return f"User {rid[-1]} remembers dogs and sourdough."
        if req.stage == "critic.cross_session":
            session = int(rid.split("-s")[1].split("-")[0].split("r")[0])
            verdict = "contradictory" if session >= contradicts_from else "consistent"
            return json.dumps({"verdict": verdict, "rationale": "checked"})
        if req.stage == "critic.faithfulness":
            return json.dumps({"verdict": "faithful", "rationale": ""})
        if req.stage == "critic.toxicity":
            return json.dumps({"label": "safe", "rationale": ""})
        return json.dumps({"better": "A", "rationale": ""})

    return FakeBackend(answer)


def run(fake: FakeBackend, count: int = 3) -> tuple[object, RunConfig]:
    config = RunConfig(sessions=SessionsConfig(count=count, gaps=["two weeks"]))
    client = BackendClient(fake)
    return asyncio.run(converse(PAIR, [], lambda _: client, config, 1)), config


def test_three_sessions_with_memory_and_cross_session_expert() -> None:
    fake = responder()
    out, _ = run(fake)
    conv = out.selected  # type: ignore[attr-defined]
    assert isinstance(conv, Conversation) and conv.sessions is not None
    assert [s.index for s in conv.sessions] == [1, 2, 3]
    assert [s.gap for s in conv.sessions] == [None, "two weeks", "two weeks"]
    assert conv.sessions[0].memory is None
    assert conv.sessions[1].memory == {
        "user1": "User 1 remembers dogs and sourdough.",
        "user2": "User 2 remembers dogs and sourdough.",
    }
    assert conv.turns == conv.sessions[-1].turns and conv.sessions[1].turns[0].text.startswith("Hello again")
    assert conv.raw is not None and conv.raw.startswith("User 1: Hi! I finally") and conv.defects == []
    assert len(conv.all_turns()) == 18 and conv.turns[0].text == "Hi! I finally tried baking myself."
    assert conv.id == "p1-i1-c0" and conv.critic is not None and len(conv.critic.sessions or []) == 3
    ids = {c.id for c in out.candidates}  # type: ignore[attr-defined]
    assert {"p1-i1-c0", "p1-i1-s2-c0", "p1-i1-s3-c2"} <= ids
    cross = [v for v in out.verdicts if v.expert == "cross_session"]  # type: ignore[attr-defined]
    assert len(cross) == 6 and all(v.decision == "pass" for v in cross)
    # the later session's prompt states the gap and both memories; its memory call saw session 1
    later = next(r for r in fake.requests if r.metadata["id"] == "p1-i1-s2-c0")
    assert '"two weeks" have passed' in later.messages[-1].content
    assert "who have talked before" in later.messages[0].content
    first = next(r for r in fake.requests if r.metadata["id"] == "p1-i1-c0")
    assert "who have just met" in first.messages[0].content
    assert "User 2 remembers dogs and sourdough." in later.messages[-1].content
    memory = next(r for r in fake.requests if r.metadata["id"] == "p1-s2-u1")
    assert "sourdough, my favourite." in memory.messages[-1].content.lower()
    assert set(out.tokens) >= {"generate", "critic", "memory"}  # type: ignore[attr-defined]


def test_a_later_session_that_contradicts_is_not_kept() -> None:
    out, _ = run(responder(contradicts_from=3))
    conv = out.selected  # type: ignore[attr-defined]
    assert conv is not None and conv.sessions is not None and len(conv.sessions) == 2
    failure = [f for f in out.failures if f.reason == "session_not_kept"]  # type: ignore[attr-defined]
    assert len(failure) == 1 and "session 3" in failure[0].detail and "in 2 tries" in failure[0].detail
    retried = {c.id for c in out.candidates if "-s3r1-" in c.id}  # type: ignore[attr-defined]
    assert retried == {"p1-i1-s3r1-c0", "p1-i1-s3r1-c1", "p1-i1-s3r1-c2"}


def test_cross_session_request_shows_earlier_sessions() -> None:
    earlier = [Session(index=1, turns=[Turn(speaker=1, text="I moved to Oslo.")])]
    cand = Conversation(id="x-s2", user1_persona=[], user2_persona=[], turns=[Turn(speaker=1, text="Still in Rome!")])
    req = build_cross_session_request(cand, earlier, "one month", RunConfig().sampling, 0)
    user = req.messages[-1].content
    assert user.index("I moved to Oslo.") < user.index("Still in Rome!") and '"one month"' in user
    # older sessions reach the judge through the memories: the prompt shows the last two in full
    many = [Session(index=i, turns=[Turn(speaker=1, text=f"Line of session {i}.")]) for i in range(1, 6)]
    memory = {"user1": "Lives in Oslo.", "user2": "Bakes."}
    req = build_cross_session_request(cand, many, "one month", RunConfig().sampling, 0, memory=memory)
    user = req.messages[-1].content
    assert "session 3." not in user and "session 4." in user and "session 5." in user
    assert '"Lives in Oslo."' in user
    bad = ChatResult(texts=['{"verdict": "contradictory", "rationale": "Oslo vs Rome"}'], usage=Usage())
    assert parse_cross_session(cand, bad).decision == "reject"


def test_evaluation_line() -> None:
    out, _ = run(responder())
    conv = out.selected  # type: ignore[attr-defined]
    judge = BackendClient(FakeBackend(lambda r: json.dumps({"verdict": "consistent", "rationale": ""})))
    m, verdicts = asyncio.run(session_metrics([conv], judge, seed=0))
    assert m is not None
    assert m["sessions_per_conversation"] == {"3": 1} and m["later_sessions"] == 2 and m["with_memory"] == 2
    assert m["utterances_per_session"] == 6.0 and m["gaps"] == {"two weeks": 2}
    assert m["judge"] == {"consistent_rate": 1.0, "consistent": 2, "judged": 2, "abstain": 0}
    assert len(verdicts) == 2


def test_examples_show_their_first_session() -> None:
    from personaloom.config import GenerateConfig
    from personaloom.stages.generator import build_messages

    out, _ = run(responder(), count=2)
    example = out.selected  # type: ignore[attr-defined]
    messages = build_messages(PAIR, [example], GenerateConfig())
    assert messages[2].content.startswith("User 1: Hi, I just walked my dogs.")


def test_memory_loops_are_cut() -> None:
    from personaloom.stages.sessions import parse_memory

    loop = '"I will take you to the mountains. I will take you to the mountains. We like guitars! I will take you'
    got = parse_memory(ChatResult(texts=[loop], usage=Usage()))
    assert got == "I will take you to the mountains. We like guitars! I will take you"
    assert (
        parse_memory(ChatResult(texts=["她喜欢面包。她喜欢面包。他有两只狗。"], usage=Usage()))
        == "她喜欢面包。 他有两只狗。"
    )
    assert parse_memory(ChatResult(texts=["  "], usage=Usage())) is None


def test_a_session_that_retells_an_earlier_one_is_rejected() -> None:
    from personaloom.stages.critic.format_expert import check_format

    first = Conversation(id="a", user1_persona=[], user2_persona=[], turns=[])
    earlier = [Turn(speaker=1 + i % 2, text=line.split(": ", 1)[1]) for i, line in enumerate(FIRST.splitlines())]
    copy = first.model_copy(update={"turns": earlier})
    verdict = check_format(copy, 4, 1, earlier)
    assert verdict.decision == "reject" and verdict.rationale.startswith("repeats_earlier: 6 of 6")
    fresh = [Turn(speaker=1 + i % 2, text=line.split(": ", 1)[1]) for i, line in enumerate(LATER.splitlines())]
    assert check_format(first.model_copy(update={"turns": fresh}), 4, 1, earlier).decision == "pass"
