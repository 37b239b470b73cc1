"""The openai backend against the loopback server: retries (429 + Retry-After, 500, hang, truncated JSON),
structured-output fallbacks, concurrency bound, unreachable server, and the API key kept secret."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from personaloom.backends import create_backend
from personaloom.backends.base import ChatRequest, ChatResult, Message, SamplingParams
from personaloom.backends.openai_compat import OpenAIBackend, check_structured
from personaloom.config import BackendConfig, CriticConfig, ExpertConfig, RunConfig
from personaloom.errors import BackendError, ConfigError
from personaloom.executors.clients import Clients
from personaloom.executors.local import LLM
from personaloom.stats import Stats
from servers import BAD_CONTENT, Faults, LoopbackServer, schema_instance, unreachable_url

SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["question", "score"],
}


def backend_for(server: LoopbackServer, **overrides: Any) -> OpenAIBackend:
    settings: dict[str, Any] = {
        "kind": "openai", "model": "loopback-model", "base_url": server.url, "api_key_env": "PL_TEST_KEY",
        "timeout_s": 5.0, "max_retries": 3, "retry_base_s": 0.01, "retry_max_s": 0.05,
    }
    settings.update(overrides)
    backend = create_backend(BackendConfig(**settings))
    assert isinstance(backend, OpenAIBackend)
    return backend


def req(text: str, *, seed: int | None = 1, schema: dict[str, Any] | None = None) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content=text)],
        params=SamplingParams(seed=seed, max_tokens=32),
        json_schema=schema,
        metadata={"stage": "test"},
    )


def one(backend: OpenAIBackend, request: ChatRequest) -> ChatResult:
    return backend.generate([request])[0]


def test_plain_request_carries_sampling_params() -> None:
    with LoopbackServer(keep_bodies=True) as server:
        result = one(backend_for(server), req("hello there"))
        assert result.ok and len(result.texts) == 1 and result.text == "hello there"
        assert result.usage.prompt_tokens == 2 and result.usage.completion_tokens > 0
        assert result.finish_reason == "stop" and result.retries == 0
        body = server.bodies[0]
        assert body["top_k"] == 40 and body["seed"] == 1 and "n" not in body and body["temperature"] == 0.7
        assert body["max_tokens"] == 32


def test_429_waits_for_retry_after() -> None:
    with LoopbackServer(faults=Faults(first=("http_429",), retry_after_s=1.0)) as server:
        backend = backend_for(server)
        waited: list[float] = []

        async def record(seconds: float) -> None:
            waited.append(seconds)

        backend.sleep = record  # the backend's clock, injected: no wall-clock assertion
        result = one(backend, req("rate limited"))
        assert result.ok and result.retries == 1
        assert waited == [1.0], "Retry-After: 1 must be honoured (the backoff alone is 0.05 s at most)"
        assert server.stats()["total"] == 2 and server.stats()["faults"] == {"http_429": 1}


def test_default_transport_is_aiohttp_and_httpx_still_works() -> None:
    import openai

    with LoopbackServer() as server:
        assert isinstance(backend_for(server)._transport(), openai.DefaultAioHttpClient)
        plain = backend_for(server, transport="httpx")
        assert plain._transport() is None  # the client's own httpx default
        assert one(plain, req("over httpx")).text == "over httpx"


# Both transports: the same faults must read the same (aiohttp's errors are mapped onto httpx's by the client).
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("fault", ["http_500", "truncated", "hang", "disconnect"])
def test_transient_fault_is_retried(fault: str, transport: str) -> None:
    with LoopbackServer(faults=Faults(first=(fault, fault))) as server:
        backend = backend_for(server, timeout_s=0.5, transport=transport)
        overloads: list[float | None] = []
        backend.on_overload = overloads.append
        result = one(backend, req(f"survive {fault}"))
        assert result.ok, result.error
        assert result.retries == 2 and result.text == f"survive {fault}"
        assert server.stats()["faults"] == {fault: 2}
        # Only a timeout says "overloaded" (the executor halves its bound): not a hang-up, not a 500.
        assert overloads == ([None, None] if fault == "hang" else [])


def test_connection_failures_are_told_apart_under_both_transports() -> None:
    import socket

    import aiohttp
    import httpx2
    import openai

    from personaloom.backends.openai_compat import connection_failure

    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")

    def wrapped(root: BaseException, timeout: bool = True) -> BaseException:
        """As the official client on aiohttp raises it: APITimeoutError <- httpx ConnectTimeout <- root."""
        mid = httpx2.ConnectTimeout(str(root))
        mid.__cause__ = root
        outer: BaseException = (openai.APITimeoutError(request=request) if timeout
                                else openai.APIConnectionError(request=request))
        outer.__cause__ = mid
        return outer

    key = type("Key", (), {"host": "no-such-host.invalid", "port": 80, "ssl": None})()
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connect call failed"))  # type: ignore[arg-type]
    dns = aiohttp.ClientConnectorDNSError(key, socket.gaierror(-2, "Name or service not known"))  # type: ignore[arg-type]
    assert connection_failure(wrapped(refused)) == ("refused", "connection refused")
    assert connection_failure(wrapped(dns)) == ("refused", "ClientConnectorDNSError")
    assert connection_failure(wrapped(aiohttp.ServerDisconnectedError())) == ("other", "ServerDisconnectedError")
    assert connection_failure(wrapped(aiohttp.SocketTimeoutError("read"))) == ("timeout", "SocketTimeoutError")
    # httpx: its own ConnectError means unreachable, a timeout is a timeout
    plain = openai.APIConnectionError(request=request)
    plain.__cause__ = httpx2.ConnectError("refused")
    assert connection_failure(plain)[0] == "refused"
    assert connection_failure(openai.APITimeoutError(request=request)) == ("timeout", "timeout")


def test_persistent_500_becomes_an_error_result() -> None:
    with LoopbackServer(faults=Faults(http_500=1.0)) as server:
        backend = backend_for(server, max_retries=2)
        results = backend.generate([req("doomed"), req("doomed too")])
        assert [r.ok for r in results] == [False, False]
        assert all(r.error and "HTTP 500" in r.error and r.retries == 2 for r in results)
        assert server.stats()["total"] == 6


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_unreachable_server_raises_backend_error(transport: str) -> None:
    url = unreachable_url()
    backend = create_backend(BackendConfig(kind="openai", model="m", base_url=url, max_retries=2,
                                           retry_base_s=0.01, api_key_env="PL_TEST_KEY", transport=transport))
    with pytest.raises(BackendError) as info:
        backend.generate([req("anyone?"), req("hello?")])
    message = str(info.value)
    assert url in message and "--base-url" in message and "\n" not in message
    assert info.value.exit_code == 2


def test_structured_output_uses_response_format() -> None:
    with LoopbackServer(keep_bodies=True) as server:
        result = one(backend_for(server), req("a question please", schema=SCHEMA))
        assert result.ok and json.loads(result.text) == schema_instance(SCHEMA)
        assert server.bodies[0]["response_format"]["type"] == "json_schema"


def test_structured_output_falls_back_to_json_object_then_prompt() -> None:
    def reply(body: dict[str, Any], index: int) -> str:
        fmt = body.get("response_format")
        if fmt:
            return json.dumps(schema_instance(fmt["schema"]))
        # Prompt mode: the schema is in the prompt; answer in prose around a fenced JSON value.
        assert "JSON schema" in body["messages"][-1]["content"]
        return 'Sure!\n```json\n{"question": "What pets do you have?", "score": 3}\n```'

    with LoopbackServer(reject_response_format=("json_schema",), reply=reply, keep_bodies=True) as server:
        backend = backend_for(server)
        first = one(backend, req("q1", schema=SCHEMA))
        assert first.ok and json.loads(first.text) == schema_instance(SCHEMA)
        second = one(backend, req("q2", schema=SCHEMA))
        assert second.ok
        types = [b.get("response_format", {}).get("type") for b in server.bodies]
        # q1 tried json_schema, then json_object; q2 remembered that json_object works.
        assert types == ["json_schema", "json_object", "json_object"]

    with LoopbackServer(reject_response_format=("json_schema", "json_object"), reply=reply) as server:
        backend = backend_for(server)
        result = one(backend, req("q3", schema=SCHEMA))
        assert result.ok and json.loads(result.text) == {"question": "What pets do you have?", "score": 3}
        assert one(backend, req("q4", schema=SCHEMA)).ok
        assert server.stats()["total"] == 4  # 3 for q3 (two rejected forms), 1 for q4


def test_unparseable_structured_reply_is_reasked() -> None:
    def reply(body: dict[str, Any], index: int) -> str:
        # Garbage first; valid JSON once the conversation holds the bad reply and the re-ask.
        if any(m["role"] == "assistant" for m in body["messages"]):
            return json.dumps(schema_instance(SCHEMA))
        return BAD_CONTENT

    with LoopbackServer(reply=reply) as server:
        result = one(backend_for(server), req("give me json", schema=SCHEMA))
        assert result.ok and check_structured(result.text, SCHEMA)[0] is not None
        assert result.reasks == 1 and result.retries == 0 and server.stats()["total"] == 2


def test_reask_is_bounded() -> None:
    with LoopbackServer(faults=Faults(bad_content=1.0)) as server:
        result = one(backend_for(server, reask=2), req("never json", schema=SCHEMA))
        # Kept as raw text (the stage turns it into a parse Failure), after 1 call + 2 re-asks.
        assert result.ok and check_structured(result.text, SCHEMA)[0] is None
        assert server.stats()["total"] == 3


def test_concurrency_is_bounded_once_per_endpoint(tmp_path: Path) -> None:
    """The executor owns the bound: two clients of one server (the run's backend and an expert's with
    another timeout and a lower concurrency) share one bound, the lower one; the backend holds none."""
    with LoopbackServer(latency_s=0.05) as server:
        main = BackendConfig(kind="openai", model="m", base_url=server.url, api_key_env="PL_TEST_KEY", concurrency=6)
        expert = main.model_copy(update={"timeout_s": 30.0, "concurrency": 4})
        config = RunConfig(backend=main, critic=CriticConfig(experts={"depth": ExpertConfig(backend=expert)}))
        clients = Clients(config, tmp_path, Stats())

        async def go() -> list[list[ChatResult]]:
            try:
                return await asyncio.gather(*(clients.role(role).complete([req(f"{role}{i}") for i in range(12)])
                                              for role in ("generator", "depth")))
            finally:
                await clients.aclose()

        parts = asyncio.run(go())
        assert clients.role("depth") is not clients.main
        assert [r.text for r in parts[0]] == [f"generator{i}" for i in range(12)]
        assert all(r.ok for part in parts for r in part)
        assert server.stats()["max_in_flight"] == 4 and server.stats()["total"] == 24
    with LoopbackServer(latency_s=0.2) as raw:
        # Handed straight to the backend (no executor), requests are not bounded by backend.concurrency.
        many = backend_for(raw, concurrency=2).generate([req(f"x{i}") for i in range(8)])
        assert all(r.ok for r in many) and raw.stats()["max_in_flight"] > 2


def test_api_key_comes_from_env_and_stays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = "sk-SENTINEL-4242-do-not-leak"
    monkeypatch.setenv("PL_TEST_KEY", sentinel)
    with LoopbackServer(log_auth=True, faults=Faults(http_500=1.0)) as server:
        backend = backend_for(server, max_retries=1)
        result = one(backend, req("secret"))
        assert server.auth_headers == [f"Bearer {sentinel}"] * 2
        assert sentinel not in repr(backend) and sentinel not in str(result.model_dump())
        assert sentinel not in backend.model_id
    with LoopbackServer() as server:
        assert server.auth_headers == []  # not logged unless asked


def test_missing_key_placeholder_only_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_TEST_KEY", raising=False)
    with LoopbackServer(log_auth=True) as server:
        assert one(backend_for(server), req("no key")).ok
        assert server.auth_headers and "PL_TEST_KEY" not in server.auth_headers[0]
    with pytest.raises(ConfigError, match="PL_TEST_KEY"):
        create_backend(BackendConfig(kind="openai", model="m", base_url="https://example.com/v1",
                                     api_key_env="PL_TEST_KEY"))
    with pytest.raises(ConfigError, match=r"backend\.model"):
        create_backend(BackendConfig(kind="openai", base_url="http://127.0.0.1:9/v1"))


def test_fault_mix_through_executor() -> None:
    """Issue 7's mix: every request ends as a result (ok or error), retries are counted."""
    faults = Faults(http_500=0.2, http_429=0.05, hang=0.05, truncated=0.05, bad_content=0.05, retry_after_s=0.05)
    with LoopbackServer(faults=faults, latency_s=0.01, seed=7) as server:
        backend = backend_for(server, timeout_s=0.4, max_retries=4, concurrency=32)
        stats = Stats()
        llm = LLM(backend, None, stats, progress=False)
        requests = [req(f"pair {i}", seed=i) for i in range(120)]

        async def go() -> list[ChatResult]:
            # Many callers at once, as pairs are: they share the executor's semaphore.
            parts = await asyncio.gather(*(llm.complete(requests[i : i + 10]) for i in range(0, 120, 10)))
            return [r for part in parts for r in part]

        results = asyncio.run(go())
        assert len(results) == 120
        ok = [r for r in results if r.ok]
        assert len(ok) >= 110
        assert all(r.error for r in results if not r.ok)
        injected = server.stats()["faults"]
        assert sum(injected.values()) >= 20
        transport_faults = sum(v for k, v in injected.items() if k != "bad_content")
        assert stats.llm["calls"] == 120
        # Every transport fault cost one retry, except the last try of a request that failed for good.
        assert stats.llm["retries"] == sum(r.retries for r in results) == transport_faults - stats.llm["errors"]
        assert stats.llm["errors"] == len(results) - len(ok)


