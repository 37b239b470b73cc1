"""The response cache: a SQLite file (usually `<run dir>/cache.sqlite`) mapping request hashes to results.

In: a key from `ChatRequest.cache_key(kind, model_id)` and a successful `ChatResult`.
Out: the stored result (with `cached=True`) on a later `get` of the same key, in this process or any
other. WAL mode; `busy_timeout` makes writers of several threads or processes wait for each other instead
of failing. `put` is its own committed transaction, so a process killed with SIGKILL loses at most the
result it was writing. `aput` (the executor's) returns once the result is committed too, but the results
stored in one turn of the event loop share one commit: a commit is most of a put's cost (a dozen
system calls), and at hundreds of calls per second several arrive per turn. Likewise a `get` given the
running loop reads inside that turn's transaction instead of opening one of its own (each costs a
shared-memory lock and unlock): a turn's reads see the file as it was at the turn's first read.
"""

from __future__ import annotations

import asyncio
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


_PER_CALL = {"cached", "retries", "reasks"}


class ResponseCache:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # The loop whose current turn has a transaction open (committed by a callback at the turn's end),
        # whether that transaction has written, and the waiters of its rows (`aput`).
        self._turn: asyncio.AbstractEventLoop | None = None
        self._writing = False
        self._batch: asyncio.Future[None] | None = None
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
            self._db.execute("PRAGMA cache_size=-65536")
            # Each insert dirties a random leaf of the hash-keyed index; checkpointing every 10,000 pages
            # (a WAL of up to ~40 MB) instead of 1,000 copies each such page to the file ~10x less often:
            # measured 28 -> 22 us of CPU per stored result at 300k rows (commits of 16).
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"{self.path}: cannot open response cache ({exc})") from None

    def get(self, key: str, loop: asyncio.AbstractEventLoop | None = None) -> ChatResult | None:
        """The stored result of `key` (`cached` set), or None. With `loop` (the running one), the read joins
        the transaction of the loop's current turn. Raises OutputError when the file cannot be read."""
        if loop is not None:
            self._join_turn(loop)
        else:
            self._settle()
        with self._lock:
            try:
                if loop is not None and not self._db.in_transaction:
                    self._db.execute("BEGIN")  # a read transaction, until the turn's commit or a write
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
        result.cached, result.retries = True, 0  # a fresh object: no copy needed
        return result

    def put(self, key: str, result: ChatResult) -> bool:
        """Store a successful result and commit it; errors are never cached (a re-run retries them).
        True if stored. Raises OutputError when the file cannot be written."""
        if not self._insert(key, result):
            return False
        self._commit()
        return True

    async def aput(self, key: str, result: ChatResult) -> bool:
        """`put` for coroutines: returns (True) once the result is committed. The results stored during one
        turn of the event loop are committed together at its end. Raises OutputError like `put`."""
        if not result.ok:
            return False
        loop = asyncio.get_running_loop()
        self._join_turn(loop)
        self._insert(key, result, batch=True)
        if self._batch is None:
            self._batch = loop.create_future()
        await asyncio.shield(self._batch)  # cancelled or not, the row is committed with its batch
        return True

    def _settle(self) -> None:
        """Commit the transaction of a loop that ended before its turn's commit ran (its reads would see an
        old state, and its rows would wait for the next write)."""
        if self._turn is not None and self._turn.is_closed():
            self._commit()

    def _join_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure the current turn of `loop` ends with a commit (scheduled at its first read or write)."""
        if self._turn is loop:
            return
        if self._turn is not None:
            self._commit()  # a turn of a loop that ended before its commit did: commit it now
        self._turn = loop
        loop.call_soon(self._commit, False)  # the batch's waiters raise a failed commit themselves

    def _insert(self, key: str, result: ChatResult, batch: bool = False) -> bool:
        if not result.ok:
            return False
        # Stored without the per-call fields (a row reads back with their defaults: not cached, no retries).
        blob = result.model_dump_json(exclude=_PER_CALL)
        with self._lock:
            try:
                if self._db.in_transaction and not self._writing:
                    # End the turn's reads: a write starts from the newest state (upgrading an old read
                    # transaction fails at once when another process has written since).
                    self._db.execute("COMMIT")
                if batch and not self._db.in_transaction:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._writing = True
                self._db.execute(
                    "INSERT OR REPLACE INTO responses (key, result, created) VALUES (?, ?, ?)",
                    (key, blob, time.time()),
                )
            except sqlite3.Error as exc:
                raise OutputError(f"{self.path}: cannot write response cache ({exc})") from None
        return True

    def _commit(self, raise_error: bool = True) -> None:
        """Commit what is pending (in autocommit mode a lone put already is) and release its batch's waiters.
        Raises OutputError when the commit fails (unless `raise_error` is False: then only the waiters do)."""
        batch, self._batch, self._turn = self._batch, None, None
        error: OutputError | None = None
        with self._lock:
            self._writing = False
            try:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                error = OutputError(f"{self.path}: cannot write response cache ({exc})")
        # A batch whose loop has ended has no waiters left to release (and a closed loop takes no callback).
        if batch is not None and not batch.done() and not batch.get_loop().is_closed():
            if error is None:
                batch.set_result(None)
            else:
                batch.set_exception(error)
                batch.exception()  # retrieved here: each waiter raises it
        if error is not None and raise_error:
            raise error

    def __contains__(self, key: object) -> bool:
        self._settle()
        with self._lock:
            row = self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        self._settle()
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Commit what is pending and close the file."""
        self._commit()
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
