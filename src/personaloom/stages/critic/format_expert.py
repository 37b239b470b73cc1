"""The rule-based format expert: a parsed candidate in, a pass/reject Verdict with its reasons out.

Reasons (codes, in the verdict's `reasons` and first in its rationale, then details):
  empty            no utterance at all
  empty_utterance  a speaker prefix with nothing after it
  placeholders     a template slot such as "[name]", "[User 1's name]", "(user 1's name)" or "(city)"
                   (dialogue.find_slots: the one slot detector, shared with the readers and metrics)
  unprefixed       a line between utterances that no speaker label attributes ("* * *")
  stage_directions a bracketed narrative line ("[Later that week]", "(The next day)")
  same_speaker     two consecutive utterances by the same speaker
  too_short        fewer than `min_utterances` utterances
  too_long         more than `max_utterances` utterances (generate.max_utterances; with generate.trim a longer
                   reply is cut to that many first, so this rejects only untrimmed replies)
  repetition       degenerate looping: an utterance repeated, or one utterance/the whole conversation
                   made of the same words over and over (SmolLM2-135M does this)
  repeats_earlier  (a later session of --sessions) more than a third of its utterances repeat, or nearly
                   repeat, utterances of the earlier sessions
No LLM call; the same input always gives the same verdict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from personaloom.dialogue import has_slot, is_stage_direction
from personaloom.records import Conversation, Turn, Verdict
from personaloom.text import is_near_duplicate, word_set
from personaloom.text import words as _words

REASONS = (
    "empty",
    "empty_utterance",
    "placeholders",
    "unprefixed",
    "stage_directions",
    "same_speaker",
    "too_short",
    "too_long",
    "repetition",
    "repeats_earlier",
)
# An utterance this short ("Yes.", "Me too!") may honestly come back a few times.
_SHORT_WORDS = 3
# Any utterance this many times (one word longer than _SHORT_WORDS: one time fewer) is a loop; LLM
# conversations repeat "What do you do for a living?" once now and then without looping.
_MAX_SAME_UTTERANCE = 4
# More than this share of utterances repeating an earlier one is a loop.
_MAX_DUPLICATE_SHARE = 0.25
# Conversation-level distinct-2 below this means the model is looping.
_MIN_DISTINCT_2 = 0.45
# Within one utterance: the same 4-gram this many times is a loop ("I love dogs. I love dogs. ...").
_MAX_SAME_4GRAM = 3
# More than this share of near-duplicate utterances (text.is_near_duplicate: SmolLM2 loops by rephrasing,
# "I'm glad to hear that you're doing great too") flags 0.9% of the released SPC valid conversations and
# most SmolLM2-135M replies.
_MAX_NEAR_SHARE = 0.2
# A later session re-telling an earlier one: more than this share of its utterances are (near-)copies.
_MAX_EARLIER_SHARE = 1 / 3


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repetition_problems(turns: list[Turn]) -> list[str]:
    """Human-readable descriptions of degenerate repetition; empty when there is none."""
    problems: list[str] = []
    keys = [" ".join(_words(t.text)) for t in turns]
    counts = Counter(k for k in keys if k)
    for key, n in counts.items():
        long = len(key.split()) > _SHORT_WORDS
        if n >= _MAX_SAME_UTTERANCE or (long and n >= _MAX_SAME_UTTERANCE - 1):
            problems.append(f"utterance repeated {n} times: {key[:60]!r}")
    duplicates = sum(n - 1 for n in counts.values())
    if keys and duplicates / len(keys) > _MAX_DUPLICATE_SHARE:
        problems.append(f"{duplicates} of {len(keys)} utterances repeat an earlier one")
    # Echo: an utterance copying one of the two before it (the other user's or one's own).
    for i in range(1, len(keys)):
        if len(keys[i].split()) > _SHORT_WORDS and keys[i] in keys[max(0, i - 2) : i]:
            problems.append(f"utterance {i + 1} echoes an earlier one: {keys[i][:60]!r}")
            break
    sets = [word_set(t.text) for t in turns]
    near = sum(is_near_duplicate(w, sets[:i]) for i, w in enumerate(sets))
    if turns and near / len(turns) > _MAX_NEAR_SHARE:
        problems.append(f"{near} of {len(turns)} utterances nearly repeat an earlier one")
    for number, turn in enumerate(turns, start=1):
        grams = Counter(_ngrams(_words(turn.text), 4))
        if grams and max(grams.values()) >= _MAX_SAME_4GRAM:
            gram, n = grams.most_common(1)[0]
            problems.append(f"utterance {number} repeats {' '.join(gram)!r} {n} times")
    all_words = [w for t in turns for w in _words(t.text)]
    bigrams = _ngrams(all_words, 2)
    if len(bigrams) >= 20:
        distinct = len(set(bigrams)) / len(bigrams)
        if distinct < _MIN_DISTINCT_2:
            problems.append(f"distinct-2 {distinct:.2f} < {_MIN_DISTINCT_2}")
    return problems


def _trim_note(conv: Conversation) -> tuple[str, str] | None:
    """(cause, note) when the generator cut the reply before its first defect (generate.trim)."""
    trimmed = conv.trimmed
    if trimmed is None:
        return None
    if trimmed.at == "too_long":
        return trimmed.at, f"reply cut at max_utterances after {trimmed.kept} of {trimmed.of} utterances"
    return (
        trimmed.at,
        f"reply cut before its first defect ({trimmed.at}) after {trimmed.kept} of {trimmed.of} utterances",
    )


def repeats_earlier(turns: Sequence[Turn], earlier: Sequence[Turn]) -> str | None:
    """A description when the session copies the earlier sessions' utterances, else None."""
    if not turns or not earlier:
        return None
    keys = {" ".join(_words(t.text)) for t in earlier}
    sets = [word_set(t.text) for t in earlier]
    copied = sum(1 for t in turns if " ".join(_words(t.text)) in keys or is_near_duplicate(word_set(t.text), sets))
    if copied / len(turns) > _MAX_EARLIER_SHARE:
        return f"{copied} of {len(turns)} utterances repeat earlier sessions"
    return None