def test_adaptive_concurrency_against_a_rate_limited_server() -> None:
    """A provider that takes 4 at a time and answers the rest with 429 + Retry-After: the endpoint's bound
    comes down from the configured 16 (multiplicative decrease, Retry-After honoured), every request ends
    ok, and the bound grows back by one per round of successes, never above 16."""
    with LoopbackServer(latency_s=0.02, max_concurrency=4, faults=Faults(retry_after_s=0.05)) as server:
        backend = backend_for(server, concurrency=16, max_retries=20)
        llm = LLM(backend, None, Stats(), progress=False)
        limits: list[int] = []

        async def go() -> list[ChatResult]:
            async def watch() -> None:
                while True:
                    limits.append(llm.endpoint.limit)
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            try:
                return await llm.complete([req(f"r{i}", seed=i) for i in range(120)])
            finally:
                watcher.cancel()

        results = asyncio.run(go())
        assert all(r.ok for r in results) and [r.text for r in results] == [f"r{i}" for i in range(120)]
        endpoint = llm.endpoint
        assert endpoint.cuts >= 2 and endpoint.lowest <= 4 and endpoint.ceiling == 16
        assert max(limits) <= 16 and endpoint.limit >= endpoint.lowest
        limited = server.stats()["faults"]["rate_limited"]
        # Without the cut, 12 of every 16 tries would be refused; with it, far fewer.
        assert 0 < limited < 120
        # Additive increase: some success round raised the bound again after a cut.
        assert any(b > a for a, b in itertools.pairwise(limits))


