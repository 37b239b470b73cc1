"""A scripted backend for unit tests of prompt building, parsing and control flow.

Replies come from a `responder(request) -> str` callable, or from a list consumed in order (cycling),
or default to echoing the last user message. Every request received is recorded in `requests`.
Never the only proof that a feature works: the same tests run against the real backends too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from personaloom import stagenames as names
from personaloom.backends.base import Backend
from personaloom.chat import ChatRequest, ChatResult, Message, SamplingParams, Usage

Responder = Callable[[ChatRequest], str]


@functools.lru_cache(maxsize=1024)  # system prompts and few-shot turns recur in many requests
def _word_count(text: str) -> int:
    return len(text.split())


class FakeBackend(Backend):
    kind = "fake"

    def __init__(
        self,
        replies: Sequence[str] | Responder | None = None,
        *,
        model: str = "fake-model",
        max_concurrency: int = 16,
        delay_s: float = 0.0,
        n_ctx: int | None = None,
        record: bool = True,
    ) -> None:
        self._model = model
        self.max_concurrency = max_concurrency
        self.delay_s = delay_s
        # A context window in words: longer prompts give an error result, as a real model would.
        self.n_ctx = n_ctx
        # Every request received, for tests; off for `--backend fake` runs (it would hold a whole run's prompts).
        self.record = record
        self.requests: list[ChatRequest] = []
        self._replies = replies
        self._next = 0

    @property
    def model_id(self) -> str:
        return self._model

    def _reply(self, request: ChatRequest) -> str:
        if self._replies is None:
            users = [m.content for m in request.messages if m.role == "user"]
            return users[-1] if users else ""
        if callable(self._replies):
            return self._replies(request)
        if not self._replies:
            return ""
        text = self._replies[self._next % len(self._replies)]
        self._next += 1
        return text

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult] = []
        for request in requests:
            start = time.perf_counter()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.record:
                self.requests.append(request)
            prompt_tokens = sum(_word_count(m.content) for m in request.messages)
            if self.n_ctx is not None and prompt_tokens > self.n_ctx:
                results.append(ChatResult(error=f"prompt of {prompt_tokens} tokens exceeds n_ctx {self.n_ctx}"))
                continue
            texts = [self._reply(request)]
            results.append(
                ChatResult(
                    texts=texts,
                    usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=sum(len(t.split()) for t in texts)),
                    finish_reason="stop",
                    latency_s=time.perf_counter() - start,
                )
            )
        return results


# -- a plausible scripted model, for `--backend fake` demos and pipeline tests ----------------------
# Structured requests get a valid instance of their JSON schema; free-text requests get stage-shaped
# text (questions, "I ..." answers, negations, alternating "User 1/2:" dialogue). Deterministic per request.

_BENIGN = ("no", "faithful", "safe", "non-toxic", "consistent")
_QUESTIONS = (
    "What pets do you have?", "Where did you grow up?", "What do you do for a living?",
    "What is your favourite food?", "What music do you listen to?", "How do you spend your weekends?",
    "What sport do you play?", "Where would you like to travel?", "What are you afraid of?",
    "What did you study?", "What is your dream job?", "Who do you live with?",
)
_SUBJECTS = ("I collect", "I grow", "I repair", "I paint", "I study", "My sister sells", "I teach", "My dad builds",
             "I photograph", "I cook", "I write about", "My neighbour restores")
_OBJECTS = ("old maps", "tomato plants", "vintage radios", "mountain birds", "jazz records", "sourdough bread",
            "wooden boats", "desert cacti", "chess openings", "street murals", "antique clocks", "river stones",
            "paper lanterns", "board games", "folk songs", "electric bikes")
_LINES = (
    "Hi there, how has your week been?", "Pretty busy, but good. I spent most of it outdoors.",
    "That sounds nice. What were you doing outside?", "Mostly gardening, my tomatoes finally came in.",
    "I wish I had the patience for plants. I mostly fix things around the house.",
    "Fixing things is a useful skill. What are you working on now?",
    "An old radio I found at a market. It almost works.", "That is impressive. Do you listen to music on it?",
    "Jazz, mostly. It feels right on an old radio.", "I like that. I should try it with my records sometime.",
    "You have records too? Which ones do you play most?", "Some folk albums my parents left me.",
)
# A later session of --sessions (the generator is told they have talked before).
_LINES_AGAIN = (
    "Hey, good to hear from you again! How did the radio repair go?", "It finally plays! I listened to jazz all night.",
    "I knew you would fix it. My tomatoes are all gone now, sadly.", "Already? Did you make that sauce you mentioned?",
    "I did, three jars of it. I saved one for you.", "That is kind of you. I will bring a record in return.",
    "Deal. Which album will it be?", "One of the folk ones from my parents.", "Perfect, we can play it on your radio.",
    "Let us do that this weekend.", "Saturday works for me.", "Great, see you then!",
)


# --language: a few languages the scripted model "writes" (first meeting, later session).
_LINES_IN = {
    "Russian": (
        (
            "Привет, как прошла твоя неделя?", "Довольно занятая, но хорошая. Я почти всё время был на улице.",
            "Звучит здорово. Что ты делал на улице?", "В основном работал в саду, помидоры наконец созрели.",
            "Мне бы твоё терпение к растениям. Я обычно чиню вещи дома.",
            "Это полезное умение. Над чем ты работаешь сейчас?", "Над старым радио с рынка. Оно почти работает.",
            "Впечатляет. Ты слушаешь на нём музыку?", "В основном джаз. На старом радио он звучит правильно.",
            "Мне это нравится. Надо попробовать с моими пластинками.", "У тебя тоже есть пластинки? Какие ты слушаешь?",
            "Народные альбомы, которые мне оставили родители.",
        ),
        (
            "Рад снова тебя слышать! Как там радио?", "Наконец играет! Я слушал джаз всю ночь.",
            "Я знал, что ты его починишь. А мои помидоры уже закончились.",
            "Уже? Ты сделал тот соус, о котором говорил?",
            "Сделал, целых три банки. Одну оставил тебе.", "Очень мило. Я принесу тебе пластинку в ответ.",
            "Договорились. Какой альбом это будет?", "Один из народных, от моих родителей.",
            "Отлично, поставим его на твоём радио.", "Давай сделаем это в выходные.", "Суббота мне подходит.",
            "Здорово, до встречи!",
        ),
    ),
}
# What a speaker says of themself at the end of a line: in English, in each language of _LINES_IN.
_ASIDES = tuple(f"{subject} {thing}." for subject in _SUBJECTS for thing in _OBJECTS)
_ASIDES_IN = {
    "Russian": (
        "Я люблю крепкий чай.", "Мой брат играет в шахматы.", "Я выращиваю кактусы.", "Я читаю старые карты.",
        "Моя сестра печёт хлеб.", "Я собираю марки.", "Я чиню велосипеды.", "Мой отец строит лодки.",
        "Я рисую акварелью.", "Я пою в хоре.", "Я бегаю по утрам.", "Я учу испанский.", "Мы держим пчёл.",
        "Я фотографирую птиц.", "Я вяжу шарфы.", "Я играю на гитаре.",
    ),
}
# --big-five: the scripted model shows a speaker's level by a mark on their first utterance (the cue phrase
# of prompts/big_five.j2 it was given -> the mark), and its traits judge reads the marks back: a
# consistent model, so that the traits expert's filter can stay on in pipeline tests.
_TRAIT_MARKS = {
    ("openness", "high"): ("curious and imaginative", "🎨"), ("openness", "low"): ("practical and conventional", "🏠"),
    ("conscientiousness", "high"): ("organised and careful", "📅"),
    ("conscientiousness", "low"): ("easygoing and spontaneous", "🌊"),
    ("extraversion", "high"): ("outgoing and energetic", "🎉"), ("extraversion", "low"): ("quiet and reserved", "🤫"),
    ("agreeableness", "high"): ("warm and kind", "🤝"), ("agreeableness", "low"): ("blunt and sceptical", "🙄"),
    ("neuroticism", "high"): ("anxious and moody", "😟"), ("neuroticism", "low"): ("calm and relaxed", "😌"),
}


def _marks(pair_message: str, speaker: int) -> str:
    """The marks of the levels the pair message gives `speaker` ("" without --big-five)."""
    head = f"How User {speaker} comes across"
    if head not in pair_message:
        return ""
    block = pair_message.split(head, 1)[1].split("How User", 1)[0].split("Write their conversation", 1)[0]
    return "".join(mark for cue, mark in _TRAIT_MARKS.values() if cue in block)


def _reading(turns_text: str) -> dict[str, dict[str, str]]:
    """What the scripted traits judge reads: each speaker's levels from the marks on their utterances."""
    reading: dict[str, dict[str, str]] = {"user1": {}, "user2": {}}
    for line in turns_text.splitlines():
        for side, prefix in (("user1", "User 1:"), ("user2", "User 2:")):
            if line.strip().startswith(prefix):
                for (trait, level), (_, mark) in _TRAIT_MARKS.items():
                    if mark in line:
                        reading[side][trait] = level
    return reading


