"""Every dialogue format people have (issue 16): label forms in files and replies, ParlAI escaping, the
Persona-Chat none/self variants and ParlAI's own export format. Each form is a small hand-written file or
reply; the grammar is also fuzzed: every input line ends as a turn or an unattributed line, never lost."""

from __future__ import annotations

import csv
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from personaloom.dialogue import parse_dialogue
from personaloom.io import read_conversations, write_parlai
from personaloom.io.convert import convert
from personaloom.records import Failure, Pair
from personaloom.stages.generator import parse_candidate

PAIR = Pair(id="p1", user1_persona=["I have a dog."], user2_persona=["I am a nurse."])


def test_spc_test_split_emphasis_labels_keep_every_turn(tmp_path: Path) -> None:
    """The released SPC test CSV writes labels as `* * User 1: * *`: the conversation keeps its turns."""
    src = tmp_path / "spc_test.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        w.writerow(["I have a dog.", "I am a nurse.",
                    "* * User 1: * * Hi! Do you like dogs?\n* * User 2: * * I do, I'm a nurse.\n"
                    "* * User 1: * * Cool."])
    (conv,) = read_conversations(src)
    assert [(t.speaker, t.text) for t in conv.turns] == [(1, "Hi! Do you like dogs?"), (2, "I do, I'm a nurse."),
                                                         (1, "Cool.")]
    assert conv.label_forms == ["emphasis"] and "empty" not in conv.defects
    out = tmp_path / "out.jsonl"
    convert(src, out, to="jsonl")
    assert '"label_forms":["emphasis"]' in out.read_text().replace(" ", "")


def test_generator_replies_in_every_label_form_are_kept() -> None:
    replies = {
        "numbered": "1. User 1: Hi, I walk my dog daily.\n2. User 2: Nice! I work nights as a nurse.\n"
                    "3. User 1: That must be tiring.",
        "named": "User 1 (Maya): Hi, I walk my dog daily.\nUser 2 (Tom): Nice! I work nights.\n"
                 "User 1 (Maya): That must be tiring.",
        "names": "Maya: Hi, I walk my dog daily.\nTom: Nice! I work nights as a nurse.\nMaya: That must be tiring.",
        "emphasis": "**User 1:** Hi, I walk my dog daily.\n**User 2:** Nice! I work nights.\n**User 1:** Tiring!",
        "letter": "Person A: Hi, I walk my dog daily.\nPerson B: Nice! I work nights.\nPerson A: Tiring!",
    }
    for form, text in replies.items():
        conv = parse_candidate(PAIR, text, 1, 0)
        assert not isinstance(conv, Failure), (form, conv)
        assert [t.speaker for t in conv.turns] == [1, 2, 1] and conv.turns[0].text.startswith("Hi,"), form
        assert conv.label_forms == [form] and "nonstandard_labels" in conv.defects, form


def test_a_reply_without_dialogue_says_what_it_had() -> None:
    for text, said in [('{"conversation": []}', "JSON"), ("Sure! Here is a story about a dog.", "prose"),
                       ("Maya: hi\nTom: hey\nAnn: hello", "3 names")]:
        failure = parse_candidate(PAIR, text, 1, 0)
        assert isinstance(failure, Failure) and failure.reason == "empty", text
        assert said in failure.detail and "'User 1:'" in failure.detail, failure.detail


def test_parlai_pipes_are_escaped_so_any_reader_keeps_the_label(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("1 your persona: i like cats.\n2 partner's persona: i am a nurse.\n"
                   "3 hi there\tmeh :| whatever\n4 ok then\tyes | no?\n"
                   "1 your persona: i run.\n2 hello\thi\n3 bye\tsee you\n", encoding="utf-8")
    convs = read_conversations(src)
    out = tmp_path / "out.txt"
    write_parlai(out, convs, candidates=5, seed=1)
    for line in out.read_text(encoding="utf-8").splitlines():
        cols = line.split(" ", 1)[1].split("\t")
        if len(cols) < 4:
            continue
        # ParlAI's reader: split candidates on "|", then unescape __PIPE__.
        cands = [c.replace("__PIPE__", "|") for c in cols[3].split("|")]
        label = cols[1].replace("__PIPE__", "|")
        assert cands.count(label) == 1 and "|" not in cols[1], line
    back = read_conversations(out)
    assert [[t.text for t in c.turns] for c in back] == [[t.text for t in c.turns] for c in convs]
    assert back[0].turns[1].text == "meh :| whatever"


def test_persona_chat_none_files_read_with_empty_personas(tmp_path: Path) -> None:
    src = tmp_path / "valid_none_original.txt"
    src.write_text("1 hi , how are you ?\ti am good , you ?\n2 great .\tnice\n1 hello\they there\n", encoding="utf-8")
    convs = read_conversations(src)
    assert [(c.user1_persona, c.user2_persona, len(c.turns)) for c in convs] == [([], [], 4), ([], [], 2)]
    out = tmp_path / "back.txt"
    assert write_parlai(out, convs, candidates=0) == 2
    assert [c.turns for c in read_conversations(out)] == [c.turns for c in convs]


def test_parlai_export_format_text_labels(tmp_path: Path) -> None:
    src = tmp_path / "export.txt"
    src.write_text(
        "text:your persona: i like cats.\\npartner's persona: i am a nurse.\\nhi there\tlabels:hello __PIPE__ you"
        "\tlabel_candidates:nope|hello __PIPE__ you\tepisode_done:False\n"
        "text:how are you?\tlabels:fine\tepisode_done:True\n"
        "text:__SILENCE__\tlabels:anyone there?\tepisode_done:True\n", encoding="utf-8")
    convs = read_conversations(src)
    assert len(convs) == 2
    assert convs[0].user2_persona == ["i like cats."] and convs[0].user1_persona == ["i am a nurse."]
    assert [(t.speaker, t.text) for t in convs[0].turns] == [(1, "hi there"), (2, "hello | you"),
                                                             (1, "how are you?"), (2, "fine")]
    assert [(t.speaker, t.text) for t in convs[1].turns] == [(2, "anyone there?")]


_LABELS = st.sampled_from(["User 1: ", "User 2: ", "**User 1:** ", "* * User 2: * * ", "1. User 1: ", "- User 2: ",
                           "User 1 (Maya): ", "Person B: ", "user1: ", "", "[Later] ", "(", "Maya: ", "Tom: "])


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(_LABELS, st.text(min_size=0, max_size=30)), min_size=0, max_size=12))
def test_fuzz_label_grammar_loses_no_line(lines: list[tuple[str, str]]) -> None:
    text = "\n".join(label + body for label, body in lines)
    parsed = parse_dialogue(text)
    all_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if text.strip() else []
    nonblank = {n for n, ln in enumerate(all_lines, start=1) if ln.strip()}
    attributed = set(parsed.turn_lines)
    loose = {n for n, _ in parsed.unprefixed_lines}
    assert attributed | loose == nonblank and not attributed & loose
    assert len(parsed.turns) == len(parsed.turn_lines)
    assert bool(parsed.turns) or "empty" in parsed.defects