def test_endpoint_hands_free_slots_to_the_longest_waiting_requests() -> None:
    """Never more than `limit` in flight, admission in arrival order, a raised limit admits waiters at
    once, and a cancelled waiter (queued or just granted) leaks no slot."""
    from personaloom.executors.local import Endpoint

    endpoint = Endpoint("e", 8)
    endpoint.limit = 3
    admitted: list[int] = []
    peak = 0

    async def user(i: int, hold: float) -> None:
        nonlocal peak
        async with endpoint.slot():
            admitted.append(i)
            peak = max(peak, endpoint.in_flight)
            await asyncio.sleep(hold)

    async def go() -> None:
        await asyncio.gather(*(user(i, 0.002) for i in range(40)))
        assert admitted == list(range(40)) and peak == 3 and endpoint.in_flight == 0
        endpoint.limit = 1
        blocker = asyncio.create_task(user(100, 0.05))
        queued = [asyncio.create_task(user(101 + i, 0.0)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert endpoint.in_flight == 1 and len(endpoint._waiters) == 3
        queued[0].cancel()  # still queued
        await asyncio.sleep(0)
        endpoint.limit, endpoint._successes = 2, 10**6
        endpoint.succeeded()  # additive increase to 3: both waiters get a slot now, the blocker still holds one
        assert endpoint.limit == 3 and endpoint.in_flight == 3 and not endpoint._waiters
        queued[1].cancel()  # granted a slot but not yet running: the slot goes back
        await asyncio.sleep(0)
        assert endpoint.in_flight == 2
        await asyncio.gather(blocker, *queued, return_exceptions=True)
        assert endpoint.in_flight == 0 and not endpoint._waiters and 103 in admitted and 101 not in admitted

    asyncio.run(go())