def _schema_instance(schema: dict[str, object], rnd: random.Random) -> object:
    kind = schema.get("type")
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        benign = [v for v in enum if v in _BENIGN]
        return benign[0] if benign else rnd.choice(enum)
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {k: _schema_instance(v if isinstance(v, dict) else {}, rnd) for k, v in props.items()}
    if kind == "array":
        items = schema.get("items")
        items = items if isinstance(items, dict) else {}
        n = schema.get("minItems")
        n = n if isinstance(n, int) else 1
        values = items.get("enum")
        if isinstance(values, list) and len(values) >= n:
            picked = list(values)
            rnd.shuffle(picked)
            return picked[:n]
        return [_schema_instance(items, rnd) for _ in range(n)]
    if kind == "boolean":
        return False
    if kind in ("integer", "number"):
        return 1
    return "It reads naturally and fits both profiles."


_ASPECTS = ("first steps", "costs and budgets", "common mistakes", "a story from last week", "plans for next year",
            "tools and tips")
_SITUATIONS = ("User 1 asks User 2 for advice on {s}.", "User 1 and User 2, two old friends, compare notes on {s}.",
               "User 2 tells User 1, a neighbour, about {s} and they plan to try it together.")
_SCENARIO_LINE = "What their conversation is about: "
_SCENARIO_STOP = {"user", "about", "their", "they", "with", "asks", "tells", "from", "that", "this", "them", "what"}


