"""The annotation store: one SQLite file (annotations.sqlite) holding items, raters and answers.

In: a dataset (run directory or conversation file), an optional reference file, the number of raters
and items, a seed. Out: a `Session` naming the store and the rater/admin tokens.

Where it lives: `default_out_dir(data)` is the run directory itself, or `<folder>/<stem>.annotate/` beside
a data file. `prepare()` builds the items once; running it again with the same data and settings reuses
the same items and tokens (so links stay valid and answers are kept); different settings or data are a
ConfigError rather than a silent mix of two studies. Every rater sees every item (in a per-rater seeded
order), so each item is shown to exactly `raters` raters.

SQLite runs in WAL mode; each answer is one transaction, and (rater, item) is unique, so a double post
stores one answer. Tokens come from `secrets.token_urlsafe` and the file is made private to its owner.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personaloom.annotate.tasks import faithfulness_items, turing_items
from personaloom.errors import ConfigError, InputError, OutputError
from personaloom.fsutil import ensure_dir
from personaloom.io import read_conversations
from personaloom.records import Conversation
from personaloom.rng import rng_for

DB_NAME = "annotations.sqlite"
SCHEMA_VERSION = "1"
TASKS = ("turing", "faithfulness")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token TEXT NOT NULL UNIQUE, csrf TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, task TEXT NOT NULL, payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
    rater_id INTEGER NOT NULL REFERENCES raters(id), position INTEGER NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items(id), served_at REAL,
    PRIMARY KEY (rater_id, item_id), UNIQUE (rater_id, position)
);
CREATE TABLE IF NOT EXISTS answers (
    rater_id INTEGER NOT NULL REFERENCES raters(id), item_id INTEGER NOT NULL REFERENCES items(id),
    answer TEXT NOT NULL, served_at REAL, answered_at REAL NOT NULL,
    PRIMARY KEY (rater_id, item_id)
);
"""


@dataclass(frozen=True)
class Rater:
    id: int
    name: str
    token: str


