"""The local executor (LLM): order, accounting per stage, one shared concurrency bound with no batch
barrier (continuous scheduling), in-flight deduplication, error handling, and the progress display."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from personaloom.backends.base import Backend, ChatRequest, ChatResult, Message, SamplingParams, Usage
from personaloom.backends.cache import ResponseCache
from personaloom.errors import BackendError
from personaloom.executors.local import LLM
from personaloom.stats import Stats


class TimedBackend(Backend):
    """Replies after the delay named in the prompt ("sleep 0.2: ..."); records concurrency."""

    kind = "timed"

    def __init__(self, max_concurrency: int = 2) -> None:
        self.max_concurrency = max_concurrency
        self.active = 0
        self.peak = 0
        self.calls: list[str] = []
        self.finished: list[str] = []

    @property
    def model_id(self) -> str:
        return "timed"

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        out = []
        for request in requests:
            text = request.messages[-1].content
            self.calls.append(text)
            if text.startswith("boom"):
                raise RuntimeError("backend bug")
            if text.startswith("dead"):
                raise BackendError("server gone")
            self.active += 1
            self.peak = max(self.peak, self.active)
            await asyncio.sleep(float(text.split()[1].rstrip(":")) if text.startswith("sleep") else 0.01)
            self.active -= 1
            self.finished.append(text)
            out.append(ChatResult(texts=[text.upper()], usage=Usage(prompt_tokens=4, completion_tokens=3),
                                  finish_reason="stop"))
        return out


def req(text: str, stage: str = "generate") -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], params=SamplingParams(seed=0),
                       metadata={"stage": stage})


def test_results_in_order_and_accounted_per_stage() -> None:
    stats = Stats()
    llm = LLM(TimedBackend(4), None, stats, progress=False)
    results = llm.run([req("a"), req("b", "critic"), req("c")])
    assert [r.text for r in results] == ["A", "B", "C"]
    d = stats.to_dict()
    assert d["llm"]["calls"] == 3 and d["llm"]["completion_tokens"] == 9
    assert d["stages"]["generate"]["calls"] == 2 and d["stages"]["critic"]["calls"] == 1
    assert llm.run([]) == []


def test_an_llm_stage_gets_its_span_as_wall_time() -> None:
    """A stage no `Stats.stage` block times (critic.depth, say) has its first-submitted-to-last-result span, on
    an injected clock that moves by what the backend sleeps (b's 0.01 s ends first, then a's 0.2 s)."""
    backend = TimedBackend(4)
    now = [0.0]
    stats = Stats(clock=lambda: now[0])
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        await real_sleep(seconds)
        now[0] += seconds

    llm = LLM(backend, None, stats, progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", sleep)
        llm.run([req("sleep 0.2: a", "critic"), req("b")])
    stages = stats.to_dict()["stages"]
    assert stages["critic"]["wall_s"] == pytest.approx(0.21) and stages["generate"]["wall_s"] == pytest.approx(0.01)
    with stats.stage("generate"):  # a timed stage keeps its own figure: here no time passed
        pass
    assert stats.to_dict()["stages"]["generate"]["wall_s"] == 0.0


class GatedBackend(TimedBackend):
    """A request named "gate..." waits until `gate` is set; every other one returns at once."""

    def __init__(self, max_concurrency: int) -> None:
        super().__init__(max_concurrency)
        self.gate = asyncio.Event()

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        for request in requests:
            if request.messages[-1].content.startswith("gate"):
                self.active += 1
                self.peak = max(self.peak, self.active)
                await self.gate.wait()
                self.active -= 1
        return await super().agenerate(requests)


def test_shared_bound_without_batch_barrier() -> None:
    """Two callers, concurrency 2: caller A's blocked request must not hold back caller B's (events, not
    sleeps: the order is forced, not timed)."""
    backend = GatedBackend(2)
    llm = LLM(backend, None, Stats(), progress=False)

    async def go() -> None:
        a = asyncio.create_task(llm.complete([req("gate: a-slow"), req("a-quick")]))
        b = await llm.complete([req(f"b{i}") for i in range(4)])
        # Caller B finished while A's first request still holds one of the two slots.
        assert [r.text for r in b] == [f"B{i}" for i in range(4)] and not a.done()
        assert "gate: a-slow" not in backend.finished
        backend.gate.set()
        assert [r.text for r in await a] == ["GATE: A-SLOW", "A-QUICK"]

    asyncio.run(go())
    assert backend.peak <= 2 and backend.finished[-1] == "gate: a-slow"


def test_many_callers_keep_the_backend_saturated() -> None:
    backend = TimedBackend(8)
    llm = LLM(backend, None, Stats(), progress=False)
    seen: list[int] = []

    async def go() -> None:
        async def watch() -> None:
            while True:
                seen.append(llm.in_flight)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(llm.complete([req(f"sleep 0.05: p{p}-{i}") for i in range(3)]) for p in range(20)))
        watcher.cancel()

    asyncio.run(go())
    assert backend.peak == 8 and max(seen) == 8


def test_identical_requests_in_flight_are_sent_once(tmp_path: Path) -> None:
    backend = TimedBackend(4)
    stats = Stats()
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        llm = LLM(backend, cache, stats, progress=False)

        async def go() -> list[list[ChatResult]]:
            same = [req("sleep 0.2: same")]
            return await asyncio.gather(llm.complete(same), llm.complete(same), llm.complete(same))

        results = asyncio.run(go())
    assert backend.calls == ["sleep 0.2: same"]
    assert [r[0].text for r in results] == ["SLEEP 0.2: SAME"] * 3
    assert sorted(r[0].cached for r in results) == [False, True, True]
    assert stats.llm["calls"] == 1 and stats.llm["cache_hits"] == 2


def test_backend_bug_becomes_an_error_result_and_backend_error_propagates() -> None:
    stats = Stats()
    llm = LLM(TimedBackend(2), None, stats, progress=False)
    results = llm.run([req("fine"), req("boom now")])
    assert results[0].ok and not results[1].ok and "backend bug" in (results[1].error or "")
    assert stats.llm["errors"] == 1
    with pytest.raises(BackendError, match="server gone"):
        llm.run([req("sleep 0.5: x"), req("dead")])
    assert llm.in_flight == 0


def test_progress_display_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    backend = TimedBackend(2)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        llm = LLM(backend, cache, Stats(), progress=True)
        llm.run([req("a"), req("b", "critic")])
        llm.run([req("a")])  # a hit
        asyncio.run(llm.aclose())
    quiet = LLM(backend, None, Stats(), progress=False)
    assert quiet.run([req("c")])[0].ok


def test_progress_keeps_its_eta_while_requests_arrive_and_its_rate_once_done() -> None:
    """Totals grow as callers submit: that must not drop the speed samples (the ETA column would stay blank
    for the whole stage), and a finished stage's tokens/s is over its own time, not decaying afterwards."""
    import time

    from personaloom.executors.local import Endpoint, _StageProgress, _TokenRate

    progress, endpoint = _StageProgress(True), Endpoint("e", 4)
    endpoint.limit = 2
    assert progress._progress is not None
    try:
        progress.submitted("s", 10)
        for _ in range(5):
            progress.finished("s", ChatResult(texts=["x"], usage=Usage(completion_tokens=10)), endpoint)
            progress.submitted("s", 1)  # more requests arrive as others finish
            time.sleep(0.01)
        task = progress._progress.tasks[progress._tasks["s"]]
        assert task.total == 15 and task.completed == 5 and task.speed is not None
        assert task.fields["limit"] == "2 at once (cut from 4)"
        for _ in range(10):
            progress.finished("s", ChatResult(texts=["x"], usage=Usage(completion_tokens=10)), endpoint)
        assert task.finished
        rate = str(_TokenRate().render(task))
        time.sleep(0.3)
        assert str(_TokenRate().render(task)) == rate and rate.endswith("tok/s")
    finally:
        progress.stop()