def _quoted_after(text: str, prefix: str) -> str | None:
    """The JSON string that follows `prefix` on a line of `text` (prompts quote untrusted text), or None."""
    for line in text.splitlines():
        if line.startswith(prefix):
            try:
                value = json.loads(line[len(prefix):])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, str) else None
    return None


def _scenario_words(text: str) -> set[str]:
    return {w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split()
            if len(w) > 3 and w not in _SCENARIO_STOP}


def _follows(prompt: str) -> bool:
    """The scripted scenario judge: most of the scenario's content words occur in the conversation."""
    scenario = _quoted_after(prompt, "Scenario: ") or ""
    wanted = _scenario_words(scenario)
    said = _scenario_words(prompt.split("Conversation:", 1)[-1])
    return bool(wanted) and len(wanted & said) >= len(wanted) / 2


def demo_responder(request: ChatRequest) -> str:
    # Seeded by a 64-bit digest: seeding Random with the prompt string itself turns all of it into one big
    # integer, which cost more than the rest of the reply.
    digest = hashlib.blake2b(f"{request.params.seed}|{request.messages[-1].content}".encode(), digest_size=8)
    rnd = random.Random(int.from_bytes(digest.digest(), "big"))
    if request.json_schema is not None:
        answer = _schema_instance(request.json_schema, rnd)
        if isinstance(answer, dict) and {"user1", "user2"} <= set(answer):  # the traits judge
            for side, levels in _reading(request.messages[-1].content).items():
                if isinstance(answer[side], dict):
                    answer[side].update({t: v for t, v in levels.items() if t in answer[side]})
        if isinstance(answer, dict) and answer.get("verdict") in ("follows", "ignores"):  # the scenario judge
            answer["verdict"] = "follows" if _follows(request.messages[-1].content) else "ignores"
        return json.dumps(answer)
    stage = request.stage
    if stage == names.EXPAND_QUESTIONS:
        return "\n".join(rnd.sample(_QUESTIONS, 4))
    if stage == names.EXPAND_ANSWERS:
        return f"{rnd.choice(_SUBJECTS)} {rnd.choice(_OBJECTS)}."
    if stage == names.EXPAND_DESCRIBE:
        return "\n".join(f"{rnd.choice(_SUBJECTS)} {rnd.choice(_OBJECTS)}." for _ in range(4))
    if stage == names.PROFILES_NEGATION:
        return "I do not " + rnd.choice(_OBJECTS) + "."
    if stage == names.LOCALIZE:
        # Marks the rendering visibly; a real model writes the sentence in the language.
        return f"{json.loads(request.messages[-1].content)} (localized)"
    if stage == names.SESSIONS_MEMORY:
        return f"They talked about {rnd.choice(_OBJECTS)} and {rnd.choice(_OBJECTS)}, and plan to meet again."
    prompt = request.messages[-1].content
    if stage == names.SCENARIOS_SUBTOPICS:
        topic = _quoted_after(prompt, "Topic: ") or "life"
        return "\n".join(f"{i + 1}. {topic}: {aspect}" for i, aspect in enumerate(_ASPECTS))
    if stage == names.SCENARIOS_EXPAND:
        subtopic = _quoted_after(prompt, "Subtopic: ") or "life"
        return "\n".join(f"- {s.format(s=subtopic)}" for s in _SITUATIONS)
    start = rnd.randrange(0, 3)
    again = "talked before" in request.messages[0].content
    pair_message = request.messages[-1].content
    pool = _LINES_AGAIN if again else _LINES
    asides = _ASIDES
    for language, pools in _LINES_IN.items():
        if f"Write their conversation in {language}." in pair_message:
            pool, asides = pools[1] if again else pools[0], _ASIDES_IN.get(language, _ASIDES)
    # 8 to 10 lines (so about two in three are too short for "at least 10"); asked for more than 10, the whole
    # pool (a longer conversation, for recipes such as examples/french_tutoring.yaml).
    asked = re.search(r"Write at least (\d+)", request.messages[0].content)
    n = 8 + rnd.randrange(0, 3)
    if asked and int(asked.group(1)) > 10:
        n = len(pool)
    start = min(start, len(pool) - n)
    lines = list(pool[start : start + n])
    scenario = _quoted_after(pair_message, _SCENARIO_LINE)
    if scenario:  # a model that follows its scenario opens with it
        lines[0] = f"I wanted to ask you about this: {scenario}"
    # Conversations of different pairs differ, as a model's would (personaloom.dedup finds none of them
    # near-duplicates): each line also says something of its speaker ("I grow desert cacti."), in the language
    # of the lines. Its own generator, so that the choices above stay what they were.
    vary = random.Random(int.from_bytes(digest.digest(), "big") ^ 0x5EED)
    lines = [f"{line} {vary.choice(asides)}" for line in lines]
    for i in (0, 1):
        lines[i] = f"{lines[i]} {_marks(pair_message, 1 + i)}".rstrip()
    return "\n".join(f"User {1 + i % 2}: {text}" for i, text in enumerate(lines))


