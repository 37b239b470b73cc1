"""personaloom.text and the measures built on it, on hand-written dialogues in Latin, Cyrillic and CJK scripts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personaloom.dialogue import has_slot, parse_dialogue, split_prefix
from personaloom.errors import ConfigError
from personaloom.evaluate.metrics import deterministic_metrics, distinct_n, tokens, utterance_tokens
from personaloom.records import Conversation
from personaloom.stages.critic.format_expert import check_format
from personaloom.text import (
    LANGUAGES,
    identify,
    is_near_duplicate,
    language_name,
    language_share,
    parse_language,
    script_of,
    words,
)

DIALOGUES = {
    "fr": """User 1: Bonjour ! Comment ça va aujourd'hui ?
User 2: Très bien, merci. Je viens de rentrer du marché.
User 1: Qu'est-ce que tu as acheté ?
User 2: Des pêches, du fromage et une baguette bien croustillante.""",
    "es": """User 1: ¡Hola! ¿Dónde vives?
User 2: Vivo en Sevilla con mi familia y dos perros.
User 1: ¡Qué bonito! Yo nunca he estado en Andalucía.
User 2: Tienes que venir en primavera, cuando huele a azahar.""",
    "de": """User 1: Hallo! Was machst du am Wochenende?
User 2: Ich fahre mit dem Fahrrad an den Starnberger See.
User 1: Schön! Ist das weit von München?
User 2: Nein, nur eine Stunde, und danach gibt es Kaffee und Kuchen.""",
    "pt": """User 1: Olá! Você gosta de café?
User 2: Não muito, prefiro chá verde com limão.
User 1: Eu tomo três xícaras por dia, não consigo parar.
User 2: Então você deve dormir pouco!""",
    "vi": """User 1: Chào bạn! Bạn có thích uống cà phê không?
User 2: Có, tôi uống cà phê sữa đá mỗi sáng.
User 1: Tôi thì thích trà hơn.
User 2: Trà sen Hà Nội rất ngon đấy.""",
    "ru": """User 1: Привет! Как прошли выходные?
User 2: Отлично, я ездил на дачу к родителям.
User 1: Здорово! Что вы там делали?
User 2: Собирали яблоки и жарили шашлыки у реки.""",
    "uk": """User 1: Привіт! Як справи?
User 2: Добре, дякую. Я щойно повернувся з роботи.
User 1: Ким ти працюєш?
User 2: Я вчителька історії у школі в Києві.""",
    # A full-width colon, as Chinese models write it.
    "zh": """User 1：你好！你周末做了什么？
User 2：我去爬山了，风景非常漂亮。
User 1：真羡慕你！我一直在家看书。
User 2：看书也很好啊，你在读什么书？""",
    "ja": """User 1: こんにちは！趣味は何ですか？
User 2: 料理が好きです。特にカレーをよく作ります。
User 1: いいですね。私はコーヒーを淹れるのが好きです。
User 2: 今度一緒にカフェに行きましょう。""",
    "ko": """User 1: 안녕하세요! 주말에 뭐 하셨어요?
