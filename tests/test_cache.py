"""The SQLite response cache: hit/miss, errors never cached, concurrent writers (threads and processes),
entries committed before a SIGKILL survive it, and a second identical run pays zero calls."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personaloom.backends.base import ChatRequest, ChatResult, Message, SamplingParams, Usage
from personaloom.backends.cache import ResponseCache
from personaloom.backends.fake import FakeBackend
from personaloom.executors.local import LLM
from personaloom.stats import Stats

SRC = str(Path(__file__).resolve().parents[1] / "src")


def result(text: str) -> ChatResult:
    return ChatResult(texts=[text], usage=Usage(prompt_tokens=3, completion_tokens=2), finish_reason="stop",
                      latency_s=0.5, retries=2)


def test_hit_and_miss(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        assert cache.get("k1") is None
        assert cache.put("k1", result("hello"))
        hit = cache.get("k1")
        assert hit is not None and hit.cached and hit.texts == ["hello"] and hit.retries == 0
        assert hit.usage.completion_tokens == 2 and hit.finish_reason == "stop"
        assert "k1" in cache and len(cache) == 1
    with ResponseCache(tmp_path / "cache.sqlite") as again:  # persisted
        assert again.get("k1") is not None


def test_errors_are_not_cached(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert not cache.put("bad", ChatResult(error="HTTP 500"))
        assert not cache.put("empty", ChatResult(texts=[]))
        assert cache.get("bad") is None and len(cache) == 0


def test_key_covers_what_determines_the_reply() -> None:
    base = ChatRequest(messages=[Message(role="user", content="hi")], params=SamplingParams(seed=1))
    key = base.cache_key("embedded", "m.gguf:1")
    assert key == base.model_copy(update={"metadata": {"stage": "x"}}).cache_key("embedded", "m.gguf:1")
    other_seed = base.model_copy(update={"params": SamplingParams(seed=2)})
    assert len({key, other_seed.cache_key("embedded", "m.gguf:1"), base.cache_key("openai", "m.gguf:1"),
                base.cache_key("embedded", "m.gguf:2")}) == 4


def test_key_is_stable_across_versions() -> None:
    """A changed key is a miss: a run resumed after an upgrade would pay for every call again. This digest is
    sha256 of the canonical JSON {backend, messages, model, params, schema} (sorted keys, compact, UTF-8)."""
    request = ChatRequest(
        messages=[Message(role="system", content="Judge."), Message(role="user", content='Привет "x"\n{y}')],
        params=SamplingParams(seed=7, max_tokens=99, stop=["\n\n"]),
        json_schema={"type": "object", "properties": {"b": {"enum": ["A", "B"]}}},
        metadata={"stage": "critic.depth"},
    )
    assert request.cache_key("openai", "m") == "820851e45959e8e647880af9ef76e3005d5073b9765a158b32ff595e0cbab203"


def test_rows_of_earlier_versions_read_back(tmp_path: Path) -> None:
    """Rows are stored without the per-call fields now; rows that have them (earlier versions) still read."""
    path = tmp_path / "cache.sqlite"
    with ResponseCache(path) as cache:
        cache.put("new", result("fresh"))
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT result FROM responses WHERE key = 'new'").fetchone()[0]
        assert '"cached"' not in stored and '"retries"' not in stored
        old = result("old").model_copy(update={"retries": 0}).model_dump_json()
        db.execute("INSERT INTO responses (key, result, created) VALUES ('old', ?, 0)", (old,))
    with ResponseCache(path) as cache:
        for key, text in (("new", "fresh"), ("old", "old")):
            hit = cache.get(key)
            assert hit is not None and hit.cached and hit.retries == 0 and hit.texts == [text]


def test_aput_returns_committed_and_shares_one_commit_per_loop_turn(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    commits = 0

    async def go(cache: ResponseCache) -> list[int]:
        reader = sqlite3.connect(path)  # another connection sees committed rows only

        async def store(i: int) -> int:
            assert await cache.aput(f"k{i}", result(str(i)))
            return int(reader.execute("SELECT COUNT(*) FROM responses WHERE key = ?", (f"k{i}",)).fetchone()[0])

        try:
            seen = await asyncio.gather(*(store(i) for i in range(50)))
            assert not await cache.aput("bad", ChatResult(error="HTTP 500"))
            return seen
        finally:
            reader.close()

    with ResponseCache(path) as cache:
        commit = cache._commit

        def counting(raise_error: bool = True) -> None:
            nonlocal commits
            commits += 1
            commit(raise_error)

        cache._commit = counting  # type: ignore[method-assign]
        assert asyncio.run(go(cache)) == [1] * 50  # each aput returned after its row was committed
        assert commits == 1 and len(cache) == 50  # the 50 results of one loop turn: one commit
        assert cache.put("sync", result("s")) and "sync" in cache  # put commits at once
    with ResponseCache(path) as again:
        assert len(again) == 51 and again.get("k49") is not None


def test_concurrent_writers_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {SRC!r})
        from personaloom.backends.base import ChatResult
        from personaloom.backends.cache import ResponseCache
        cache = ResponseCache({str(path)!r})
        for i in range(150):
            cache.put(f"proc{{sys.argv[1]}}-{{i}}", ChatResult(texts=[str(i)]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(n)]) for n in range(2)]

    def put_many(n: int) -> None:
        for i in range(100):
            cache.put(f"thread{n}-{i}", result(str(i)))

    threads = [threading.Thread(target=put_many, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(60) for p in procs] == [0, 0]
    assert len(cache) == 4 * 100 + 2 * 150
    cache.close()


def test_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {SRC!r})
        from personaloom.backends.base import ChatResult
        from personaloom.backends.cache import ResponseCache
        cache = ResponseCache({str(path)!r})
        i = 0
        while True:
            cache.put(f"k{{i}}", ChatResult(texts=["x" * 2000 + str(i)]))
            print(i, flush=True)  # only after the put returned, i.e. was committed
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = -1
    while committed < 200:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The database is intact and holds every entry reported as committed.
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with ResponseCache(path) as cache:
        for i in range(committed + 1):
            hit = cache.get(f"k{i}")
            assert hit is not None and hit.text.endswith(str(i))


def test_second_identical_run_makes_zero_calls(tmp_path: Path) -> None:
    requests = [
        ChatRequest(messages=[Message(role="user", content=f"q{i}")], params=SamplingParams(seed=i),
                    metadata={"stage": "generate"})
        for i in range(10)
    ]

    def invocation() -> tuple[Stats, list[ChatResult], FakeBackend]:
        backend = FakeBackend()
        stats = Stats()
        with ResponseCache(tmp_path / "cache.sqlite") as cache:
            results = LLM(backend, cache, stats, progress=False).run(requests)
        return stats, results, backend

    first_stats, first, first_backend = invocation()
    assert first_stats.llm["calls"] == 10 and first_stats.llm["cache_hits"] == 0
    assert len(first_backend.requests) == 10
    second_stats, second, second_backend = invocation()
    assert second_stats.llm["calls"] == 0 and second_stats.llm["cache_hits"] == 10
    assert second_stats.llm["prompt_tokens"] == 0 and second_backend.requests == []
    assert second_stats.to_dict()["stages"]["generate"]["cache_hits"] == 10
    assert [r.texts for r in second] == [r.texts for r in first] and all(r.cached for r in second)


def test_a_batch_left_by_an_ended_loop_is_committed_later(tmp_path: Path) -> None:
    """A loop that ends before its commit turn (an error, a stop) leaves its rows pending: the next aput in
    another loop commits them (close() would too)."""
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    pending: list[asyncio.Task[bool]] = []

    async def leave_pending() -> None:
        pending.append(asyncio.ensure_future(cache.aput("early", result("e"))))
        await asyncio.sleep(0)  # the row is inserted, its commit scheduled for the next turn...
        asyncio.get_running_loop().stop()  # ...which never comes
        await asyncio.sleep(1)

    loop = asyncio.new_event_loop()
    with pytest.raises(RuntimeError, match="stopped"):
        loop.run_until_complete(leave_pending())
    pending[0].cancel()
    loop.close()
    with contextlib.closing(sqlite3.connect(path)) as reader:
        assert reader.execute("SELECT COUNT(*) FROM responses").fetchone() == (0,)  # not committed yet
        assert asyncio.run(cache.aput("later", result("l")))
        assert reader.execute("SELECT COUNT(*) FROM responses").fetchone() == (2,)
    cache.close()


def test_gets_of_one_loop_turn_share_a_read_transaction_and_never_block_a_write(tmp_path: Path) -> None:
    """The executor's gets (given the running loop) read inside one transaction per loop turn: the next turn
    sees what another process committed meanwhile, and a write after such a read in the same turn starts
    from the newest state instead of failing to upgrade the old snapshot ("database is locked")."""
    path = tmp_path / "cache.sqlite"
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection
    cache = ResponseCache(path, busy_timeout_ms=2000)
    other.execute("PRAGMA busy_timeout=2000")

    def other_writes(key: str) -> None:
        other.execute("INSERT INTO responses (key, result, created) VALUES (?, ?, 0)",
                      (key, result(key).model_dump_json()))

    async def go() -> None:
        loop = asyncio.get_running_loop()
        assert cache.get("a", loop) is None and cache._db.in_transaction  # the turn's read transaction
        other_writes("a")
        assert cache.get("a", loop) is None  # the same turn: the snapshot of its first read
        assert await cache.aput("mine", result("m"))  # a write in that turn: no "database is locked"
        hit = cache.get("a", loop)  # a later turn: the other's row is there
        assert hit is not None and hit.cached and hit.texts == ["a"]
        await asyncio.sleep(0)
        assert not cache._db.in_transaction  # committed at the turn's end
        other_writes("b")

    asyncio.run(go())
    assert cache.get("b") is not None and cache.get("mine") is not None
    # A read transaction left by a loop that ended before its turn's commit: a later read commits it first.
    loop = asyncio.new_event_loop()
    assert cache.get("c", loop) is None and cache._db.in_transaction
    loop.close()
    other_writes("c")
    assert "c" in cache and cache.get("c") is not None and not cache._db.in_transaction
    assert other.execute("SELECT COUNT(*) FROM responses").fetchone() == (4,)
    cache.close()
    other.close()


@settings(max_examples=200, deadline=None)
@given(
    contents=st.lists(st.text(), min_size=1, max_size=4),
    kind=st.text(min_size=1, max_size=8),
    model=st.text(max_size=12),
    seed=st.integers(0, 2**31 - 1),
    stop=st.lists(st.text(max_size=4), max_size=2),
    schema=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
)
def test_key_is_the_digest_of_the_canonical_json(
    contents: list[str], kind: str, model: str, seed: int, stop: list[str], schema: dict[str, int] | None
) -> None:
    """The key, built from parts with each message's JSON memoised, equals sha256 of json.dumps of the whole."""
    messages = [Message(role=("user", "assistant", "system")[i % 3], content=c) for i, c in enumerate(contents)]
    request = ChatRequest(messages=messages, params=SamplingParams(seed=seed, stop=stop), json_schema=schema)
    payload = {"backend": kind, "model": model, "messages": [m.model_dump() for m in messages],
               "params": request.params.model_dump(), "schema": schema}
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert request.cache_key(kind, model) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
