"""The response cache: a SQLite file (usually `<run dir>/cache.sqlite`) mapping request hashes to results.

In: a key from `ChatRequest.cache_key(kind, model_id)` and a successful `ChatResult`.
Out: the stored result (with `cached=True`) on a later `get` of the same key, in this process or any
other. Each `put` is its own committed transaction in WAL mode, so a process killed with SIGKILL
loses at most the result it was writing, and several threads or processes may write at once
(`busy_timeout` makes writers wait for each other instead of failing).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from personaloom.chat import ChatResult
from personaloom.errors import OutputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class ResponseCache:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, so every put is committed the moment it returns.
            self._db = sqlite3.connect(
                str(self.path), timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (not a power cut) and avoids an fsync per put.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"{self.path}: cannot open response cache ({exc})") from None

    def get(self, key: str) -> ChatResult | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT result FROM responses WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                raise OutputError(f"{self.path}: cannot read response cache ({exc})") from None
        if row is None:
            return None
        try:
            result = ChatResult.model_validate_json(row[0])
        except ValidationError:
            # A row written by an incompatible version: treat as a miss; the next put replaces it.
            return None
        return result.model_copy(update={"cached": True, "retries": 0})

    def put(self, key: str, result: ChatResult) -> bool:
        """Store a successful result; errors are never cached (a re-run retries them). True if stored."""
        if not result.ok:
            return False
        blob = result.model_copy(update={"cached": False, "retries": 0}).model_dump_json()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses (key, result, created) VALUES (?, ?, ?)",
                    (key, blob, time.time()),
                )
            except sqlite3.Error as exc:
                raise OutputError(f"{self.path}: cannot write response cache ({exc})") from None
        return True

    def __contains__(self, key: object) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
