"""The Python API (`import personaloom`), as a script, a notebook cell, an async program and a worker thread use
it: a Run with typed stats and streaming records, runs inside a running event loop and from a thread, a
graceful stop by request, by a cancelled task and by a KeyboardInterrupt that a second call resumes, no global
state left changed, the CLI's one-line errors, seed data and a Critic expert given as Python objects."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import personaloom as pl
from personaloom import rng
from personaloom.records import Conversation
from pipeline_server import demo_server

# Small sizes: a fake-backend run of 2 pairs makes about 120 calls and takes a few seconds.
SMALL: dict[str, Any] = {"expand": {"new_attributes": 4, "bootstrap_steps": 1}, "profiles": {"profiles": 6},
                         "generate": {"pairs": 2, "iterations": 1, "candidates": 2}}


def fake_run(out: Path, **overrides: Any) -> pl.Run:
    return pl.run(SMALL, out=out, backend="fake", progress=False, **overrides)


def test_the_package_exports_a_typed_api() -> None:
    assert (Path(pl.__file__).parent / "py.typed").is_file()
    for name in pl.__all__:
        assert getattr(pl, name) is not None, name
    for name in ("run", "arun", "expand", "profiles", "pair", "generate", "evaluate", "calibrate", "convert",
                 "read", "write", "load", "configure", "Run", "RunConfig", "Conversation", "PersonaloomError"):
        assert name in pl.__all__, name
    import personaloom.evaluate.suite  # noqa: F401  (a submodule import must not shadow the function)

    assert callable(pl.evaluate) and pl.evaluate.__module__ == "personaloom.api"
    assert callable(pl.calibrate) and pl.calibrate.__module__ == "personaloom.api"


def test_configure_takes_settings_sections_and_shortcuts(tmp_path: Path) -> None:
    cfg = pl.configure(SMALL, backend="fake", pairs=5, seed=3, **{"critic.mode": "listwise"})
    assert (cfg.backend.kind, cfg.generate.pairs, cfg.seed, cfg.critic.mode) == ("fake", 5, 3, "listwise")
    assert cfg.expand.new_attributes == 4 and cfg.profiles.profiles == 6
    again = pl.configure(cfg, pairs=7)  # a RunConfig keeps what it set
    assert (again.generate.pairs, again.backend.kind, again.critic.mode) == (7, "fake", "listwise")
    path = tmp_path / "run.yaml"
    path.write_text("backend:\n  kind: fake\ngenerate:\n  pairs: 4\n")
    assert pl.configure(path).generate.pairs == 4
    with pytest.raises(pl.ConfigError, match="did you mean 'candidates'"):
        pl.configure(canditates=3)
    with pytest.raises(pl.ConfigError, match=r"generate\.pairs"):
        pl.configure(pairs=-1)


def test_run_returns_a_run_with_typed_stats_and_streaming_records(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "out")
    assert run.out == tmp_path / "out" and run.report_path.is_file() and run.dataset_path.is_file()
    stats = run.stats
    assert stats.conversations >= 1 and not stats.partial and stats.stopped_by is None
    assert stats.latest.calls > 50 and stats.total.calls == stats.latest.calls and stats.total.invocations == 1
    assert stats.per_kept is not None and stats.per_kept.calls == pytest.approx(stats.total.calls / stats.conversations)
    convs = run.conversations()
    assert isinstance(convs, Iterator)  # streamed, not a list
    listed = list(convs)
    assert len(listed) == stats.conversations and all(isinstance(c, Conversation) for c in listed)
    assert all(c.turns and c.user1_persona for c in listed)
    assert len(list(run.attributes())) > 0 and len(list(run.profiles())) == 6 and len(list(run.pairs())) == 2
    ds = run.to_hf()
    assert ds.num_rows == stats.conversations and {"user1_persona", "turns", "id"} <= set(ds.column_names)
    frame = run.to_pandas()
    assert len(frame) == stats.conversations and "turns" in frame.columns
    assert run.config.generate.pairs == 2
    assert "conversations" in repr(run) and "<table" in run._repr_html_()
    # A second call resumes: nothing paid again, the same conversations.
    again = fake_run(tmp_path / "out")
    assert again.stats.latest.calls == 0 and again.stats.total.invocations == 2
    assert [c.id for c in again.conversations()] == [c.id for c in listed]
    assert pl.load(tmp_path / "out").stats.conversations == stats.conversations
    with pytest.raises(pl.InputError, match="no such run directory"):
        pl.load(tmp_path / "nothing")


def test_run_inside_a_running_event_loop(tmp_path: Path) -> None:
    """As in a notebook cell or an async web handler: the synchronous `run` and the awaitable `arun`, with
    no monkey-patched loop, no 'never awaited' warning, and the caller's loop free while the run goes on."""
    ticks: list[float] = []

    async def main() -> tuple[pl.Run, pl.Run]:
        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)

        ticker = asyncio.create_task(tick())
        sync_run = fake_run(tmp_path / "sync")  # blocks this loop, as a sync call in a cell does
        before = len(ticks)
        async_run = await pl.arun(SMALL, out=tmp_path / "async", backend="fake", progress=False)
        ticker.cancel()
        assert len(ticks) - before > 5, "arun held the caller's event loop"
        return sync_run, async_run

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sync_run, async_run = asyncio.run(main())
    assert sync_run.stats.conversations >= 1 and async_run.stats.conversations == sync_run.stats.conversations
    assert [c.turns for c in sync_run.conversations()] == [c.turns for c in async_run.conversations()]


