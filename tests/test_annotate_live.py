"""Annotation app served by uvicorn on 127.0.0.1: a real headless Chromium (two raters, five items,
stop and continue, results page, screenshot) and 20 raters posting at once without a lost answer."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from personaloom.annotate import create_app, prepare, results
from personaloom.annotate.store import Session
from test_annotate import write_data

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class LiveServer:
    def __init__(self, session: Session) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(session), log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def items_of(session: Session) -> dict[int, tuple[str, dict[str, Any]]]:
    conn = sqlite3.connect(session.db_path)
    try:
        return {i: (t, json.loads(p)) for i, t, p in conn.execute("SELECT id, task, payload FROM items")}
    finally:
        conn.close()


# --- concurrency -----------------------------------------------------------------------------------


def _request(url: str, data: dict[str, str] | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method="POST" if data is not None else "GET")
    try:
        # No redirect following for posts: a 303 is the success answer.
        opener = urllib.request.build_opener(_NoRedirect)
        with opener.open(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_twenty_raters_at_once(tmp_path: Path) -> None:
    gen, ref = write_data(tmp_path)
    session = prepare(gen, ref, tmp_path / "study", raters=20, items=4, seed=3)
    payloads = items_of(session)
    barrier = threading.Barrier(20)
    errors: list[str] = []

    def rater(token: str) -> None:
        try:
            for _ in range(4):
                status, html = _request(f"{base}/r/{token}")
                assert status == 200, status
                csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
                item = re.search(r'name="item_id" value="(\d+)"', html).group(1)  # type: ignore[union-attr]
                task, _ = payloads[int(item)]
                answer = {"choice": "cant_tell"} if task == "turing" else {"picked": "0"}
                barrier.wait(timeout=60)  # every rater posts this round's answer at the same moment
                # a double post of each answer too: it must be stored once
                codes = [_request(f"{base}/r/{token}/answer", {"csrf": csrf, "item_id": item, **answer})[0]
                         for _ in range(2)]  # fmt: skip
                assert codes == [303, 303], codes
        except Exception as exc:  # collected: an assert in a thread would not fail the test
            errors.append(f"{token[:6]}: {exc!r}")
            barrier.abort()

    with LiveServer(session) as live:
        base = live.base
        threads = [threading.Thread(target=rater, args=(r.token,)) for r in session.raters]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.monotonic() - t0
    assert not errors, errors
    res = results(session)
    assert res["answers"] == 80, res["answers"]
    assert [p["answered"] for p in res["per_rater"]] == [4] * 20
    assert res["turing"]["items_complete"] + res["faithfulness"]["items_complete"] == 4
    print(f"20 raters x 4 items (x2 posts): {elapsed:.2f}s")


# --- a real browser --------------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.slow
def test_two_raters_in_chromium(chromium: Any, tmp_path: Path) -> None:
    gen, ref = write_data(tmp_path)
    session = prepare(gen, ref, tmp_path / "study", raters=2, items=5, seed=0)
    payloads = items_of(session)
    first_turing = min(i for i, (t, _) in payloads.items() if t == "turing")

    def answer_one(page: Any, rater: str) -> None:
        item_id = int(page.locator('input[name="item_id"]').get_attribute("value"))
        task, p = payloads[item_id]
        if task == "turing":
            human = "B" if p["machine"] == "A" else "A"
            # rater-01 spots every machine; rater-02 only the first one, and can't tell the others
            pick = p["machine"] if rater == "rater-01" or item_id == first_turing else "cant_tell"
            assert human != pick
            page.check(f'input[name="choice"][value="{pick}"]')
        else:
            true = [k for k, c in enumerate(p["candidates"]) if c["kind"] == "true"]
            wrong = [k for k, c in enumerate(p["candidates"]) if c["kind"] != "true"]
            # rater-01 ticks exactly the true ones; rater-02 the true ones plus one distractor
            for k in true + (wrong[:1] if rater == "rater-02" else []):
                page.check(f'input[name="picked"][value="{k}"]')
        page.click('button[type="submit"]')
        page.wait_for_load_state()

    for rater in session.raters:
        link = f"/r/{rater.token}"
        ctx = chromium.new_context()
        page = ctx.new_page()
        with LiveServer(session) as live:
            page.goto(live.base + link)
            assert "item 1 of 5" in page.inner_text(".progress")
            page.screenshot(path=str(tmp_path / f"{rater.name}-item1.png"), full_page=True)
            for _ in range(2):
                answer_one(page, rater.name)
            ctx.close()  # the rater stops ...
            ctx = chromium.new_context()  # ... and comes back later in a fresh browser session
            page = ctx.new_page()
            page.goto(live.base + link)
            assert "item 3 of 5" in page.inner_text(".progress")
            for _ in range(3):
                answer_one(page, rater.name)
            assert "answered all 5 items" in page.inner_text("#done")
            # without a token: refused
            assert page.goto(live.base + "/").status == 403
        ctx.close()

    res = results(session)
    turing = [p for t, p in payloads.values() if t == "turing"]
    faith = [p for t, p in payloads.values() if t == "faithfulness"]
    assert len(turing) == 3 and len(faith) == 2 and res["answers"] == 10
    n_true = sum(1 for p in faith for c in p["candidates"] if c["kind"] == "true")
    # lose: the first turing item (both spotted); tie: the other two (spotted vs can't tell)
    expected = {
        "turing-lose": "33.3% (1)",
        "turing-win": "0.0% (0)",
        "turing-tie": "66.7% (2)",
        "faith-precision": f"{(2 * n_true) / (2 * n_true + len(faith)):.3f}",
        "faith-recall": "1.000",
        "faith-answered": "2 / 2",
        "turing-answered": "3 / 3",
    }
    ctx = chromium.new_context()
    page = ctx.new_page()
    with LiveServer(session) as live:
        assert page.goto(live.base + f"/admin/{session.raters[0].token}/results").status == 403
        assert page.goto(session.results_link(live.base)).status == 200
        shown = {key: page.inner_text(f"#{key}").strip() for key in expected}
        kappa = page.inner_text("#turing-kappa").strip()
        shot = tmp_path / "results.png"
        page.screenshot(path=str(shot), full_page=True)
    ctx.close()
    assert shown == expected
    # turing table (spotted, fooled, can't tell): [2,0,0], [1,0,1] x2 -> P_bar 1/3, p = (4/6, 0, 2/6)
    pe = (4 / 6) ** 2 + (2 / 6) ** 2
    assert kappa == f"{(1 / 3 - pe) / (1 - pe):.3f}"
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