User 2: 친구들이랑 영화를 봤어요.
User 1: 무슨 영화를 봤어요?
User 2: 한국 공포 영화였는데 정말 무서웠어요.""",
}


@pytest.mark.parametrize("code", sorted(DIALOGUES))
def test_dialogues_parse_cleanly_in_any_script(code: str) -> None:
    raw = DIALOGUES[code]
    parsed = parse_dialogue(raw)
    assert parsed.defects == []
    assert [t.speaker for t in parsed.turns] == [1, 2, 1, 2]
    assert parsed.turns[0].text == re.split("[:：]", raw.split("\n")[0], maxsplit=1)[1].strip()
    assert all(tokens(t.text) for t in parsed.turns)


def test_full_width_prefixes() -> None:
    assert split_prefix("User 1：你好") == (1, "你好")
    assert split_prefix("User ２：こんにちは") == (2, "こんにちは")
    assert split_prefix("**User 2：** 안녕하세요") == (2, "안녕하세요")
    # The full-width colon is a clean line; a full-width digit parses but is not how we render a prefix.
    assert parse_dialogue("User 1：你好\nUser 2：你好！").defects == []
    assert parse_dialogue("User １：你好\nUser ２：你好！").defects == ["nonstandard_labels"]


SLOTS = [
    "Меня зовут [имя].",
    "私の名前は[名前]です。",
    "Me llamo [nombre].",
    "Vivo a {città}.",
    "저는 [이름]입니다",
    "[नाम]",
]


@pytest.mark.parametrize("text", SLOTS)
def test_placeholders_in_any_script(text: str) -> None:
    assert has_slot(text)
    assert "placeholders" in parse_dialogue(f"User 1: {text}\nUser 2: ok").defects


@pytest.mark.parametrize("text", ["Я люблю кошек [2]", "我喜欢猫。", "Un café [ ] s'il vous plaît", "a <3 b"])
def test_no_placeholder(text: str) -> None:
    assert not has_slot(text)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Qu'est-ce que tu as acheté ?", ["qu'est", "ce", "que", "tu", "as", "acheté"]),
        ("¿Dónde está la estación?", ["dónde", "está", "la", "estación"]),
        ("Die Straße ist SCHÖN.", ["die", "strasse", "ist", "schön"]),
        ("Tôi thích uống cà phê sữa đá.", ["tôi", "thích", "uống", "cà", "phê", "sữa", "đá"]),
        ("Привет, как дела? Всё ОК!", ["привет", "как", "дела", "всё", "ок"]),
        ("Я вчителька, а ти?", ["я", "вчителька", "а", "ти"]),
        ("我去爬山了，风景非常漂亮。", ["我", "去", "爬", "山", "了", "风", "景", "非", "常", "漂", "亮"]),
        ("コーヒーが好き！", ["コ", "ー", "ヒ", "ー", "が", "好", "き"]),
        ("한국 공포 영화였는데 정말 무서웠어요.", ["한국", "공포", "영화였는데", "정말", "무서웠어요"]),
        ("I’m 25, don't worry", ["i'm", "25", "don't", "worry"]),
    ],
)
def test_words(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_words_nfc_and_ascii_compatibility() -> None:
    assert words("cafe\u0301") == words("café") == ["café"]
    old = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
    for text in ["I'm   GOOD , thanks !", "rock'n'roll in the 90's", "it's__a_test-case 'quoted' x'1"]:
        assert words(text) == old.findall(text.lower().replace("’", "'"))


def conv(cid: str, texts: list[str]) -> Conversation:
    raw = "\n".join(f"User {1 + i % 2}: {t}" for i, t in enumerate(texts))
    parsed = parse_dialogue(raw)
    return Conversation(id=cid, user1_persona=[], user2_persona=[], turns=parsed.turns, defects=parsed.defects)


@pytest.mark.parametrize("texts", [["Я люблю кошек.", "я люблю собак!"], ["我爱猫。", "我爱狗！"]])
def test_distinct_n_cyrillic_and_chinese(texts: list[str]) -> None:
    # 6 unigrams, 4 distinct; 4 bigrams, 3 distinct ("я люблю" / "我 爱" twice).
    convs = [conv("c", texts)]
    toks = utterance_tokens(convs)
    assert [len(t) for t in toks] == [3, 3]
    assert distinct_n(toks, 1) == pytest.approx(4 / 6)
    assert distinct_n(toks, 2) == pytest.approx(3 / 4)
    m = deterministic_metrics(convs)
    assert m["distinct_1"] == round(4 / 6, 6) and m["distinct_2"] == 0.75
    assert m["vocab_size"] == 4 and m["words"] == 6


IDENTIFY = {
    "en": ["I love hiking with my dog on the weekend.", "What do you do for a living?", "That is so cool!"],
    "fr": [
        "Je suis professeur dans une école primaire.",
        "C'est vraiment génial, merci !",
        "Oui, j'aime beaucoup le café.",
    ],
    "es": ["Me gusta mucho la comida mexicana.", "¿Dónde trabajas?", "Mañana voy a la playa con mis amigos."],
    "de": ["Ich habe zwei Katzen und einen Hund.", "Was machst du am Wochenende?", "Das ist sehr schön!"],
    "pt": ["Eu não gosto de acordar cedo.", "Você tem irmãos?", "Minha mãe faz um pão delicioso."],
    "ru": ["Я работаю врачом, и мне это нравится.", "Что ты любишь делать в свободное время?", "Это очень интересно!"],
    "uk": ["Я працюю лікарем у лікарні.", "Що ти любиш робити у вільний час?", "Це дуже цікаво, дякую!"],
    "zh": ["我是一名医生。", "你周末喜欢做什么？", "我最喜欢的乐队是Coldplay。"],
    "ja": ["私は医者です。", "週末は何をするのが好きですか？", "猫を二匹飼っています。"],
    "ko": ["저는 의사입니다.", "주말에 뭐 하는 걸 좋아하세요?", "고양이 두 마리를 키워요."],
}


@pytest.mark.parametrize("code", sorted(IDENTIFY))
def test_identify(code: str) -> None:
    assert [identify(s) for s in IDENTIFY[code]] == [code] * 3


def test_identify_cannot_tell() -> None:
    assert identify("") is None
    assert identify("123 !!! :)") is None
    assert identify("Hello!") is None  # no function word, no distinctive letter


def test_script_of() -> None:
    assert script_of("Hello") == "Latin"
    assert script_of("Привет, Bob") == "Cyrillic"
    assert script_of("我喜欢猫") == "Han"
    assert script_of("私は猫が好き") == "Kana"  # kanji with any kana is Japanese
    assert script_of("안녕하세요") == "Hangul"
    assert script_of("مرحبا") == "Arabic"
    assert script_of("12 :)") is None
    assert identify("Γεια σου, τι κάνεις;") == "el" and identify("שלום, מה שלומך?") == "he"


@pytest.mark.parametrize(
    "tag,expected",
    [("fr", "fr"), ("pt-br", "pt-BR"), ("ZH-hant", "zh-Hant"), ("es-419", "es-419"), (" en-gb ", "en-GB")],
)
def test_parse_language(tag: str, expected: str) -> None:
    assert parse_language(tag) == expected


@pytest.mark.parametrize("tag", ["", "french!", "f", "pt_BR", "en-", "e1"])
def test_parse_language_rejects(tag: str) -> None:
    with pytest.raises(ConfigError, match=r"--language.*pt-BR"):
        parse_language(tag)


def test_language_table_and_names() -> None:
    required = ["en", "fr", "de", "es", "it", "pt", "nl", "pl", "tr", "sv", "ru", "uk", "el", "ar", "he", "hi", "zh"]
    for code in [*required, "ja", "ko", "vi", "id"]:
        assert LANGUAGES[code].code == code
    assert language_name("fr") == "French" and language_name("fr-CA") == "French (Canada)"
    assert language_name("zh-Hant") == "Chinese (traditional characters)"
    assert LANGUAGES["de"].native_name == "Deutsch"
    assert language_name("xx") == "the language with code xx"


def test_language_share() -> None:
    texts = ["Bonjour, je suis content.", "I am fine and you?", "Hello!", "C'est une bonne idée."]
    share = language_share(texts, "fr-CA")
    assert share == {"target": "fr-CA", "utterances": 4, "in_language": 2, "other": 1, "unknown": 1, "rate": 2 / 3}
    assert language_share(["Hello!"], "fr")["rate"] is None


RU_CLEAN = [
    "Привет! Как прошли выходные?",
    "Отлично, я ездил на дачу к родителям.",
    "Здорово! Что вы там делали?",
    "Собирали яблоки и жарили шашлыки у реки.",
    "Звучит вкусно. А я весь день читал детектив.",
    "Какой? Посоветуй мне что-нибудь интересное.",
]


def test_format_expert_sees_cyrillic_words() -> None:
    clean = conv("ru-clean", RU_CLEAN)
    assert check_format(clean, min_utterances=6).decision == "pass"
    loop = conv("ru-loop", RU_CLEAN[:1] + ["Я люблю читать книги и гулять в парке."] * 5)
    verdict = check_format(loop, min_utterances=6)
    assert verdict.decision == "reject" and verdict.rationale.startswith("repetition")


@pytest.mark.parametrize("code", ["zh", "ja", "ko", "fr", "uk"])
def test_format_expert_passes_clean_dialogues(code: str) -> None:
    parsed = parse_dialogue(DIALOGUES[code])
    c = Conversation(id=code, user1_persona=[], user2_persona=[], turns=parsed.turns)
    assert check_format(c, min_utterances=4).decision == "pass"


@settings(max_examples=500, deadline=None)
@given(
    words=st.frozensets(st.integers(0, 20).map(str), max_size=20),
    earlier=st.lists(st.frozensets(st.integers(0, 20).map(str), max_size=20), max_size=4),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.6, 0.7, 0.9, 1.0]),
)
def test_near_duplicate_size_shortcut_changes_no_answer(
    words: frozenset[str], earlier: list[frozenset[str]], threshold: float
) -> None:
    """Skipping sets of too different sizes is exact: the answer is the plain Jaccard rule's."""
    plain = len(words) >= 5 and any(o and len(words & o) / len(words | o) >= threshold for o in earlier)
    assert is_near_duplicate(words, earlier, threshold) == plain
