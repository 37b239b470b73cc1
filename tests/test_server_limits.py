"""What a provider's limits do to a run, against the loopback server: a Retry-After past what is worth
waiting, requests queued during a Retry-After window, an exhausted quota, a re-ask that fails in transport,
concurrency growing back while replies need re-asks, and a graceful stop during retry waits and during
synchronous work (a real signal)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from personaloom.backends.cache import ResponseCache
from personaloom.backends.openai_compat import _retry_after
from personaloom.errors import BackendError
from personaloom.executors.local import LLM, Endpoint
from personaloom.stats import Stats
from personaloom.stop import RunStopped, StopSignal
from servers import BAD_CONTENT, Faults, LoopbackServer, schema_instance
from test_openai_backend import SCHEMA, backend_for, one, req

QUOTA_BODY = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                        "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}


def test_retry_after_values_that_are_not_a_finite_wait_are_ignored() -> None:
    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    for bad in ("inf", "1e400", "nan", "soon"):
        assert _retry_after({"retry-after": bad}) is None, bad
    assert _retry_after({"retry-after-ms": "inf"}) is None


def test_a_retry_after_longer_than_two_minutes_fails_the_request_at_once() -> None:
    """An hour's Retry-After is a quota window: the request fails now, saying so, and the endpoint does not
    hold every later request for an hour."""
    window = {"error": {"message": "Rate limit reached for requests per day", "type": "requests"}}
    with LoopbackServer(respond=lambda n, body: (429, {"Retry-After": "3600"}, window) if n == 0 else None) as server:
        backend = backend_for(server)
        waited: list[float] = []

        async def record(seconds: float) -> None:
            waited.append(seconds)

        backend.sleep = record
        llm = LLM(backend, None, Stats(), progress=False)
        held: list[float | None] = []
        overloaded = llm.endpoint.overloaded
        backend.on_overload = lambda after: (held.append(after), overloaded(after))[1]
        first = llm.run([req("quota window")])[0]
        assert not first.ok and first.error is not None
        assert "3600 s" in first.error and "Retry-After" in first.error and "re-run" in first.error
        assert waited == [] and server.stats()["total"] == 1
        assert held == [None]  # told of the overload, but not to hold every request for an hour
        assert llm.run([req("another")])[0].text == "another"  # goes out at once


def test_requests_already_waiting_for_a_slot_also_wait_out_retry_after() -> None:
    endpoint = Endpoint("e", 2)
    admitted: dict[int, float] = {}

    async def user(i: int, hold: float) -> None:
        async with endpoint.slot():
            admitted[i] = asyncio.get_running_loop().time()
            await asyncio.sleep(hold)

    async def go() -> float:
        tasks = [asyncio.create_task(user(i, 0.05)) for i in range(6)]
        await asyncio.sleep(0.01)  # 0 and 1 hold the slots; 2..5 are queued
        said = asyncio.get_running_loop().time()
        endpoint.overloaded(0.4)
        await asyncio.gather(*tasks)
        return said

    said = asyncio.run(go())
    assert admitted[0] < said and admitted[1] < said
    assert min(admitted[i] for i in range(2, 6)) >= said + 0.4 - 0.01, admitted
    assert endpoint.in_flight == 0 and endpoint.limit == 1


def test_a_stop_ends_a_retry_after_window_for_the_waiting_requests() -> None:
    endpoint, stop = Endpoint("e", 2), StopSignal()
    endpoint.stop = stop
    admitted: list[float] = []

    async def user() -> None:
        async with endpoint.slot():
            admitted.append(asyncio.get_running_loop().time())

    async def go() -> float:
        endpoint._bind(asyncio.get_running_loop())
        endpoint.overloaded(100.0)
        tasks = [asyncio.create_task(user()) for _ in range(4)]
        await asyncio.sleep(0.1)
        assert not admitted  # held by the Retry-After
        stop.requested = True
        asked = asyncio.get_running_loop().time()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return asked

    asked = asyncio.run(go())
    assert len(admitted) == 4 and max(admitted) - asked < 1.0


def test_an_exhausted_quota_stops_the_run_with_the_servers_words() -> None:
    """OpenAI's 429 insufficient_quota is not a rate limit: no retry, BackendError (the run stops, exit 2)."""
    with LoopbackServer(respond=lambda n, body: (429, {"Retry-After": "1"}, QUOTA_BODY)) as server:
        backend = backend_for(server, max_retries=5)
        with pytest.raises(BackendError) as caught:
            one(backend, req("pay me"))
        said = str(caught.value)
        assert "HTTP 429" in said and "You exceeded your current quota" in said and "add credit" in said
        assert server.stats()["total"] == 1


def test_a_server_still_loading_its_model_is_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    """llama.cpp's server answers 503 "Loading model" until its model is loaded: the requests wait for it
    (said once), are not failures or retries, and the concurrency bound is not cut."""
    loading = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    with LoopbackServer(respond=lambda n, body: (503, {}, loading) if n < 12 else None) as server:
        backend = backend_for(server, concurrency=4, max_retries=1)
        waited: list[float] = []

        async def record(seconds: float) -> None:
            waited.append(seconds)

        backend.sleep = record
        llm = LLM(backend, None, Stats(), progress=False)
        results = llm.run([req(f"r{i}") for i in range(4)])
        assert [r.text for r in results] == [f"r{i}" for i in range(4)]
        assert all(r.retries == 0 for r in results) and llm.endpoint.limit == 4 and llm.endpoint.cuts == 0
        assert waited == [2.0] * 12 and server.stats()["total"] == 16
    said = capsys.readouterr().err
    assert said.count("is still loading its model; waiting for it") == 1


