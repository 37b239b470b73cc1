"""Annotation app: item building, store reuse, scoring, Fleiss' kappa, and the app's refusals (in-process)."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from personaloom.annotate import (
    create_app,
    default_out_dir,
    fleiss_kappa,
    load_session,
    negate,
    prepare,
    results,
    results_csv,
)
from personaloom.annotate.store import Session
from personaloom.errors import ConfigError, InputError
from personaloom.evaluate.turing import normalise_attribute
from personaloom.records import Conversation
from personaloom.seeds import seed_conversations

BASE = "http://127.0.0.1:8765"


def write_data(tmp: Path) -> tuple[Path, Path]:
    """Seed conversations as 'generated' and a human 'reference' for the same user pairs (shuffled personas)."""
    convs = seed_conversations()
    gen, ref = tmp / "gen.jsonl", tmp / "ref.jsonl"
    gen.write_text("\n".join(c.model_copy(update={"id": f"gen-{c.id}"}).model_dump_json() for c in convs) + "\n")
    refs = [
        Conversation(
            id=f"ref-{c.id}",
            # swapped users, reversed and re-cased attributes: still the same user pair
            user1_persona=[a.lower() for a in reversed(c.user2_persona)],
            user2_persona=list(c.user1_persona),
            turns=[t.model_copy(update={"text": t.text + " (ref)"}) for t in c.turns],
            source="reference",
        )
        for c in convs[:10]
    ]
    ref.write_text("\n".join(c.model_dump_json() for c in refs) + "\n")
    return gen, ref


def payloads(session: Session) -> dict[int, tuple[str, dict]]:
    conn = sqlite3.connect(session.db_path)
    try:
        return {i: (t, json.loads(p)) for i, t, p in conn.execute("SELECT id, task, payload FROM items")}
    finally:
        conn.close()


@pytest.fixture
def session(tmp_path: Path) -> Session:
    gen, ref = write_data(tmp_path)
    return prepare(gen, ref, tmp_path / "study", raters=2, items=6, seed=0)


def form_of(html: str) -> dict[str, str]:
    return {
        "action": re.search(r'<form method="post" action="([^"]+)"', html).group(1),  # type: ignore[union-attr]
        "csrf": re.search(r'name="csrf" value="([^"]+)"', html).group(1),  # type: ignore[union-attr]
        "item_id": re.search(r'name="item_id" value="(\d+)"', html).group(1),  # type: ignore[union-attr]
    }


# --- items -----------------------------------------------------------------------------------------


def test_items_split_matched_and_composed(session: Session) -> None:
    items = payloads(session)
    tasks = [t for t, _ in items.values()]
    assert tasks.count("turing") == 3 and tasks.count("faithfulness") == 3
    seen_sides = set()
    for task, p in items.values():
        if task == "turing":
            assert p["matched"] is True and p["reference_id"] == "ref-" + p["generated_id"][4:]
            machine, human = (p["a"], p["b"]) if p["machine"] == "A" else (p["b"], p["a"])
            assert not any("(ref)" in line for line in machine) and all("(ref)" in line for line in human)
            assert all(
                x.partition(": ")[2] == x.partition(": ")[2].lower() for x in machine + human
            )  # one surface form for both sides
            seen_sides.add(p["machine"])
        else:
            cands = p["candidates"]
            kinds = [c["kind"] for c in cands]
            assert len(cands) == 8 and kinds.count("true") == 4 and len({c["text"] for c in cands}) == 8
            assert "negation" in kinds and kinds.count("other") == 3
            conv = next(c for c in seed_conversations() if f"gen-{c.id}" == p["conversation_id"])
            truth = {normalise_attribute(a) for a in conv.user1_persona}
            both = truth | {normalise_attribute(a) for a in conv.user2_persona}
            for c in cands:
                assert (normalise_attribute(c["text"]) in truth) == (c["kind"] == "true")
                if c["kind"] != "true":
                    assert normalise_attribute(c["text"]) not in both
    assert seen_sides == {"A", "B"}  # positions are randomised


def test_without_reference_only_faithfulness(tmp_path: Path) -> None:
    gen, _ = write_data(tmp_path)
    s = prepare(gen, None, tmp_path / "s", raters=1, items=4, seed=1)
    assert [t for t, _ in payloads(s).values()] == ["faithfulness"] * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I have two dogs.", "i do not have two dogs."),
        ("i am a nurse .", "i am not a nurse."),
        ("I'm afraid of heights.", "i am not afraid of heights."),
        ("I do not eat meat.", "i eat meat."),
        ("I can never sleep on planes.", "i can sleep on planes."),
        ("My favourite band is Fleetwood Mac.", "my favourite band is not fleetwood mac."),
        ("I love hiking.", "i do not love hiking."),
        ("I have been to Japan.", "i have not been to japan."),
        ("Sometimes it rains.", None),
    ],
)
def test_negate(text: str, expected: str | None) -> None:
    assert negate(text) == expected


# --- store -----------------------------------------------------------------------------------------


def test_prepare_reuses_items_and_tokens(session: Session, tmp_path: Path) -> None:
    gen, ref = tmp_path / "gen.jsonl", tmp_path / "ref.jsonl"
    again = prepare(gen, ref, tmp_path / "study", raters=2, items=6, seed=0)
    assert again.raters == session.raters and again.admin_token == session.admin_token
    assert payloads(again) == payloads(session)
    assert load_session(tmp_path / "study") == session
    tokens = [r.token for r in session.raters] + [session.admin_token]
    assert len(set(tokens)) == 3 and all(len(t) >= 32 for t in tokens)
    assert (session.turing_items, session.faithfulness_items, session.items) == (3, 3, 6)
    assert session.rater_links("http://127.0.0.1:8765/")[0] == ("rater-01", f"{BASE}/r/{session.raters[0].token}")
    with pytest.raises(ConfigError, match="raters=2"):
        prepare(gen, ref, tmp_path / "study", raters=3, items=6, seed=0)
    with pytest.raises(ConfigError, match="other data"):
        prepare(gen, None, tmp_path / "study", raters=2, items=6, seed=0)


def test_prepare_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"conversations\.jsonl"):
        prepare(tmp_path, None, tmp_path / "s", raters=1, items=1, seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1"):
        prepare(bad, None, tmp_path / "s", raters=1, items=1, seed=0)
    with pytest.raises(InputError):
        load_session(tmp_path / "nowhere")
    assert default_out_dir(tmp_path) == tmp_path
    assert default_out_dir(bad) == tmp_path / "bad.annotate"


# --- scoring ---------------------------------------------------------------------------------------


def test_fleiss_kappa_known_example() -> None:
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa 0.210.
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(1.0)
    assert fleiss_kappa([[2, 0], [2, 0]]) is None  # one category only: undefined
    assert fleiss_kappa([[1, 0]]) is None  # a single rating agrees with nobody


def answer_all(session: Session, policy) -> None:  # type: ignore[no-untyped-def]
    client = TestClient(create_app(session), base_url="http://127.0.0.1:8765")
    for rater in session.raters:
        while True:
            page = client.get(f"/r/{rater.token}")
            assert page.status_code == 200
            if 'id="done"' in page.text:
                break
            form = form_of(page.text)
            task, payload = payloads(session)[int(form["item_id"])]
            data = {
                "csrf": form["csrf"],
                "item_id": form["item_id"],
                **policy(rater.name, int(form["item_id"]), task, payload),
            }
            r = client.post(form["action"], data=data, follow_redirects=False)
            assert r.status_code == 303, r.text


def test_results_numbers(session: Session, tmp_path: Path) -> None:
    items = payloads(session)
    first_turing = min(i for i, (t, _) in items.items() if t == "turing")

    def policy(rater: str, item_id: int, task: str, p: dict) -> dict:  # type: ignore[type-arg]
        if task == "turing":
            human = "B" if p["machine"] == "A" else "A"
            if rater == "rater-01":
                return {"choice": p["machine"]}
            return {"choice": p["machine"] if item_id == first_turing else human}
        picked = [k for k, c in enumerate(p["candidates"]) if c["kind"] == "true"]
        if rater == "rater-02":
            picked = [*picked[:2], next(k for k, c in enumerate(p["candidates"]) if c["kind"] != "true")]
        return {"picked": [str(k) for k in picked]}

    answer_all(session, policy)
    res = results(session)
    t, f = res["turing"], res["faithfulness"]
    assert res["answers"] == 12 and [p["answered"] for p in res["per_rater"]] == [6, 6]
    # item 1: spotted+spotted -> lose; items 2, 3: spotted+fooled -> tie
    assert t["counts"] == {"lose": 1, "win": 0, "tie": 2}
    assert t["lose"] == pytest.approx(1 / 3, abs=1e-6) and t["items_complete"] == 3
    # rater-01 picks the 4 true; rater-02 picks 2 true + 1 distractor, on 3 items each
    assert f["precision"] == pytest.approx((12 + 6) / (12 + 9), abs=1e-6)
    assert f["recall"] == pytest.approx(18 / 24, abs=1e-6)
    assert f["majority_precision"] == pytest.approx(1.0) and f["majority_recall"] == pytest.approx(0.5)
    # turing subjects (spotted, fooled, cant_tell): [2,0,0], [1,1,0] x2 -> P=(1,0,0), p=(4/6, 2/6, 0)
    pe = (4 / 6) ** 2 + (2 / 6) ** 2
    assert t["kappa"] == pytest.approx((1 / 3 - pe) / (1 - pe))
    assert all(p["median_s"] is not None and 0 <= p["median_s"] < 30 for p in res["per_rater"])

    out = tmp_path / "answers.csv"
    assert results_csv(session, out) == 12
    rows = list(csv.DictReader(out.open()))
    assert {r["rater"] for r in rows} == {"rater-01", "rater-02"}
    assert not any(tok.token in out.read_text() for tok in session.raters)
    assert sum(1 for r in rows if r["label"] == "spotted") == 4


def test_results_empty(session: Session) -> None:
    res = results(session)
    assert res["answers"] == 0 and res["turing"]["lose"] is None and res["faithfulness"]["precision"] is None
    page = TestClient(create_app(session)).get(f"/admin/{session.admin_token}/results")
    assert page.status_code == 200 and "n/a" in page.text


# --- the app's refusals ----------------------------------------------------------------------------


def test_every_page_needs_a_token(session: Session) -> None:
    client = TestClient(create_app(session), base_url="http://127.0.0.1:8765")
    paths = ["/", "/r/", "/r/not-a-token", "/admin/not-the-token/results", "/admin//results.csv"]
    paths += ["/static/../annotations.sqlite", "/annotations.sqlite", f"/admin/{session.raters[0].token}/results"]
    for path in paths:
        assert client.get(path).status_code == 403, path
    assert client.post("/r/not-a-token/answer", data={"csrf": "x", "item_id": "1"}).status_code == 403
    ok = client.get(f"/r/{session.raters[0].token}")
    assert ok.status_code == 200
    assert ok.headers["x-frame-options"] == "DENY" and ok.headers["referrer-policy"] == "no-referrer"
    assert "script-src" not in ok.headers["content-security-policy"]
    assert client.get(f"/admin/{session.admin_token}/results").status_code == 200
    assert client.get(f"/admin/{session.admin_token}/results.csv").headers["content-type"].startswith("text/csv")


def test_forged_posts_are_refused(session: Session) -> None:
    client = TestClient(create_app(session), base_url="http://127.0.0.1:8765")
    a, b = session.raters
    fa, fb = form_of(client.get(f"/r/{a.token}").text), form_of(client.get(f"/r/{b.token}").text)
    task, _ = payloads(session)[int(fa["item_id"])]
    answer = {"choice": "A"} if task == "turing" else {"picked": ["0"]}
    forged = [
        (fa["action"], {"item_id": fa["item_id"], **answer}, {}),  # no CSRF token
        (fa["action"], {"csrf": "guess", "item_id": fa["item_id"], **answer}, {}),  # wrong CSRF token
        (fa["action"], {"csrf": fb["csrf"], "item_id": fa["item_id"], **answer}, {}),  # B's CSRF on A's link
        (fb["action"], {"csrf": fa["csrf"], "item_id": fa["item_id"], **answer}, {}),  # A's CSRF on B's link
        (fa["action"], {"csrf": fa["csrf"], "item_id": fa["item_id"], **answer}, {"origin": "http://evil.example"}),
        (fa["action"], {"csrf": fa["csrf"], "item_id": fa["item_id"], **answer}, {"sec-fetch-site": "cross-site"}),
        (fa["action"], {"csrf": fa["csrf"], "item_id": fa["item_id"], **answer}, {"sec-fetch-site": "same-site"}),
    ]
    for action, data, headers in forged:
        assert client.post(action, data=data, headers=headers, follow_redirects=False).status_code == 403
    bad = [{"csrf": fa["csrf"], "item_id": "99999", **answer}, {"csrf": fa["csrf"], "item_id": "../x", **answer}]
    assert [client.post(fa["action"], data=d).status_code for d in bad] == [403, 400]
    assert client.post(fa["action"], data={"csrf": fa["csrf"], "item_id": fa["item_id"], "choice": "C",
                                           "picked": "8"}).status_code == 400  # fmt: skip
    assert results(session)["answers"] == 0
    # the genuine post, twice (double click): stored once
    data = {"csrf": fa["csrf"], "item_id": fa["item_id"], **answer}
    headers = {"origin": "http://127.0.0.1:8765"}
    assert client.post(fa["action"], data=data, headers=headers, follow_redirects=False).status_code == 303
    headers = {"origin": "null", "sec-fetch-site": "same-origin"}  # what Chromium sends from our pages
    assert client.post(fa["action"], data=data, headers=headers, follow_redirects=False).status_code == 303
    assert results(session)["answers"] == 1
    # the store and its WAL files hold tokens and answers: private to the owner (an open reader keeps -wal)
    keep = sqlite3.connect(session.db_path)
    try:
        keep.execute("SELECT COUNT(*) FROM answers").fetchone()
        files = list(session.out_dir.glob("annotations.sqlite*"))
        assert len(files) == 3 and all(f.stat().st_mode & 0o077 == 0 for f in files)
    finally:
        keep.close()


def test_continue_later_and_timing(session: Session) -> None:
    client = TestClient(create_app(session))
    tok = session.raters[0].token
    first = form_of(client.get(f"/r/{tok}").text)
    assert form_of(client.get(f"/r/{tok}").text)["item_id"] == first["item_id"]  # reload: same item
    task, _ = payloads(session)[int(first["item_id"])]
    time.sleep(0.2)
    client.post(first["action"], data={"csrf": first["csrf"], "item_id": first["item_id"],
                                       **({"choice": "cant_tell"} if task == "turing" else {})})  # fmt: skip
    # a fresh client (new browser session) continues with the next unanswered item
    page = TestClient(create_app(session)).get(f"/r/{tok}").text
    assert "item 2 of 6" in page and form_of(page)["item_id"] != first["item_id"]
    res = results(session)
    assert res["per_rater"][0]["answered"] == 1 and res["per_rater"][0]["median_s"] >= 0.2


def test_real_data_pairs_spc_with_persona_chat(spc_path: Path, persona_chat_path: Path, tmp_path: Path) -> None:
    s = prepare(spc_path, persona_chat_path, tmp_path / "study", raters=3, items=20, seed=0)
    items = payloads(s)
    turing = [p for t, p in items.values() if t == "turing"]
    faith = [p for t, p in items.values() if t == "faithfulness"]
    assert len(turing) == 10 and len(faith) == 10
    assert all(p["matched"] for p in turing)  # SPC valid and Persona-Chat valid share their user pairs
    assert all(len(p["candidates"]) == 8 for p in faith)
    assert sum(1 for p in faith for c in p["candidates"] if c["kind"] == "negation") >= 5