def format_problems(conv: Conversation, min_utterances: int, earlier: Sequence[Turn] = (),
                    max_utterances: int | None = None) -> list[tuple[str, str]]:
    """(reason code, detail) for every format problem of a candidate, in REASONS order.

    A candidate the generator trimmed and that is still rejected (too short, say) also carries the
    defect it was cut at, so rejections count under their root cause.
    """
    found: list[tuple[str, str]] = []
    turns = conv.turns
    defects = set(conv.defects)
    if not turns or "empty" in defects:
        found.append(("empty", "no utterances"))
    else:
        if "empty_utterance" in defects or any(not t.text.strip() for t in turns):
            found.append(("empty_utterance", "a speaker prefix with no text"))
        slots = [i for i, t in enumerate(turns, start=1) if has_slot(t.text)]
        if slots or "placeholders" in defects:
            found.append(("placeholders", f"template slot in utterance(s) {slots}" if slots else "template slot"))
        if "unprefixed" in defects:
            found.append(("unprefixed", "a line between utterances has no speaker label"))
        directions = [i for i, t in enumerate(turns, start=1) if is_stage_direction(t.text)]
        if directions or "stage_directions" in defects:
            where = f" (utterance(s) {directions})" if directions else ""
            found.append(("stage_directions", f"a bracketed narrative line{where}"))
        runs = [i for i in range(1, len(turns)) if turns[i].speaker == turns[i - 1].speaker]
        if runs:
            found.append(("same_speaker", f"utterances {[(i, i + 1) for i in runs][:5]} by the same speaker"))
        if len(turns) < min_utterances:
            found.append(("too_short", f"{len(turns)} utterances < {min_utterances}"))
        if max_utterances is not None and len(turns) > max_utterances:
            found.append(("too_long", f"{len(turns)} utterances > {max_utterances}"))
        loops = repetition_problems(turns)
        if loops:
            found.append(("repetition", "; ".join(loops[:3])))
        copied = repeats_earlier(turns, earlier)
        if copied:
            found.append(("repeats_earlier", copied))
    trim = _trim_note(conv)
    if found and trim is not None:
        cause, note = trim
        if cause in REASONS and all(code != cause for code, _ in found):
            found.append((cause, note))
        else:
            found.append(("", note))
    order = {code: i for i, code in enumerate(REASONS)}
    return sorted(found, key=lambda p: order.get(p[0], len(REASONS)))


def check_format(
    conv: Conversation, min_utterances: int, iteration: int | None = None, earlier: Sequence[Turn] = (),
    max_utterances: int | None = None,
) -> Verdict:
    """Verdict(expert="format"): "pass", or "reject" with the codes in `reasons` and the details in the
    rationale ("code1,code2: details"). `earlier`: the utterances of the sessions before this one (--sessions)."""
    problems = format_problems(conv, min_utterances, earlier, max_utterances)
    reasons: list[str] | None = None
    if not problems:
        decision, rationale = "pass", f"{len(conv.turns)} utterances, alternating speakers, no defects"
        trim = _trim_note(conv)
        if trim is not None:
            rationale += f" ({trim[1]})"
    else:
        reasons = [code for code, _ in problems if code]
        decision, rationale = "reject", f"{','.join(reasons)}: " + "; ".join(detail for _, detail in problems)
    return Verdict(
        conversation_id=conv.id,
        expert="format",
        decision=decision,
        rationale=rationale,
        reasons=reasons,
        pair_id=conv.pair_id,
        iteration=conv.iteration if iteration is None else iteration,
    )
