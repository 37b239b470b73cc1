"""A round streams its pairs: a bounded window in flight, outcomes written in pair order as soon as the pairs
before them are, every started pair finished before an error or a stop is passed on."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from personaloom.records import Conversation, Pair
from personaloom.stages.iteration import _stream
from personaloom.stages.round import PairOutcome
from personaloom.stop import RunStopped


def _pairs(n: int) -> list[Pair]:
    return [Pair(id=f"p{i:03d}", user1_persona=["x"], user2_persona=["y"])
            for i in range(n)]


class Work:
    """Finishes pairs in a shuffled order (each waits for its turn), records how many run at once."""

    def __init__(self, n: int, fail: dict[int, BaseException] | None = None) -> None:
        order = list(range(n))
        random.Random(3).shuffle(order)
        self.rank = {i: r for r, i in enumerate(order)}
        self.fail = fail or {}
        self.running = self.most = 0
        self.started: list[int] = []
        self.finished: list[int] = []

    async def __call__(self, pair: Pair) -> PairOutcome:
        i = int(pair.id[1:])
        self.started.append(i)
        self.running += 1
        self.most = max(self.most, self.running)
        for _ in range(self.rank[i] % 7):
            await asyncio.sleep(0)
        self.running -= 1
        self.finished.append(i)
        if i in self.fail:
            raise self.fail[i]
        return PairOutcome(pair_id=pair.id, iteration=1)


def test_window_bounds_the_pairs_in_flight_and_output_keeps_pair_order() -> None:
    pairs, work, emitted = _pairs(100), Work(100), []
    stopped = asyncio.run(_stream(pairs, work, 8, lambda p, o: emitted.append(p.id)))
    assert stopped is None
    assert emitted == [p.id for p in pairs]
    assert work.most <= 8 and sorted(work.finished) == list(range(100))
    assert work.finished != sorted(work.finished)  # they did finish out of order


def test_an_error_lets_started_pairs_finish_then_is_raised() -> None:
    pairs, work, emitted = _pairs(50), Work(50, {10: ValueError("boom")}), []
    with pytest.raises(ValueError, match="boom"):
        asyncio.run(_stream(pairs, work, 8, lambda p, o: emitted.append(p.id)))
    assert sorted(work.finished) == sorted(work.started) and len(work.started) < 50
    assert "p010" not in emitted and emitted == [p.id for p in pairs[: len(emitted)]]


def test_a_stop_starts_no_new_pair_and_keeps_the_finished_ones() -> None:
    pairs, work, emitted = _pairs(50), Work(50, {12: RunStopped("stopped")}), []
    stopped = asyncio.run(_stream(pairs, work, 8, lambda p, o: emitted.append(p.id)))
    assert isinstance(stopped, RunStopped)
    assert sorted(work.finished) == sorted(work.started) and len(work.started) < 50
    assert "p012" not in emitted and len(emitted) == len(work.started) - 1


def test_a_failed_write_lets_started_pairs_finish_then_is_raised() -> None:
    pairs, work = _pairs(40), Work(40)

    def emit(pair: Pair, outcome: PairOutcome) -> None:
        if pair.id == "p005":
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(_stream(pairs, work, 8, emit))
    assert sorted(work.finished) == sorted(work.started) and len(work.started) < 40


def test_no_pairs_and_a_cancelled_round() -> None:
    assert asyncio.run(_stream([], Work(0), 8, lambda p, o: None)) is None

    async def cancel_soon() -> list[int]:
        work = Work(30)
        round_ = asyncio.ensure_future(_stream(_pairs(30), work, 8, lambda p, o: None))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return [len(pending)]  # the pairs it started were cancelled and awaited: none is left running

    assert asyncio.run(cancel_soon()) == [0]


@pytest.mark.timeout(60)  # before the fix this deadlocked: the window counted from the stuck pair
def test_a_slow_first_pair_does_not_idle_the_window() -> None:
    """A pair stuck in retries: the others keep the window full (their outcomes wait, bounded, to be written)."""
    release = asyncio.Event()
    most = 0
    running = 0

    async def work(pair: Pair) -> PairOutcome:
        nonlocal most, running
        running += 1
        most = max(most, running)
        if pair.id == "p000":
            await release.wait()
        else:
            await asyncio.sleep(0)
            if pair.id == "p020":  # 20 pairs after the stuck one: within 4 x BUFFER_PER_SLOT waiting outcomes
                release.set()
        running -= 1
        return PairOutcome(pair_id=pair.id, iteration=1)

    emitted: list[str] = []
    assert asyncio.run(_stream(_pairs(100), work, 4, lambda p, o: emitted.append(p.id))) is None
    assert emitted == [p.id for p in _pairs(100)] and most <= 4


def test_few_shot_pool_holds_the_latest_winners_and_the_dataset_streams_from_the_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FEWSHOT_POOL_MAX = 1: round 3 sees the seeds and round 2's last winner only; the dataset still has
    # every kept conversation of the three rounds, in round order, read back from their selected.jsonl.
    from personaloom import pipeline
    from personaloom.config import build_config
    from personaloom.stages import iteration

    monkeypatch.setattr(iteration, "FEWSHOT_POOL_MAX", 1)
    monkeypatch.setattr(pipeline, "FEWSHOT_POOL_MAX", 1)
    pools: dict[int, set[str]] = {}
    real = iteration.converse

    async def spy(pair: Pair, pool: list[Conversation], route: Any, config: Any, k: int) -> Any:
        pools.setdefault(k, set()).update(c.id for c in pool)
        return await real(pair, pool, route, config, k)

    monkeypatch.setattr(iteration, "converse", spy)
    out = tmp_path / "run"
    config = build_config(overrides=[
        "backend.kind=fake", f"out={out}", "generate.pairs=6", "generate.iterations=3", "expand.new_attributes=4",
        "expand.bootstrap_steps=1", "profiles.profiles=12"])
    pipeline.run(config)
    rounds = [[json.loads(line)["id"] for line in (out / "iterations" / str(k) / "selected.jsonl").open()]
              for k in (1, 2, 3)]
    assert [len(r) for r in rounds] == [2, 2, 2]
    written = [json.loads(line)["id"] for line in (out / "conversations.jsonl").open()]
    assert written == [i for r in rounds for i in r]
    winners = set(written)
    assert pools[1] & winners == set()
    assert pools[2] & winners == {rounds[0][-1]} and pools[3] & winners == {rounds[1][-1]}
    assert pools[1] - winners == pools[3] - winners != set()  # the seed examples stay
    assert json.loads((out / "stats.json").read_text())["conversations"] == 6


def test_map_window_bounds_items_in_flight_keeps_order_and_stops_on_the_first_error() -> None:
    from personaloom.aio import map_window

    running, peak, started = 0, 0, []

    async def work(k: int, fail: int = -1) -> int:
        nonlocal running, peak
        started.append(k)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(random.Random(k).random() / 200)
        running -= 1
        if k == fail:
            raise RunStopped("stop")
        return k * k

    assert asyncio.run(map_window(work, 100, 7)) == [k * k for k in range(100)]
    assert peak == 7 and sorted(started) == list(range(100))
    started.clear()
    with pytest.raises(RunStopped):
        asyncio.run(map_window(lambda k: work(k, fail=40), 100, 7))
    assert running == 0  # the started ones ended first
    assert 40 in started and len(started) < 100  # nothing new after the error
    assert asyncio.run(map_window(work, 0, 7)) == []


def test_report_counts_from_the_round_summary_equal_a_scan_of_its_files(tmp_path: Path) -> None:
    """The round writer tallies each expert's decisions and rejected conversations in summary.json; the report
    reads them there (a 20k-pair round has 780k verdict lines) and gets what a scan of verdicts.jsonl gives."""
    from personaloom.evaluate.report import load_run_info
    from personaloom.records import Failure, Turn, Verdict
    from personaloom.stages.iteration import _RoundWriter
    from personaloom.stats import Stats

    rnd = random.Random(5)
    folder = tmp_path / "run" / "iterations" / "1"
    folder.mkdir(parents=True)
    with _RoundWriter(folder, 1) as writer:
        for p in range(30):
            convs = [Conversation(id=f"p{p}-c{c}", user1_persona=["a"], user2_persona=["b"], pair_id=f"p{p}",
                                  turns=[Turn(speaker=1, text="Hi"), Turn(speaker=2, text="Hey")]) for c in range(3)]
            verdicts = [Verdict(conversation_id=c.id, expert=e, decision=rnd.choice(["pass", "reject", "abstain"]),
                                reasons=["too_short"] if e == "format" else None)
                        for c in convs for e in ("format", "toxicity")]
            verdicts += [Verdict(conversation_id=convs[0].id, expert="toxicity", decision="reject")]  # twice
            verdicts += [Verdict(conversation_id=convs[1].id, expert="depth", decision=d, opponent_id=convs[2].id)
                         for d in ("win", "tie")]
            outcome = PairOutcome(f"p{p}", 1, candidates=convs, verdicts=verdicts,
                                  selected=convs[0] if p % 3 else None)
            if p % 7 == 0:
                outcome.failures.append(Failure(stage="generate", item_id=f"p{p}-c9", reason="empty"))
            writer.add(Pair(id=f"p{p}", user1_persona=["a"], user2_persona=["b"]), outcome)
        writer.finish(Stats(), partial=False)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["decisions"]["toxicity"]["reject"] >= 30 and summary["rejected_conversations"]["toxicity"] >= 30
    from_summary = load_run_info(tmp_path / "run")
    for key in ("decisions", "rejected_conversations"):  # as an earlier version wrote it: scan the files
        summary.pop(key)
    (folder / "summary.json").write_text(json.dumps(summary))
    scanned = load_run_info(tmp_path / "run")
    assert from_summary is not None and scanned is not None
    assert from_summary.iterations == scanned.iterations and from_summary.iterations[1]["candidates"] == 90
    assert {e: dict(c) for e, c in from_summary.verdicts.items()} == {e: dict(c) for e, c in scanned.verdicts.items()}
