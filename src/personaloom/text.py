"""Script-independent text measures: word tokens, writing script, language tags and a language guess.

In: plain text (an utterance, a persona attribute, a `--language` tag). Out:
- `words(text)`: case-folded word tokens in any script (one token per Han / kana character, since CJK
  writes no spaces); for ASCII English exactly the tokens of the former `[a-z0-9]+(?:'[a-z]+)?`.
- `script_of(text)`: the dominant writing script of the letters ("Latin", "Cyrillic", "Han", "Kana", ...).
- `parse_language(tag)`: a validated, normalised BCP-47-style tag ("pt-br" -> "pt-BR"), or ConfigError.
- `language_name(tag)`: the English name of a tag's language ("fr-CA" -> "French").
- `identify(text)`: a best-guess primary language code of one utterance, or None when it cannot tell:
  by script, then (Latin, Cyrillic) by frequent function words and distinctive letters.
- `language_share(utterances, tag)`: how many utterances are identified as the target language.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import regex

from personaloom.errors import ConfigError

# One token per Han / Hiragana / Katakana character (the prolonged-sound mark "ー" too, so it never joins a
# Latin run). Every other script gives maximal runs of letters, digits and marks, plus an apostrophe part
# ("don't", "it's"). Scripts written without spaces other than CJK (Thai, Lao, Khmer, ...) therefore stay
# long runs: a clause, not a word, per token.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\u30fc\uff70"
_LETTERS = rf"[[\p{{L}}\p{{M}}]--[{_CJK}]]"
_TOKEN = regex.compile(rf"(?V1)[{_CJK}]|[[\p{{L}}\p{{N}}\p{{M}}]--[{_CJK}]]+(?:'{_LETTERS}+)?")


def words(text: str) -> list[str]:
    """Case-folded word tokens of `text` in any script; punctuation and spacing are ignored."""
    return list(_tokens(text))


# Memoised: a candidate's utterances are tokenised by the Generator's trim, the format expert's checks and
# quoting, 8 times each (a tenth of a run's own CPU before). 16k entries hold the pairs in flight.
@functools.lru_cache(maxsize=16384)
def _tokens(text: str) -> tuple[str, ...]:
    normal = unicodedata.normalize("NFC", text).replace("’", "'").casefold()
    return tuple(str(t) for t in _TOKEN.findall(normal))


# Near-duplicates: an utterance of >= 5 distinct words whose word set overlaps an earlier one's by this
# Jaccard similarity (the format expert's loop check and the generator's trim use it).
NEAR_DUPLICATE = 0.6


@functools.lru_cache(maxsize=16384)
def word_set(text: str) -> frozenset[str]:
    return frozenset(_tokens(text))


def is_near_duplicate(words: frozenset[str], earlier: list[frozenset[str]], threshold: float = NEAR_DUPLICATE) -> bool:
    """Whether `words` (>= 5 of them) overlaps any earlier word set by Jaccard >= threshold."""
    n = len(words)
    if n < 5:
        return False
    # Jaccard <= min(n, m) / max(n, m) (also in floating point: division rounds monotonically), so sets of too
    # different sizes are skipped before any set operation.
    return any(
        o and min(n, len(o)) / max(n, len(o)) >= threshold and len(words & o) / len(words | o) >= threshold
        for o in earlier
    )


_SCRIPTS = (
    "Latin",
    "Cyrillic",
    "Greek",
    "Armenian",
    "Georgian",
    "Arabic",
    "Hebrew",
    "Devanagari",
    "Bengali",
    "Tamil",
    "Thai",
    "Hangul",
    "Han",
)
SCRIPTS = (*_SCRIPTS, "Kana", "Other")
_SCRIPT = regex.compile(
    "|".join(rf"(?P<{name}>\p{{{name}}})" for name in _SCRIPTS)
    + r"|(?P<Kana>[\p{Hiragana}\p{Katakana}])|(?P<Other>\p{L})"
)
# A Han, kana or Hangul character carries about a syllable or a word, a Latin letter a fraction of one:
# without a weight, a brand name ("我喜欢Coldplay") would outvote the Chinese around it.
_WEIGHT = {"Han": 2, "Kana": 2, "Hangul": 2}


def script_of(text: str) -> str | None:
    """The dominant script among the letters (one of SCRIPTS), or None when there is no letter.

    Japanese mixes kanji and kana, so any kana makes the Han characters count as "Kana".
    """
    counts: dict[str, int] = {}
    for m in _SCRIPT.finditer(text):
        name = str(m.lastgroup)
        counts[name] = counts.get(name, 0) + _WEIGHT.get(name, 1)
    if "Kana" in counts:
        counts["Kana"] += counts.pop("Han", 0)
    if not counts:
        return None
    return max(counts, key=lambda name: counts[name])


@dataclass(frozen=True)
class Language:
    code: str
    name: str  # in English
    native_name: str
    script: str  # as script_of returns it; Japanese is "Kana" (kana with kanji)
    stopwords: frozenset[str]  # case-folded; "l'" stands for any elision "l'..."


# (code, name, native name, script, frequent function words). Languages with a script of their own are
# identified by the script alone and list none.
_TABLE = (
    ("en", "English", "English", "Latin",
     "the a an and or but of to in on at for with is are was were be been i you he she it we they my your me "
     "not no do don't have has this that what so just like yes thanks"),
    ("fr", "French", "français", "Latin",
     "le la les un une des de du et ou mais est sont je tu il elle nous vous ils elles ne pas que qui dans pour "
     "sur avec au aux ce cette mon ma mes c'est j'ai suis très aussi oui merci bonjour bien ça aime "
     "l' d' j' qu' n' c'"),
    ("de", "German", "Deutsch", "Latin",
     "der die das den dem ein eine einen und oder aber ist sind ich du er sie es wir ihr nicht kein keine mit "
     "von zu im auf für dass auch sehr mein meine habe bin was wie ja danke hallo gut"),
    ("es", "Spanish", "español", "Latin",
     "el la los las un una unos y o pero es son está estoy yo tú él ella nosotros no que de del en con por "
     "para mi mis me muy también qué cómo al lo se sí gracias hola bien gusta"),
    ("it", "Italian", "italiano", "Latin",
     "il lo la i gli le un una uno e o ma è sono io tu lui lei noi non che di del della in con per mi mio mia "
     "molto anche ho ha cosa come sì grazie ciao bene l' un' dell'"),
    ("pt", "Portuguese", "português", "Latin",
     "o a os as um uma e ou mas é são eu você ele ela nós não que de do da dos das em no na com por para meu "
     "minha muito também tenho isso sim obrigado obrigada olá bem gosto"),
    ("nl", "Dutch", "Nederlands", "Latin",
     "de het een en of maar is zijn ik jij je hij zij ze wij we niet geen dat die van in op met voor ook heel "
     "mijn heb wat hoe er ja dank hallo goed"),
    ("pl", "Polish", "polski", "Latin",
     "i w na z do nie to jest są ja ty on ona my się że co jak ale lub o od po mój moja bardzo też tak mam dla "
     "czy dziękuję cześć dobrze"),
    ("tr", "Turkish", "Türkçe", "Latin",
     "ve bir bu şu o ben sen biz siz onlar değil ne da de mi mı için ile çok ama var yok gibi daha benim senin "
     "evet hayır merhaba teşekkürler"),
    ("sv", "Swedish", "svenska", "Latin",
     "och att det som en ett i på är jag du han hon vi de inte med för till av den har var min mitt mycket "
     "också vad hur så ja tack hej bra"),
    ("vi", "Vietnamese", "Tiếng Việt", "Latin",
     "tôi bạn là của và không có được người này những một các cho với rất cũng đã đang sẽ anh chị em thì mà"),
    ("id", "Indonesian", "Bahasa Indonesia", "Latin",
     "dan yang di ke dari ini itu saya aku kamu dia kami kita tidak bukan ada dengan untuk juga sangat apa "
     "bagaimana sudah akan bisa"),
    ("ru", "Russian", "русский", "Cyrillic",
     "и в не на я ты он она мы вы они что это как но да нет с у по из за к от так мне меня мой моя тоже очень "
     "быть есть был было привет спасибо"),
    ("uk", "Ukrainian", "українська", "Cyrillic",
     "і в у не на я ти він вона ми ви вони що це як але так ні з до від за мене мій моя теж дуже бути є був "
     "було та й привіт дякую"),
    ("el", "Greek", "Ελληνικά", "Greek", ""),
    ("ar", "Arabic", "العربية", "Arabic", ""),
    ("he", "Hebrew", "עברית", "Hebrew", ""),
    ("hi", "Hindi", "हिन्दी", "Devanagari", ""),
    ("th", "Thai", "ไทย", "Thai", ""),
    ("zh", "Chinese", "中文", "Han", ""),
    ("ja", "Japanese", "日本語", "Kana", ""),
    ("ko", "Korean", "한국어", "Hangul", ""),
)  # fmt: skip

LANGUAGES: dict[str, Language] = {
    code: Language(code, name, native, script, frozenset(w.casefold() for w in stop.split()))
    for code, name, native, script, stop in _TABLE
}
# Scripts that tell the language by themselves.
_BY_SCRIPT = {lang.script: code for code, lang in LANGUAGES.items() if not lang.stopwords}
_BY_STOPWORDS = {
    script: [code for code, lang in LANGUAGES.items() if lang.script == script and lang.stopwords]
    for script in ("Latin", "Cyrillic")
}
_STOP_OWNERS: dict[str, list[str]] = {}
for _lang in LANGUAGES.values():
    for _word in _lang.stopwords:
        _STOP_OWNERS.setdefault(_word, []).append(_lang.code)

# Letters that only some languages of a script use (lower case, NFC); each distinct one present is evidence.
_MARKS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys("ãõ", ("pt",)),
    **dict.fromkeys("ñ¿¡", ("es",)),
    "ß": ("de",),
    "ä": ("de", "sv"),
    "ö": ("de", "sv", "tr"),
    "ü": ("de", "tr"),
    "å": ("sv",),
    **dict.fromkeys("çê", ("fr", "pt")),
    **dict.fromkeys("èœëîïûù", ("fr",)),
    "ì": ("it",),
    **dict.fromkeys("ğşı", ("tr",)),
    **dict.fromkeys("ąęłśżźćń", ("pl",)),
    **dict.fromkeys("ơưđ", ("vi",)),
    **{chr(c): ("vi",) for c in range(0x1EA0, 0x1EFA)},  # ạ ả ấ ... ỹ: Vietnamese tone marks
    **dict.fromkeys("ыэъё", ("ru",)),
    **dict.fromkeys("іїєґ", ("uk",)),
}


def _best_by_words(text: str, codes: list[str]) -> str | None:
    """The language of `codes` with the most evidence; a shared word or letter counts 1/k to each of k."""
    scores = dict.fromkeys(codes, 0.0)

    def add(owners: tuple[str, ...] | list[str]) -> None:
        mine = [c for c in owners if c in scores]
        for code in mine:
            scores[code] += 1 / len(mine)

    for token in words(text):
        add(_STOP_OWNERS.get(token, ()))
        if "'" in token:
            add(_STOP_OWNERS.get(token[: token.index("'") + 1], ()))
    for ch in set(unicodedata.normalize("NFC", text).lower()):
        add(_MARKS.get(ch, ()))
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    if ranked[0][1] <= 0 or (len(ranked) > 1 and math.isclose(ranked[0][1], ranked[1][1])):
        return None
    return ranked[0][0]


def identify(text: str) -> str | None:
    """Best-guess primary language code of one utterance (a key of LANGUAGES), or None: cannot tell."""
    script = script_of(text)
    if script is None:
        return None
    if script in _BY_STOPWORDS:
        return _best_by_words(text, _BY_STOPWORDS[script])
    return _BY_SCRIPT.get(script)


_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")


def _subtag(part: str) -> str:
    if len(part) == 2 and part.isalpha():
        return part.upper()  # region: BR, CA
    if len(part) == 4 and part.isalpha():
        return part.title()  # script: Hant, Latn
    return part.lower()


def parse_language(code: str) -> str:
    """A language tag normalised ("pt-br" -> "pt-BR", "ZH-hant" -> "zh-Hant"); ConfigError if malformed."""
    tag = code.strip()
    if _TAG.fullmatch(tag) is None:
        raise ConfigError(f"--language: {code!r} is not a language tag; use a code such as fr, pt-BR or zh-Hant")
    primary, *rest = tag.split("-")
    return "-".join([primary.lower(), *(_subtag(p) for p in rest)])


def primary_subtag(code: str) -> str:
    return code.strip().split("-")[0].lower()


def is_english(code: str | None) -> bool:
    """No tag (the paper's setting) or an English one: prompts stay as written, nothing is translated."""
    return code is None or primary_subtag(code) == "en"


# Script and region subtags a prompt should spell out ("zh-Hant" must ask for traditional characters).
_SCRIPT_NAMES = {"Hant": "traditional characters", "Hans": "simplified characters", "Latn": "Latin script",
                 "Cyrl": "Cyrillic script", "Arab": "Arabic script", "Deva": "Devanagari script"}
_REGION_NAMES = {"BR": "Brazil", "PT": "Portugal", "US": "United States", "GB": "United Kingdom", "CA": "Canada",
                 "AU": "Australia", "IN": "India", "MX": "Mexico", "ES": "Spain", "AR": "Argentina", "FR": "France",
                 "BE": "Belgium", "CH": "Switzerland", "AT": "Austria", "DE": "Germany", "TW": "Taiwan",
                 "HK": "Hong Kong", "CN": "mainland China", "SG": "Singapore"}


def prompt_language(code: str | None) -> str | None:
    """The language's name for prompts; None for English, whose prompts stay as the paper's."""
    return None if code is None or is_english(code) else language_name(code)


def language_name(code: str) -> str:
    """English name of the tag's language, with its script and region when the tag has them ("fr" ->
    "French", "pt-BR" -> "Portuguese (Brazil)", "zh-Hant" -> "Chinese (traditional characters)"), or a
    phrase naming the code."""
    lang = LANGUAGES.get(primary_subtag(code))
    if lang is None:
        return f"the language with code {code}"
    details = []
    for part in code.split("-")[1:]:
        if len(part) == 4 and part.isalpha():
            details.append(_SCRIPT_NAMES.get(part.title(), f"{part.title()} script"))
        elif len(part) == 2 and part.isalpha():
            details.append(_REGION_NAMES.get(part.upper(), f"region {part.upper()}"))
    return f"{lang.name} ({', '.join(details)})" if details else lang.name


def language_share(utterances: list[str], code: str) -> dict[str, Any]:
    """How many utterances `identify` puts in the target language, in another, or cannot tell.

    "rate" is in_language / (in_language + other): utterances it cannot tell are left out; None if none.
    """
    return share_of([identify(u) for u in utterances], code)


def share_of(found: list[str | None], code: str) -> dict[str, Any]:
    """`language_share` from utterances already identified (None: cannot tell)."""
    target = primary_subtag(code)
    k = sum(1 for f in found if f == target)
    m = sum(1 for f in found if f is not None and f != target)
    return {
        "target": code,
        "utterances": len(found),
        "in_language": k,
        "other": m,
        "unknown": len(found) - k - m,
        "rate": k / (k + m) if k + m else None,
    }