def test_run_from_a_worker_thread_installs_no_signal_handler(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    before = signal.getsignal(signal.SIGINT)

    def work() -> None:
        try:
            seen["run"] = fake_run(tmp_path / "out")
        except BaseException as exc:  # reported below
            seen["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():  # the main thread's handler stays the caller's all along
        assert signal.getsignal(signal.SIGINT) is before
        thread.join(0.05)
    assert "error" not in seen, seen.get("error")
    assert seen["run"].stats.conversations >= 1


def _global_state() -> dict[str, Any]:
    loggers = [logging.getLogger(), *[logging.getLogger(n) for n in sorted(logging.root.manager.loggerDict)]]
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    return {
        "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
        "wakeup_fd": wakeup,
        "gc": (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()),
        "handlers": {lg.name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers},
        "logging_disable": logging.root.manager.disable,
        "warnings": list(warnings.filters),
        "environ": dict(os.environ),
        "streams": (sys.stdout, sys.stderr),
        "threads": {t.name for t in threading.enumerate() if not t.daemon},
    }


def test_a_run_leaves_no_global_state_changed(tmp_path: Path) -> None:
    fake_run(tmp_path / "warm")  # the first import of each library may set up its own loggers: not the run's doing
    before = _global_state()
    fake_run(tmp_path / "out")
    pl.evaluate(tmp_path / "out", judge="none")
    after = _global_state()
    for key in before:
        if key == "handlers":  # loggers that appeared are new libraries' own; the existing ones must be as they were
            changed = {n: (v, after["handlers"][n]) for n, v in before[key].items() if after["handlers"][n] != v}
            assert not changed, changed
        else:
            assert after[key] == before[key], key


class _StopAfter:
    """Calls `action` once the loopback server has answered `calls` chat requests."""

    def __init__(self, server: Any, calls: int, action: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._watch, args=(server, calls, action), daemon=True)
        self._thread.start()

    @staticmethod
    def _watch(server: Any, calls: int, action: Callable[[], None]) -> None:
        while server.stats()["total"] < calls:
            time.sleep(0.01)
        action()


def _server_run(out: Path, url: str, **kwargs: Any) -> pl.Run:
    return pl.run(SMALL, out=out, backend="openai", base_url=url, model="m", progress=False, **kwargs)


def _check_resumed(out: Path, url: str, server: Any) -> None:
    stopped = pl.load(out).stats
    assert stopped.partial and stopped.stopped_by is not None and "user" in stopped.stopped_by
    paid = server.stats()["total"]
    resumed = _server_run(out, url)
    assert not resumed.stats.partial and resumed.stats.conversations >= 1
    assert server.stats()["repeated"] == 0, "a resumed run paid again for a call it had made"
    assert resumed.stats.total.calls == server.stats()["total"] and server.stats()["total"] > paid


def test_a_stop_request_from_another_thread_writes_a_partial_run_that_a_second_call_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with demo_server(latency_s=0.02) as server:
        stop = pl.StopSignal(exit_at_once=False)
        _StopAfter(server, 40, stop.request)
        with pytest.raises(pl.RunStopped) as info:
            _server_run(out, server.url, stop=stop)
        assert isinstance(info.value.run, pl.Run) and info.value.run.stats.partial
        assert (out / "stats.json").is_file() and (out / "cache.sqlite").is_file()
        _check_resumed(out, server.url, server)


def test_cancelling_the_task_of_arun_stops_gracefully(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with demo_server(latency_s=0.02) as server:
        async def main() -> None:
            task = asyncio.create_task(pl.arun(SMALL, out=out, backend="openai", base_url=server.url, model="m",
                                               progress=False))
            while server.stats()["total"] < 40:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        _check_resumed(out, server.url, server)


def test_a_keyboard_interrupt_while_a_loop_runs_stops_gracefully(tmp_path: Path) -> None:
    """A kernel interrupt: SIGINT's default handler raises KeyboardInterrupt in the main thread, inside the cell
    that runs a loop (loop.run_until_complete installs no SIGINT handler of its own, as a kernel's loop)."""
    out = tmp_path / "out"
    with demo_server(latency_s=0.02) as server:
        async def cell() -> None:
            _server_run(out, server.url)

        loop = asyncio.new_event_loop()
        # Python's own SIGINT handler, as a kernel has it: a process started in the background by a shell
        # (`make test &`) inherits SIGINT ignored, and Python then installs none.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            # To the main thread itself, as a terminal's Ctrl-C reaches a kernel: a process-directed signal may be
            # taken by another thread, and the main thread then hears it only when its wait next wakes.
            main = threading.main_thread().ident
            assert main is not None
            _StopAfter(server, 30, lambda: signal.pthread_kill(main, signal.SIGINT))
            with pytest.raises(pl.RunStopped) as info:
                loop.run_until_complete(cell())
        finally:
            loop.close()
            signal.signal(signal.SIGINT, previous)
        assert info.value.run.stats.partial
        _check_resumed(out, server.url, server)


def test_errors_are_personaloom_errors_with_the_cli_line(tmp_path: Path) -> None:
    with pytest.raises(pl.ConfigError) as info:
        pl.run(out=tmp_path / "out", backend="nope")
    cli = subprocess.run([sys.executable, "-m", "personaloom.cli", "run", "--out", str(tmp_path / "cli"),
                          "--backend", "nope"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == info.value.exit_code == 1
    assert cli.stderr.strip().splitlines()[-1] == f"personaloom: error: {info.value}"
    with pytest.raises(pl.InputError, match=r"missing\.jsonl"):
        pl.read(tmp_path / "missing.jsonl")


def test_seed_data_as_python_objects(tmp_path: Path, spc_path: Path) -> None:
    personas = [["i love hiking in the mountains.", "i have two dogs."], ["i am a nurse.", "i play the violin."],
                ["i grew up in ohio.", "i bake bread on sundays."]]
    run = pl.expand(SMALL, out=tmp_path / "lists", backend="fake", seed_data=personas, progress=False)
    texts = {a.text for a in run.attributes()}
    assert {"i have two dogs.", "i play the violin.", "i bake bread on sundays."} <= texts
    assert (tmp_path / "lists" / "seed_data.jsonl").is_file()  # recorded like any seed file

    import pandas as pd

    frame = pd.read_csv(spc_path).head(5)  # Synthetic-Persona-Chat's own columns
    run = fake_run(tmp_path / "frame", seed_data=frame)
    first = str(frame.iloc[0]["user 1 personas"]).splitlines()[0].strip()
    assert first in {a.text for a in run.attributes()} and run.stats.conversations >= 1

    convs = pl.read(spc_path)[:5]
    import datasets

    for name, data in (("convs", convs), ("dataset", datasets.Dataset.from_pandas(frame))):
        run = fake_run(tmp_path / name, seed_data=data)
        assert run.stats.conversations >= 1, name
        assert convs[0].user1_persona[0] in {a.text for a in run.attributes()}, name
    with pytest.raises(pl.InputError, match="seed_data"):
        fake_run(tmp_path / "bad", seed_data=[3.5])


class Brevity(pl.CriticExpert):
    """A filter expert written in a notebook: rejects a conversation the judge finds long-winded."""

    name = "brevity"
    question = "Is this conversation long-winded?"

    def request(self, shown: tuple[Conversation, ...], ctx: pl.ExpertContext) -> pl.ChatRequest:
        conv = shown[0]
        text = "\n".join(f"User {t.speaker}: {t.text}" for t in conv.turns)
        return pl.ChatRequest(
            messages=[pl.Message(role="user", content=f'{self.question} Answer {{"brief": true|false}}.\n{text}')],
            params=ctx.sampling.params(ctx.max_tokens, rng.derive_seed(ctx.seed, self.stage, conv.id)),
            json_schema={"type": "object", "properties": {"brief": {"type": "boolean"}}, "required": ["brief"]},
            metadata={"stage": self.stage, "id": conv.id},
        )

    def parse(self, shown: tuple[Conversation, ...], result: pl.ChatResult,
              ctx: pl.ExpertContext) -> list[pl.Verdict]:
        conv = shown[0]
        try:
            brief = json.loads(result.text)["brief"]
        except (ValueError, KeyError, TypeError):
            return [pl.abstain(conv, self.name, f"no 'brief' in {result.text[:40]!r}")]
        return [pl.Verdict(conversation_id=conv.id, expert=self.name, decision="pass" if brief else "reject",
                           pair_id=conv.pair_id, iteration=conv.iteration)]


@pytest.fixture
def brevity() -> Iterator[Brevity]:
    expert = pl.register_expert(Brevity())
    yield expert
    pl.unregister_expert("brevity")


def test_a_critic_expert_registered_in_python_is_used_by_run(tmp_path: Path, brevity: Brevity) -> None:
    out = tmp_path / "out"
    run = fake_run(out, **{"critic.experts.brevity.weight": 1})
    verdicts = [json.loads(line) for path in sorted((out / "iterations").glob("*/verdicts.jsonl"))
                for line in path.read_text().splitlines()]
    mine = [v for v in verdicts if v["expert"] == "brevity"]
    assert mine and {v["decision"] for v in mine} <= {"pass", "reject", "abstain"}
    assert run.stats.stages["critic.brevity"]["calls"] == len(mine)
    # Resumed with the same expert: nothing paid. A changed expert (another class, another question) is part of
    # the stage's fingerprint: its verdicts are recomputed, not reused from the first run.
    assert fake_run(out, **{"critic.experts.brevity.weight": 1}).stats.latest.calls == 0

    class Rambling(Brevity):
        question = "Does this conversation ramble?"

    pl.register_expert(Rambling())
    changed = fake_run(out, **{"critic.experts.brevity.weight": 1})
    assert changed.stats.stages["critic.brevity"]["calls"] == len(mine)
    assert changed.stats.latest.calls == len(mine)  # only the changed expert's calls: the rest came from the cache


def test_the_api_reference_builds_and_a_broken_reference_fails(tmp_path: Path) -> None:
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("api_docs", Path(__file__).resolve().parents[1] / "tools" /
                                                  "api_docs.py")
    assert spec is not None and spec.loader is not None
    api_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_docs)
    assert api_docs.build(tmp_path) == []
    page = (tmp_path / "personaloom.html").read_text(encoding="utf-8")
    for anchor in ('id="run"', 'id="arun"', 'id="Run"', 'id="Run.conversations"', 'id="RunStats"', 'id="configure"'):
        assert anchor in page, anchor
    broken = types.ModuleType("broken", "See `personaloom.runs.Run.stats` and `personaloom.api.no_such_thing`.")
    assert api_docs.broken_references(broken) == ["broken: `personaloom.api.no_such_thing` does not exist"]


def test_the_notebook_progress_is_one_display_updated_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """NotebookProgress with an injected clock: shown once (display_id), then updated, at most every REFRESH_S
    except at the end; HTML and plain text, no ANSI codes."""
    from dataclasses import dataclass

    from IPython import display as ipython_display

    from personaloom.chat import ChatResult, Usage
    from personaloom.executors.progress import NotebookProgress

    shown: list[tuple[str, dict[str, str]]] = []

    class Handle:
        def update(self, bundle: dict[str, str], raw: bool) -> None:
            shown.append(("update", bundle))

    def display(bundle: dict[str, str], raw: bool, display_id: bool) -> Handle:
        assert raw and display_id
        shown.append(("display", bundle))
        return Handle()

    @dataclass
    class Endpoint:
        limit: int = 8
        ceiling: int = 16

    monkeypatch.setattr(ipython_display, "display", display)
    now = [100.0]
    progress = NotebookProgress(clock=lambda: now[0])
    progress.submitted("generate", 4)
    for _ in range(3):
        now[0] += 0.1  # within REFRESH_S: no redraw
        progress.finished("generate", ChatResult(texts=["x"], usage=Usage(completion_tokens=50)), Endpoint())
    now[0] += 1.0
    progress.finished("generate", ChatResult(texts=["x"], cached=True), Endpoint())
    progress.stop()
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    last = shown[-1][1]
    assert last["text/plain"].startswith("generate  4/4  done") and "1 cached" in last["text/plain"]
    assert "8 at once (cut from 16)" in last["text/plain"] and "<td>4/4</td>" in last["text/html"]
    assert not any("\x1b[" in text for _, bundle in shown for text in bundle.values())
