"""The human-evaluation web app: server-rendered pages over the annotation store.

In: a Session (prepare()/load_session()). Out: a Starlette app (`create_app`) and `serve()` (uvicorn).

Pages (no file path is ever taken from a request; the store path is fixed by the Session):
  GET  /r/{token}                      the rater's next unanswered item, or "all done"
  POST /r/{token}/answer               one answer (item_id, csrf, choice | picked), then back to GET
  GET  /admin/{admin}/results          results page; /admin/{admin}/results.csv the answers as CSV
Anything else, or an unknown token, is 403. A post must carry the rater's own CSRF token (a second,
per-rater secret that only appears inside that rater's pages) and, when the browser sends one, a
same-origin Origin header; otherwise 403. Answers are stored with INSERT OR IGNORE in one transaction,
so a double post keeps the first answer. Every response forbids framing, caching and referrers (the
token is in the URL) and allows no script or external resource.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from personaloom.annotate.stats import csv_text, results
from personaloom.annotate.store import Session, connect

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
TURING_CHOICES = ("A", "B", "cant_tell")
MAX_FORM_BYTES = 64 * 1024


@dataclass(frozen=True)
class _RaterAuth:
    id: int
    name: str
    csrf: str


def _load_template(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template), autoescape=True, undefined=jinja2.StrictUndefined
    )


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env().get_template(name).render(**context), status_code=status, headers=SECURITY_HEADERS)


def _refuse(status: int = 403, message: str = "This page needs a valid personal link.") -> HTMLResponse:
    return _page("message.html", status=status, title="Not allowed" if status == 403 else "Bad request",
                 message=message)  # fmt: skip


def _speaker_lines(lines: list[str]) -> list[dict[str, str]]:
    out = []
    for line in lines:
        who, _, text = line.partition(": ")
        out.append({"who": who, "text": text, "cls": "u1" if who == "User 1" else "u2"})
    return out


class _Store:
    """Blocking store operations, run in the thread pool; one short-lived connection per call."""

    def __init__(self, session: Session) -> None:
        self.session = session
        conn = connect(session.db_path)
        try:
            self.raters = {
                token: _RaterAuth(i, name, csrf)
                for i, name, token, csrf in conn.execute("SELECT id, name, token, csrf FROM raters")
            }
            self.total = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        finally:
            conn.close()

    def next_item(self, rater: _RaterAuth) -> tuple[int, str, dict[str, Any], int] | None:
        """(item id, task, payload, answered so far) of the first unanswered item; marks it served now."""
        conn = connect(self.session.db_path)
        try:
            row = conn.execute(
                "SELECT q.item_id, i.task, i.payload FROM queue q JOIN items i ON i.id = q.item_id "
                "WHERE q.rater_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM answers a WHERE a.rater_id = q.rater_id AND a.item_id = q.item_id) "
                "ORDER BY q.position LIMIT 1",
                (rater.id,),
            ).fetchone()
            done = conn.execute("SELECT COUNT(*) FROM answers WHERE rater_id = ?", (rater.id,)).fetchone()[0]
            if row is None:
                return None
            # The latest showing counts: a rater who left and came back is timed from the return.
            conn.execute(
                "UPDATE queue SET served_at = ? WHERE rater_id = ? AND item_id = ?", (time.time(), rater.id, row[0])
            )
            return int(row[0]), str(row[1]), json.loads(row[2]), int(done)
        finally:
            conn.close()

    def item_for(self, rater: _RaterAuth, item_id: int) -> tuple[str, dict[str, Any]] | None:
        conn = connect(self.session.db_path)
        try:
            row = conn.execute(
                "SELECT i.task, i.payload FROM queue q JOIN items i ON i.id = q.item_id "
                "WHERE q.rater_id = ? AND q.item_id = ?",
                (rater.id, item_id),
            ).fetchone()
            return None if row is None else (str(row[0]), json.loads(row[1]))
        finally:
            conn.close()

    def answer(self, rater: _RaterAuth, item_id: int, answer: dict[str, Any]) -> bool:
        """Store one answer in one transaction; False when this rater had already answered the item."""
        conn = connect(self.session.db_path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO answers(rater_id, item_id, answer, served_at, answered_at) "
                    "SELECT rater_id, item_id, ?, served_at, ? FROM queue WHERE rater_id = ? AND item_id = ?",
                    (json.dumps(answer, sort_keys=True), time.time(), rater.id, item_id),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return cur.rowcount == 1
        finally:
            conn.close()


def _parse_answer(task: str, payload: dict[str, Any], form: Any) -> dict[str, Any] | None:
    if task == "turing":
        choice = form.get("choice")
        return {"choice": choice} if choice in TURING_CHOICES else None
    n = len(payload["candidates"])
    picked: list[int] = []
    for value in form.getlist("picked"):
        if not isinstance(value, str) or not value.isdigit() or int(value) >= n or int(value) in picked:
            return None
        picked.append(int(value))
    return {"picked": sorted(picked)}


def _same_origin(request: Request) -> bool:
    """Browser hints against cross-site posts; the per-rater CSRF token is the actual protection.

    Our pages send no referrer, so browsers send `Origin: null` on our own form posts; Sec-Fetch-Site
    (sent by current browsers) then tells same-origin from cross-site (another port is "same-site").
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def create_app(session: Session) -> Starlette:
    """The web app for one study. Raters and tokens are read once from the store."""
    store = _Store(session)

    def rater_of(request: Request) -> _RaterAuth | None:
        return store.raters.get(str(request.path_params.get("token", "")))

    async def rater_page(request: Request) -> Response:
        rater = rater_of(request)
        if rater is None:
            return _refuse()
        nxt = await run_in_threadpool(store.next_item, rater)
        if nxt is None:
            return _page("done.html", title="Thank you", total=store.total)
        item_id, task, payload, done = nxt
        context: dict[str, Any] = {
            "title": "Which one was written by a machine?" if task == "turing" else "Which belong to User 1?",
            "item_id": item_id,
            "csrf": rater.csrf,
            "action": f"/r/{request.path_params['token']}/answer",
            "number": done + 1,
            "total": store.total,
            "rater": rater.name,
        }
        if task == "turing":
            context.update(a=_speaker_lines(payload["a"]), b=_speaker_lines(payload["b"]))
            return _page("turing.html", **context)
        context.update(lines=_speaker_lines(payload["lines"]), candidates=[c["text"] for c in payload["candidates"]])
        return _page("faithfulness.html", **context)

    async def answer_post(request: Request) -> Response:
        rater = rater_of(request)
        if rater is None or not _same_origin(request):
            return _refuse()
        length = request.headers.get("content-length") or "0"
        if not length.isdigit() or int(length) > MAX_FORM_BYTES:
            return _refuse(413, "Too large.")
        form = await request.form(max_files=0, max_fields=32)
        csrf = form.get("csrf")
        if not isinstance(csrf, str) or not hmac.compare_digest(csrf.encode(), rater.csrf.encode()):
            return _refuse(message="This form is not yours (stale or forged). Open your personal link again.")
        raw_id = form.get("item_id")
        if not isinstance(raw_id, str) or not raw_id.isdigit():
            return _refuse(400, "No item in this answer.")
        item_id = int(raw_id)
        found = await run_in_threadpool(store.item_for, rater, item_id)
        if found is None:
            return _refuse(message="That item is not in your list.")
        answer = _parse_answer(found[0], found[1], form)
        if answer is None:
            return _refuse(400, "Please choose an answer.")
        await run_in_threadpool(store.answer, rater, item_id, answer)
        return RedirectResponse(f"/r/{request.path_params['token']}", status_code=303, headers=SECURITY_HEADERS)

    def admin_ok(request: Request) -> bool:
        given = str(request.path_params.get("admin", ""))
        return hmac.compare_digest(given.encode(), session.admin_token.encode())

    async def results_page(request: Request) -> Response:
        if not admin_ok(request):
            return _refuse()
        res = await run_in_threadpool(results, session)
        return _page("results.html", title="Results", r=res, csv_link=f"/admin/{session.admin_token}/results.csv")

    async def results_download(request: Request) -> Response:
        if not admin_ok(request):
            return _refuse()
        text = await run_in_threadpool(csv_text, session)
        headers = {**SECURITY_HEADERS, "Content-Disposition": 'attachment; filename="annotations.csv"'}
        return Response(text, media_type="text/csv; charset=utf-8", headers=headers)

    async def forbidden(request: Request) -> Response:
        return _refuse()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        # Unknown paths and wrong methods look the same as a bad token: nothing to learn from them.
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return _refuse(403 if status in (404, 405) else status, "Not allowed.")

    routes = [
        Route("/", forbidden, methods=["GET"]),
        Route("/r/{token}", rater_page, methods=["GET"]),
        Route("/r/{token}/answer", answer_post, methods=["POST"]),
        Route("/admin/{admin}/results", results_page, methods=["GET"]),
        Route("/admin/{admin}/results.csv", results_download, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: on_http_error})


def serve(session: Session, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the app with uvicorn until interrupted. No access log: request lines carry tokens."""
    import uvicorn

    uvicorn.run(create_app(session), host=host, port=port, log_level="warning", access_log=False, server_header=False)