# Opening words of each stage's prompt (prompts/*.j2) -> the stage demo_responder tells apart: a request that
# came over HTTP carries no stage.
_STAGE_BY_OPENING = (
    ("One person said these things", names.EXPAND_QUESTIONS),
    ("Questions to ask a person", names.EXPAND_QUESTIONS),
    ("You are a person who says", names.EXPAND_ANSWERS),
    ("Here is a description of a person", names.EXPAND_DESCRIBE),
    ("Write the opposite of this statement", names.PROFILES_NEGATION),
    ("Subtopics of a topic", names.SCENARIOS_SUBTOPICS),
    ("Scenarios for a chat conversation", names.SCENARIOS_EXPAND),
)


def infer_stage(body: dict[str, Any]) -> str:
    """The stage of a chat-completion body, from its last user message's opening words ("generate" else)."""
    users = [str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user"]
    last = users[-1].lstrip() if users else ""
    return next((stage for opening, stage in _STAGE_BY_OPENING if last.startswith(opening)), names.GENERATE)


def body_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a chat-completion body asks for (response_format json_schema / json_object), or None."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else {}
    if fmt.get("type") == "json_object":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


def demo_http_reply(body: dict[str, Any]) -> str:
    """What `--backend fake` answers to the ChatRequest a chat-completion body was built from (loopback
    servers playing the demo model over HTTP: tests, bench/e2e_scale.py)."""
    seed = body.get("seed")
    request = ChatRequest(
        messages=[Message(role=m["role"], content=str(m.get("content", ""))) for m in body.get("messages", [])],
        params=SamplingParams(seed=int(seed) if seed is not None else None),
        json_schema=body_schema(body),
        metadata={"stage": infer_stage(body)},
    )
    return demo_responder(request)
