"""--language with the scripted backend: the language tag, the generator's and experts' prompts,
attributes rendered in the language, the few-shot pool, and the evaluation line. (Tokenisation,
parsing and language identification on hand-written samples: tests/test_text.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import BackendClient
from personaloom.backends.base import ChatRequest, ChatResult, Usage
from personaloom.backends.fake import FakeBackend
from personaloom.config import GenerateConfig, RunConfig, SamplingConfig, build_config
from personaloom.errors import ConfigError
from personaloom.evaluate.features import languages
from personaloom.records import Conversation, Pair, Turn
from personaloom.stages import generator
from personaloom.stages.critic.experts import build_faithfulness_request, build_toxicity_request
from personaloom.stages.iteration import next_pool
from personaloom.stages.localize import localize_pair, parse_reply

PAIR = Pair(id="p1", user1_persona=["I have two dogs.", "I love jazz."], user2_persona=["I love jazz.", "I bake."])


def test_language_tags() -> None:
    assert build_config(None, [], {"language": "pt-br"}).language == "pt-BR"
    assert build_config(None, []).language is None
    with pytest.raises(ConfigError, match="language"):
        build_config(None, [], {"language": "français"})


def test_generator_prompt_asks_for_the_language() -> None:
    cfg, sampling = GenerateConfig(candidates=1), SamplingConfig()
    plain = generator.build_requests(PAIR, [], cfg, sampling, 0, 1)[0].messages
    english = generator.build_requests(PAIR, [], cfg, sampling, 0, 1, "en-GB")[0].messages
    assert plain == english  # English keeps the paper's prompts (and their cache entries)
    french = generator.build_requests(PAIR, [], cfg, sampling, 0, 1, "fr")[0].messages
    assert "Write every utterance in French" in french[0].content
    assert french[-1].content.endswith("Write their conversation in French.")
    parsed = generator.parse_candidate(PAIR, "User 1：Salut !\nUser 2: Bonjour, ça va ?", 1, 0, language="fr")
    assert isinstance(parsed, Conversation) and parsed.language == "fr" and parsed.turns[0].text == "Salut !"


def test_filter_experts_are_told_the_language() -> None:
    conv = Conversation(
        id="c",
        user1_persona=["У меня две собаки."],
        user2_persona=["Я пеку хлеб."],
        turns=[Turn(speaker=1, text="Привет!")],
        language="ru",
    )
    faith = build_faithfulness_request(conv, SamplingConfig(), 0).messages[0].content
    assert "may be in Russian, English or another language" in faith
    assert "Russian" in build_toxicity_request(conv, SamplingConfig(), 0).messages[0].content
    english = build_faithfulness_request(conv.model_copy(update={"language": None}), SamplingConfig(), 0)
    assert "Russian" not in english.messages[0].content


def _result(text: str) -> ChatResult:
    return ChatResult(texts=[text], usage=Usage(), finish_reason="stop")


def test_parse_localized_attribute() -> None:
    dogs = "I have two dogs."
    assert parse_reply(dogs, _result("J'ai deux chiens."), "fr") == "J'ai deux chiens."
    assert parse_reply(dogs, _result('French: "J\'ai deux chiens."\nNote: literal'), "fr") == "J'ai deux chiens."
    assert parse_reply(dogs, _result("Français : J'ai deux chiens."), "fr") == "J'ai deux chiens."
    assert parse_reply(dogs, _result("Here is the translation:\nJ'aime les chats."), "fr") == "J'aime les chats."
    assert parse_reply(dogs, _result("Translation: Tengo dos perros."), "es") == "Tengo dos perros."
    # a colon inside the sentence is not a label
    assert parse_reply(dogs, _result("Tengo dos perros: Max y Rex."), "es") == "Tengo dos perros: Max y Rex."
    assert parse_reply(dogs, _result("Mes passe-temps : lire et courir."), "fr") == "Mes passe-temps : lire et courir."
    assert parse_reply(dogs, _result("「犬を二匹飼っています。」"), "ja") == "犬を二匹飼っています。"
    assert parse_reply(dogs, _result("   \n"), "fr") is None
    assert parse_reply("I bake.", _result("x" * 200), "fr") is None
    assert parse_reply("I bake.", ChatResult(error="timeout"), "fr") is None


def test_localize_pair_once_per_attribute() -> None:
    def answer(req: ChatRequest) -> str:
        text = json.loads(req.messages[-1].content)
        return "" if text == "I bake." else f"[ru] {text}".replace("[ru] ", "Русский: ")

    fake = FakeBackend(answer)
    config = RunConfig(language="ru")
    pair, run = asyncio.run(localize_pair(PAIR, BackendClient(fake), config, 1))
    failures = run.failures
    assert len(fake.requests) == 3 == len(run.results)  # "I love jazz." is asked once
    assert "Russian" in fake.requests[0].messages[0].content
    assert pair.user1_persona == ["I have two dogs.", "I love jazz."]  # label stripped
    assert pair.user2_persona[1] == "I bake." and len(failures) == 1 and "kept as written" in failures[0].detail
    same, nothing = asyncio.run(localize_pair(PAIR, BackendClient(fake), RunConfig(language="en"), 1))
    assert same == PAIR and nothing.failures == [] and nothing.results == []


def test_in_language_winners_replace_the_seed_examples() -> None:
    seeds = [Conversation(id=f"s{i}", user1_persona=[], user2_persona=[], turns=[]) for i in range(3)]
    won = [Conversation(id="w1", user1_persona=[], user2_persona=[], turns=[], language="de")]
    assert next_pool(seeds, won, "de") == won
    assert next_pool(seeds, [], "de") == seeds  # nothing kept yet: keep the seeds
    assert next_pool(seeds, won, None) == [*seeds, *won]
    assert next_pool(seeds, won, "en-US") == [*seeds, *won]


def test_evaluation_line() -> None:
    turns = [
        Turn(speaker=1, text="Привет! Как у тебя дела сегодня?"),
        Turn(speaker=2, text="I think that it is a good day for the dogs."),
    ]
    convs = [
        Conversation(
            id="c",
            user1_persona=["Я люблю собак и кошек."],
            user2_persona=["Я пеку хлеб каждый день."],
            turns=turns,
            language="ru",
        ),
        Conversation(id="d", user1_persona=[], user2_persona=[], turns=turns),
    ]
    m = languages(convs)
    assert m is not None and m["conversations"] == 1
    ru = m["by_language"]["ru"]
    assert ru["utterances"]["in_language"] == 1 and ru["utterances"]["other"] == 1
    assert ru["attributes"]["rate"] == 1.0
    assert languages(convs[1:]) is None


def test_language_expert_rejects_replies_in_another_language() -> None:
    from personaloom.stages.critic.language_expert import check_language

    def conv(*texts: str) -> Conversation:
        turns = [Turn(speaker=1 + i % 2, text=t) for i, t in enumerate(texts)]
        return Conversation(id="c", user1_persona=[], user2_persona=[], turns=turns, language="fr")

    french = conv("Salut ! Tu fais quoi ce week-end ?", "Je vais au marché avec ma sœur.", "Ok !")
    english = conv("Hi! What are you doing this weekend?", "I am going to the market with my sister.", "Ok!")
    assert check_language(french, "fr", 0.6).decision == "pass"
    verdict = check_language(english, "fr", 0.6)
    assert verdict.decision == "reject" and verdict.rationale.startswith("0 of 2 identifiable utterances in fr")
    assert check_language(conv("Ok !", "Oui."), "fr", 0.6).decision == "pass"  # nothing to tell: not rejected

    from personaloom.stages.round import generate_and_critique

    def answer(req: ChatRequest) -> str:
        if req.stage == "generate":
            return (
                "User 1: Hi! What are you doing this weekend?\nUser 2: I am going to the market with my sister.\n"
                "User 1: That sounds like fun. What do you buy there?\nUser 2: Mostly fresh bread and some cheese.\n"
                "User 1: I love the bakery near my house.\nUser 2: Which one is your favourite?"
            )
        return json.dumps({"verdict": "faithful", "label": "safe", "better": "A", "rationale": ""})

    client = BackendClient(FakeBackend(answer))
    out = asyncio.run(generate_and_critique(PAIR, [], lambda _: client, RunConfig(language="fr"), 1))
    assert out.selected is None and out.summary.experts[:2] == ["format", "language"]
    assert {v.expert for v in out.verdicts} == {"format", "language"}  # no LLM judge saw them


def test_dataset_card_names_the_language(tmp_path: object) -> None:
    from personaloom.io.card import dataset_card

    ja = Conversation(
        id="c", user1_persona=[], user2_persona=[], turns=[Turn(speaker=1, text="こんにちは")], language="ja"
    )
    assert "language:\n- ja\n" in dataset_card([ja], title="t", sources=[])
    assert "language:\n- en\n" in dataset_card([ja.model_copy(update={"language": None})], title="t", sources=[])