def test_a_reask_that_fails_in_transport_is_an_uncached_failure(tmp_path: Path) -> None:
    """The reply was not JSON and asking again met a 503: the request failed (not the invalid text as an
    answer), nothing is cached, and a re-run asks again and gets a good reply."""
    replies = iter([
        (200, BAD_CONTENT),
        (503, {"error": {"message": "server busy: maximum pending requests exceeded"}}),
    ])

    def respond(n: int, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]] | None:
        status, content = next(replies, (0, None))
        if status == 0:
            return None  # the configured reply: valid JSON
        if status == 200:
            return 200, {}, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
        return status, {}, content  # type: ignore[return-value]

    good = json.dumps(schema_instance(SCHEMA))
    with LoopbackServer(respond=respond, reply=lambda body, i: good) as server:
        cache = ResponseCache(tmp_path / "cache.sqlite")
        try:
            llm = LLM(backend_for(server, max_retries=0), cache, Stats(), progress=False)
            first = llm.run([req("rate it", schema=SCHEMA)])[0]
            assert not first.ok and first.error is not None
            assert "not valid JSON" in first.error and "HTTP 503" in first.error and "maximum pending" in first.error
            assert len(cache) == 0
            again = llm.run([req("rate it", schema=SCHEMA)])[0]
            assert again.ok and not again.cached and json.loads(again.text) == schema_instance(SCHEMA)
            assert server.stats()["total"] == 3 and len(cache) == 1
        finally:
            cache.close()


def test_concurrency_grows_back_while_replies_need_reasks() -> None:
    """A re-ask is not an overload: after a cut, successes that needed one still raise the bound."""

    def reply(body: dict[str, Any], index: int) -> str:
        if any(m["role"] == "assistant" for m in body["messages"]):
            return json.dumps(schema_instance(SCHEMA))
        return BAD_CONTENT

    with LoopbackServer(reply=reply) as server:
        llm = LLM(backend_for(server, concurrency=8), None, Stats(), progress=False)
        llm.endpoint.limit = 4  # as after a 503
        results = llm.run([req(f"q{i}", schema=SCHEMA) for i in range(60)])
        assert all(r.ok and r.reasks == 1 and r.retries == 0 for r in results)
        assert llm.endpoint.limit == 8 and server.stats()["total"] == 120
        assert llm.stats.llm["retries"] == 60  # stats still count the re-asks as extra calls


def test_a_stop_during_a_retry_wait_does_not_wait_it_out(tmp_path: Path) -> None:
    """Every request meets a 429 with a 100 s Retry-After; a stop 0.3 s later ends the run within seconds,
    with nothing cached and RunStopped (the pipeline's partial path)."""
    with LoopbackServer(faults=Faults(http_429=1.0, retry_after_s=100)) as server:
        stop = StopSignal()
        cache = ResponseCache(tmp_path / "cache.sqlite")
        try:
            backend = backend_for(server, max_retries=5)
            waited = [0.0]

            async def sleep(seconds: float) -> None:  # the backend's clock: the stop comes 0.3 s into the waits
                waited[0] += seconds
                if waited[0] >= 0.3:
                    stop.requested = True
                await asyncio.sleep(0)

            backend.sleep = sleep
            llm = LLM(backend, cache, Stats(), progress=False, stop=stop)
            with pytest.raises(RunStopped):
                asyncio.run(llm.complete([req(f"r{i}") for i in range(6)]))
            assert waited[0] < 5  # not the 100 s Retry-After: stopped within a poll of the request
            assert len(cache) == 0 and llm.stats.llm["errors"] == 0  # skipped, not failures
        finally:
            cache.close()


def test_a_signal_during_synchronous_work_is_heard_at_once(tmp_path: Path) -> None:
    """A real SIGINT while the run is in a synchronous step (pairing, embedding: no event loop turn): the
    first is acknowledged at once, the second exits 130 at once, not when the step ends."""
    script = tmp_path / "busy.py"
    script.write_text(textwrap.dedent("""
        import asyncio, sys, time
        from personaloom.stop import StopSignal

        async def main():
            stop = StopSignal()
            stop.install()
            print("ready", flush=True)
            end = time.monotonic() + 30
            while time.monotonic() < end:  # a 30 s synchronous step inside the run's coroutine
                sum(range(1000))
            print("step ended", flush=True)

        asyncio.run(main())
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=10)
    out, err = proc.communicate()
    assert code == 130, (code, err)  # within proc.wait's 10 s, and before the 30 s step ended (below)
    assert "stopping: no new LLM calls" in err and "stopped at once" in err and "step ended" not in out


def test_two_quick_presses_during_one_long_c_call_exit_at_once(tmp_path: Path) -> None:
    """Both signals land while the main thread is inside one C call (Python then runs its handler once):
    they still count as two, so the process exits 130 as the call returns, without finishing the step."""
    script = tmp_path / "c_call.py"
    script.write_text(textwrap.dedent("""
        import sys
        from personaloom.stop import StopSignal

        stop = StopSignal()
        stop.install()
        print("ready", flush=True)
        sum(range(400_000_000))  # one C call of a few seconds: no handler runs until it returns
        print("step ended", flush=True)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    out, err = proc.communicate()
    assert code == 130 and "stopped at once" in err and "step ended" not in out, (code, out, err)


def test_install_puts_back_the_previous_handlers() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = StopSignal()
    stop.install()
    try:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        os.kill(os.getpid(), signal.SIGINT)  # handled between two bytecodes: no KeyboardInterrupt
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.requested
    finally:
        stop.uninstall()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert signal.set_wakeup_fd(-1) == -1  # the wake-up fd is put back too