@dataclass(frozen=True)
class Session:
    """An annotation study on disk. `db_path` is the only state; the rest is read from it."""

    out_dir: Path
    db_path: Path
    raters: tuple[Rater, ...]
    admin_token: str
    items: int
    seed: int
    turing_items: int = 0
    faithfulness_items: int = 0

    def rater_links(self, base_url: str) -> list[tuple[str, str]]:
        """(rater name, link) per rater, e.g. base_url "http://127.0.0.1:8765"."""
        base = base_url.rstrip("/")
        return [(r.name, f"{base}/r/{r.token}") for r in self.raters]

    def results_link(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/admin/{self.admin_token}/results"


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting on locks."""
    conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error: one write lock for the whole unit."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def default_out_dir(data: str | Path) -> Path:
    """The run directory itself, or `<folder>/<stem>.annotate` beside a data file."""
    p = Path(data)
    return p if p.is_dir() else p.parent / f"{p.stem}.annotate"


def _data_file(data: str | Path) -> Path:
    p = Path(data)
    if p.is_dir():
        f = p / "conversations.jsonl"
        if not f.is_file():
            raise InputError("run directory has no conversations.jsonl", p)
        return f
    if not p.is_file():
        raise InputError("no such file or directory", p)
    return p


def _fingerprint(*paths: Path | None) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(b"\x1f")
        if p is None:
            continue
        try:
            with p.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise InputError(f"cannot read ({exc.strerror})", p) from None
    return h.hexdigest()


def _split(items: int, have_reference: bool) -> tuple[int, int]:
    """(turing, faithfulness) counts: half each (turing gets the odd one) when there is a reference."""
    if not have_reference:
        return 0, items
    return (items + 1) // 2, items // 2


def _read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {k: v for k, v in conn.execute("SELECT key, value FROM meta")}


def _session(out_dir: Path, db_path: Path, conn: sqlite3.Connection) -> Session:
    meta = _read_meta(conn)
    raters = tuple(Rater(i, n, t) for i, n, t in conn.execute("SELECT id, name, token FROM raters ORDER BY id"))
    counts = dict(conn.execute("SELECT task, COUNT(*) FROM items GROUP BY task").fetchall())
    return Session(
        out_dir,
        db_path,
        raters,
        meta["admin_token"],
        sum(counts.values()),
        int(meta["seed"]),
        int(counts.get("turing", 0)),
        int(counts.get("faithfulness", 0)),
    )


def load_session(out_dir: str | Path) -> Session:
    """The study stored in out_dir/annotations.sqlite (InputError when there is none)."""
    d = Path(out_dir)
    db = d / DB_NAME
    if not db.is_file():
        raise InputError(f"no {DB_NAME} here: run `personaloom annotate --data ...` first", d)
    try:
        conn = connect(db)
        try:
            return _session(d, db, conn)
        finally:
            conn.close()
    except (sqlite3.Error, KeyError) as exc:
        raise InputError(f"not a personaloom annotation store ({exc})", db) from None


def _build(
    conn: sqlite3.Connection,
    generated: list[Conversation],
    reference: list[Conversation],
    raters: int,
    items: int,
    seed: int,
    meta: dict[str, str],
    data_path: Path,
) -> None:
    n_turing, n_faith = _split(items, bool(reference))
    turing = turing_items(generated, reference, n_turing, seed)
    used = {t["generated_id"] for t in turing}
    # Faithfulness on conversations not already shown in the detection task, if there are enough.
    rest = [c for c in generated if c.id not in used]
    pool = [*generated, *reference]
    faith = faithfulness_items(rest, pool, n_faith + (n_turing - len(turing)), seed)
    if len(faith) < n_faith:
        faith = faithfulness_items(generated, pool, n_faith + (n_turing - len(turing)), seed)
    # Interleave the two tasks (item ids in this order; raters then see them in their own order).
    rows: list[tuple[str, dict[str, Any]]] = []
    for k in range(max(len(turing), len(faith))):
        rows.extend([("turing", turing[k])] if k < len(turing) else [])
        rows.extend([("faithfulness", faith[k])] if k < len(faith) else [])
    if not rows:
        raise InputError("no usable conversations for annotation (need turns and a User 1 persona)", data_path)
    with transaction(conn):
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", sorted(meta.items()))
        ids = [
            conn.execute(
                "INSERT INTO items(task, payload) VALUES (?, ?)", (task, json.dumps(payload, ensure_ascii=False))
            ).lastrowid
            for task, payload in rows
        ]
        for k in range(raters):
            cur = conn.execute(
                "INSERT INTO raters(name, token, csrf) VALUES (?, ?, ?)",
                (f"rater-{k + 1:02d}", secrets.token_urlsafe(24), secrets.token_urlsafe(32)),
            )
            order = list(ids)
            rng_for(seed, "annotate-rater-order", k).shuffle(order)
            conn.executemany(
                "INSERT INTO queue(rater_id, position, item_id) VALUES (?, ?, ?)",
                [(cur.lastrowid, pos, item) for pos, item in enumerate(order)],
            )


def prepare(
    data: str | Path,
    reference: str | Path | None,
    out_dir: Path,
    raters: int = 3,
    items: int = 20,
    seed: int = 0,
) -> Session:
    """Build (or reopen) the study in out_dir/annotations.sqlite and return its Session."""
    if raters < 1:
        raise ConfigError("annotate: --raters must be at least 1")
    if items < 1:
        raise ConfigError("annotate: --items must be at least 1")
    data_file = _data_file(data)
    ref_file = _data_file(reference) if reference is not None else None
    settings = {
        "schema": SCHEMA_VERSION,
        "raters": str(raters),
        "items": str(items),
        "seed": str(seed),
        "fingerprint": _fingerprint(data_file, ref_file),
    }
    out = ensure_dir(out_dir)
    db = out / DB_NAME
    existed = db.exists()
    try:
        if not existed:
            # Private from the start: the file holds the raters' tokens (SQLite gives -wal/-shm the same mode).
            os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = connect(db)
    except OSError as exc:
        raise OutputError(f"{db}: cannot create ({exc.strerror})") from None
    except sqlite3.Error as exc:
        raise OutputError(f"{db}: cannot open ({exc})") from None
    try:
        conn.executescript(_SCHEMA)
        stored = _read_meta(conn) if existed else {}
        if stored:
            diff = [k for k in settings if stored.get(k) != settings[k]]
            if diff:
                was = ", ".join(f"{k}={stored.get(k)}" for k in diff if k != "fingerprint")
                what = "other data" if "fingerprint" in diff else "other settings"
                raise ConfigError(
                    f"{db} was built from {what}{f' ({was})' if was else ''}: "
                    "use the same --data/--reference/--raters/--items/--seed, or another output folder"
                )
            return _session(out, db, conn)
        generated = read_conversations(data_file)
        ref = read_conversations(ref_file) if ref_file is not None else []
        meta = {
            **settings,
            "data": str(data_file),
            "reference": str(ref_file) if ref_file else "",
            "created_at": repr(time.time()),
            "admin_token": secrets.token_urlsafe(24),
        }
        _build(conn, generated, ref, raters, items, seed, meta, data_file)
        return _session(out, db, conn)
    except sqlite3.Error as exc:
        raise OutputError(f"{db}: {exc}") from None
    finally:
        conn.close()
