"""User profiles: redundancy and inconsistency filters, NLI judges, negation caching, determinism."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import BackendClient

from personaloom.backends.base import ChatRequest
from personaloom.backends.cache import ResponseCache
from personaloom.backends.fake import FakeBackend
from personaloom.config import ProfilesConfig, SamplingConfig
from personaloom.embed import Embedder
from personaloom.errors import ConfigError
from personaloom.executors.local import LLM
from personaloom.records import Attribute
from personaloom.stages import profiles as pr

TEXTS = [
    "i have two dogs.",
    "i've two dogs.",  # redundant with the first (cosine > 0.9)
    "i hate dogs.",  # the fake NLI says it contradicts "i have two dogs."
    "i work as a nurse.",
    "i live in texas.",
    "my favorite food is sushi.",
    "i play the guitar.",
    "my sister is a pilot.",
    "i drive a red truck.",
    "i am vegan.",
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder(cache_path=tmp_path_factory.mktemp("emb") / "embeddings.sqlite")


def _attrs() -> list[Attribute]:
    return [Attribute(id=f"a{i}", text=t, cluster=i % 4) for i, t in enumerate(TEXTS)]


CONTRADICTING = {frozenset({"i have two dogs.", "i hate dogs."})}


def listed(prompt: str) -> tuple[list[str], str]:
    """The numbered statements and the new statement of a consistency.j2 prompt."""
    statements = [json.loads(m.group(1)) for m in re.finditer(r'^\d+\. (".*")$', prompt, re.MULTILINE)]
    candidate = json.loads(prompt.split("New statement: ", 1)[1].splitlines()[0])
    return statements, candidate


def _responder(request: ChatRequest) -> str:
    """Knows that "i hate dogs." and "i have two dogs." contradict: in the paper's pairwise form (negation +
    yes/no) and in the listwise one (the numbers of the statements the new one contradicts)."""
    prompt = request.messages[0].content
    if request.metadata["stage"] == "profiles.negation":
        statement = json.loads(prompt.split("Statement: ", 1)[1].splitlines()[0])
        return f"Opposite: I deny that {statement}"
    if "New statement: " in prompt:
        statements, candidate = listed(prompt)
        found = [i + 1 for i, s in enumerate(statements) if frozenset({s, candidate}) in CONTRADICTING]
        return json.dumps({"contradicts": found})
    contradiction = "hate" in prompt and "two dogs" in prompt and "deny" in prompt
    return json.dumps({"answer": "yes" if contradiction else "no"})


def test_requests_parsing_and_schema() -> None:
    a = Attribute(id="x1", text='I "never" lie.\nUser 2: ok')
    req = pr.Negate(seed=5, sampling=SamplingConfig()).request(a)
    assert req.metadata == {"stage": "profiles.negation", "id": "x1"}
    assert json.dumps('I "never" lie. User 2: ok') in req.messages[0].content
    assert pr.Negate(seed=5, sampling=SamplingConfig()).request(a).params.seed == req.params.seed
    question = pr.Entailment(("x", "y", "not"), "I have a dog.", "I have no dog.")
    nli = pr.AskEntailment(seed=5, sampling=SamplingConfig()).request(question)
    assert nli.json_schema == pr.NLI_SCHEMA and nli.metadata == {"stage": "profiles.nli", "id": "x|not:y"}
    assert pr.parse_yes_no('{"answer": "yes"}') is True
    assert pr.parse_yes_no('Sure: {"answer": "no"}') is False
    assert pr.parse_yes_no("Yes, it does.") is True
    assert pr.parse_yes_no("maybe") is None
    assert pr.parse_negation("Opposite: I do not have any dogs.") == "I do not have any dogs."
    item = pr.Candidate(Attribute(id="c", text="I hate dogs."), (Attribute(id="m1", text="I have a dog."),
                                                               Attribute(id="m2", text="I live in Ohio.")), 1)
    one = pr.JudgeCandidate(seed=5, sampling=SamplingConfig()).request(item)
    assert one.metadata == {"stage": "profiles.nli", "id": "c|m1+m2"} and one.json_schema is not None
    assert listed(one.messages[0].content) == (["I have a dog.", "I hate dogs.", "I live in Ohio."], "I hate dogs.")
    assert one.json_schema["properties"]["contradicts"]["items"]["enum"] == [1, 2, 3]
    assert pr.parse_numbers('{"contradicts": [3, 1, 1]}', 3) == [0, 2]
    assert pr.parse_numbers('{"contradicts": []}', 3) == []
    assert pr.parse_numbers('{"contradicts": [4]}', 3) is None
    assert pr.parse_numbers('{"contradicts": "1"}', 3) is None and pr.parse_numbers("none", 3) is None


@pytest.mark.parametrize("judge", ["llm", "llm-pairwise"])
def test_profiles_reject_redundant_and_inconsistent(embedder: Embedder, tmp_path: Path, judge: str) -> None:
    fake = FakeBackend(_responder)
    cfg = ProfilesConfig(profiles=30, size=4, nli=judge)  # type: ignore[arg-type]
    # Through the executor's client, as in a run: a request already in flight or answered is not sent again.
    llm = LLM(fake, ResponseCache(tmp_path / "cache.sqlite"), progress=False)
    res = asyncio.run(pr.build_profiles(_attrs(), embedder, llm, cfg, SamplingConfig(), seed=0))
    assert len(res.profiles) >= 25
    emb = {t: v for t, v in zip(TEXTS, embedder.encode(TEXTS), strict=True)}
    for p in res.profiles:
        assert len(p.attributes) == 4 == len(set(p.attributes)) == len(p.attribute_ids)
        assert not {"i have two dogs.", "i've two dogs."} <= set(p.attributes)
        assert not {"i have two dogs.", "i hate dogs."} <= set(p.attributes)
        vecs = np.stack([emb[t] for t in p.attributes])
        sims = vecs @ vecs.T
        assert (sims[~np.eye(4, dtype=bool)] <= 0.9).all()
    assert res.rejections.get("redundant", 0) >= 1
    assert res.rejections.get("inconsistent", 0) >= 1
    # every negation requested once per attribute, no matter how many profiles used it
    neg_ids = [r.metadata["id"] for r in fake.requests if r.metadata["stage"] == "profiles.negation"]
    assert len(neg_ids) == len(set(neg_ids))
    judged = [r for r in fake.requests if r.metadata["stage"] == "profiles.nli"]
    if judge == "llm":
        # one call per candidate with a related attribute in the profile, no negations
        assert neg_ids == [] and 0 < len(judged) <= 30 * (4 - 1 + res.rejections["inconsistent"])
    else:
        assert len(neg_ids) > 0 and len(judged) > 4 * len(res.profiles)
    # deterministic despite concurrent building
    again = asyncio.run(
        pr.build_profiles(_attrs(), embedder, BackendClient(FakeBackend(_responder)), cfg, SamplingConfig(), seed=0)
    )
    assert [p.model_dump() for p in again.profiles] == [p.model_dump() for p in res.profiles]


def test_unparseable_nli_rejects_and_none_judge_skips(embedder: Embedder) -> None:
    fake = FakeBackend(lambda r: "I do not." if r.metadata["stage"] == "profiles.negation" else "hmm")
    cfg = ProfilesConfig(profiles=2, size=3, max_tries_factor=2)
    res = asyncio.run(pr.build_profiles(_attrs(), embedder, BackendClient(fake), cfg, SamplingConfig(), seed=0))
    assert res.profiles == [] and res.rejections["nli_failed"] > 0 and res.rejections["incomplete"] == 2
    none = FakeBackend()
    cfg_none = ProfilesConfig(profiles=3, size=3, nli="none")
    res2 = asyncio.run(pr.build_profiles(_attrs(), embedder, BackendClient(none), cfg_none, SamplingConfig(), seed=0))
    assert len(res2.profiles) == 3 and none.requests == []


def test_always_yes_judge_abstains(embedder: Embedder) -> None:
    # A judge that says "yes" to a statement and to its negation gives no evidence either way.
    fake = FakeBackend(lambda r: "I deny it." if r.metadata["stage"] == "profiles.negation" else '{"answer": "yes"}')
    cfg = ProfilesConfig(profiles=3, size=3, nli="llm-pairwise")
    res = asyncio.run(pr.build_profiles(_attrs(), embedder, BackendClient(fake), cfg, SamplingConfig(), seed=0))
    assert len(res.profiles) == 3
    assert res.rejections["nli_abstained"] > 0 and "inconsistent" not in res.rejections


def test_listwise_judge_flagging_the_candidate_itself_abstains(embedder: Embedder) -> None:
    # Flagging every statement includes the candidate's own text, which cannot contradict it: no evidence.
    def flag_all(request: ChatRequest) -> str:
        statements, _ = listed(request.messages[0].content)
        return json.dumps({"contradicts": list(range(1, len(statements) + 1))})

    fake = FakeBackend(flag_all)
    res = asyncio.run(pr.build_profiles(_attrs(), embedder, BackendClient(fake), ProfilesConfig(profiles=3, size=3),
                                        SamplingConfig(), seed=0))
    assert len(res.profiles) == 3 and "inconsistent" not in res.rejections
    assert res.rejections["nli_abstained"] == len(fake.requests) > 0


def test_topic_gate_keeps_every_labelled_contradiction(embedder: Embedder) -> None:
    """The labelled set's 24 contradicting pairs all reach the judge at the default threshold; a candidate with
    no related attribute in the profile costs no call."""
    rows = [json.loads(line) for line in
            (Path(pr.__file__).parents[1] / "calibrate/data/nli_pairs.jsonl").read_text().splitlines()]
    bad = [r for r in rows if r["label"] == "contradiction"]
    assert len(bad) >= 24
    a, b = embedder.encode([r["premise"] for r in bad]), embedder.encode([r["hypothesis"] for r in bad])
    assert ((a * b).sum(axis=1) >= ProfilesConfig().topic_threshold).all()
    unrelated = FakeBackend(_responder)
    cfg = ProfilesConfig(profiles=3, size=3, topic_threshold=1.0)
    res = asyncio.run(pr.build_profiles(_attrs(), embedder, BackendClient(unrelated), cfg, SamplingConfig(), 0))
    assert len(res.profiles) == 3 and unrelated.requests == []


def test_too_few_attributes_is_a_config_error(embedder: Embedder) -> None:
    with pytest.raises(ConfigError, match=r"profiles\.size"):
        asyncio.run(
            pr.build_profiles(
                _attrs()[:2], embedder, BackendClient(FakeBackend()), ProfilesConfig(size=5), SamplingConfig(), 0
            )
        )
    with pytest.raises(ConfigError, match="nli_model"):
        pr.make_judge(ProfilesConfig(nli="cross-encoder"), BackendClient(FakeBackend()), 0, SamplingConfig())


class _FakeCrossEncoder:
    """Stands in for sentence_transformers.CrossEncoder (no NLI model ships in a wheel here)."""

    def __init__(self, path: str) -> None:
        labels = {0: "contradiction", 1: "entailment", 2: "neutral"}
        self.model = type("M", (), {"config": type("C", (), {"id2label": labels})()})()

    def predict(self, pairs: list[tuple[str, str]], **_: Any) -> np.ndarray[Any, Any]:
        return np.array([[0, 5, 0] if "hate" in a else [0, 0, 5] for a, _ in pairs], dtype=np.float32)


def test_cross_encoder_judge(monkeypatch: pytest.MonkeyPatch, embedder: Embedder, tmp_path: Path) -> None:
    import sentence_transformers

    monkeypatch.setattr(sentence_transformers, "CrossEncoder", _FakeCrossEncoder)
    fake = FakeBackend(lambda r: "I do not have dogs.")
    cfg = ProfilesConfig(profiles=6, size=3, nli="cross-encoder", nli_model=str(tmp_path))
    res = asyncio.run(pr.build_profiles(_attrs(), embedder, BackendClient(fake), cfg, SamplingConfig(), seed=2))
    assert len(res.profiles) == 6
    for p in res.profiles:
        # "i hate dogs." entails every negation here, so it can only ever be a profile's first attribute
        assert "i hate dogs." not in p.attributes[1:]
    assert {r.metadata["stage"] for r in fake.requests} == {"profiles.negation"}
