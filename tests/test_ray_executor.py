"""`--executor ray` (personaloom.executors.ray.RayLLM) against the local executor (executors.local.LLM).

Same requests, same results: with the fake backend, with the embedded SmolLM2 GGUF (same seeds, same
texts), with the openai backend against a loopback server, and for a whole small `pipeline.run` (fake
backend with its demo responder: the embedded model would take minutes per run on 2 cores). Also: the
coalescing of concurrent callers into few Ray Datasets, cache and stats in the driver, errors.
Everything but the missing-Ray message needs Ray and is marked slow; one local Ray instance (2 CPUs)
serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from personaloom.backends import create_backend
from personaloom.backends.base import Backend, ChatRequest, ChatResult, Message, SamplingParams
from personaloom.backends.cache import ResponseCache
from personaloom.backends.fake import FakeBackend
from personaloom.config import BackendConfig
from personaloom.errors import BackendError, ConfigError
from personaloom.executors.local import LLM
from personaloom.stats import Stats
from servers import LoopbackServer


def reqs(
    n: int, *, stage: str = "test", seed: int | None = 7, max_tokens: int = 32, tag: str = ""
) -> list[ChatRequest]:
    return [
        ChatRequest(
            messages=[Message(role="system", content="You answer in one short sentence."),
                      Message(role="user", content=f"Tell me one fact about the number {i}.{tag}")],
            params=SamplingParams(seed=None if seed is None else seed + i, max_tokens=max_tokens),
            metadata={"stage": stage},
        )
        for i in range(n)
    ]


def same(a: ChatResult, b: ChatResult) -> bool:
    """Equal but for latency (measured where the call ran)."""
    return a.model_dump(exclude={"latency_s"}) == b.model_dump(exclude={"latency_s"})


# A scripted backend for the error paths; pickled by value into the Ray workers (see the fixture).
def scripted_factory(cfg: BackendConfig) -> Backend:
    def reply(request: ChatRequest) -> str:
        text = request.messages[-1].content
        if "BUG" in text:
            raise ValueError("scripted bug")
        if "DOWN" in text:
            raise BackendError("scripted server is down")
        return text.upper()

    return FakeBackend(reply, model=cfg.model or "scripted", max_concurrency=4)


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from personaloom.executors import ray as ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'personaloom\[ray\]'"):
        ray_executor.import_ray()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'personaloom[ray]')")
    from personaloom.executors.ray import init_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started_here = not ray.is_initialized()
    yield init_ray(num_cpus=2)
    if started_here:
        ray.shutdown()


def local_results(cfg: BackendConfig, requests: Sequence[ChatRequest]) -> list[ChatResult]:
    return LLM(create_backend(cfg), progress=False).run(requests)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["tasks", "actors"])
def test_fake_backend_same_results_as_local(ray_local: Any, workers: str) -> None:
    from personaloom.executors.ray import RayLLM

    cfg = BackendConfig(kind="fake")
    requests = [*reqs(12), *reqs(3, stage="judge", seed=None), *reqs(2, tag=" twice")]
    requests[-1] = requests[-2]  # an identical request in the same call is sent once
    stats = Stats()
    client = RayLLM(cfg, None, stats, progress=False, workers=workers, actors=2)  # type: ignore[arg-type]
    got = client.run(requests)
    want = local_results(cfg, requests)
    assert len(got) == len(requests)
    # The duplicate, in flight together with its twin, shares its answer (cached=True here; the local run
    # without a cache answered the first before the second was asked).
    assert all(same(g, w) for g, w in zip(got[:-1], want[:-1], strict=True))
    assert got[-1].cached and got[-1].texts == want[-1].texts
    assert stats.llm["calls"] == len(requests) - 1 and stats.llm["cache_hits"] == 1
    assert stats.stages["judge"]["calls"] == 3
    assert client.ray_backend.batches == [len(requests) - 1]  # one call, one dataset
    assert client.ray_backend.model_id == "fake-model" and client.ray_backend.kind == "fake"


@pytest.mark.slow
def test_concurrent_callers_are_coalesced_in_order(ray_local: Any) -> None:
    from personaloom.executors.ray import RayLLM

    client = RayLLM(BackendConfig(kind="fake"), progress=False, wait_ms=200)
    calls = [reqs(3, tag=f" pair {p}") for p in range(30)]

    async def go() -> list[list[ChatResult]]:
        return list(await asyncio.gather(*(client.complete(c) for c in calls)))

    outs = asyncio.run(go())
    want = local_results(BackendConfig(kind="fake"), [r for c in calls for r in c])
    assert [same(g, w) for g, w in zip([r for o in outs for r in o], want, strict=True)] == [True] * 90
    # 90 requests from 30 concurrent callers: a handful of datasets, not 30 (or 90).
    assert sum(client.ray_backend.batches) == 90
    assert len(client.ray_backend.batches) <= 3, client.ray_backend.batches


@pytest.mark.slow
def test_a_stop_request_sends_nothing_more(ray_local: Any) -> None:
    """Ctrl-C under `--executor ray`: after the first signal no request leaves the driver (RunStopped)."""
    from personaloom.executors.ray import RayLLM
    from personaloom.stop import RunStopped, StopSignal

    stop = StopSignal()
    client = RayLLM(BackendConfig(kind="fake"), progress=False, stop=stop)
    assert [r.ok for r in client.run(reqs(2))] == [True, True]
    sent = sum(client.ray_backend.batches)
    stop.requested = True
    with pytest.raises(RunStopped):
        client.run(reqs(3, tag=" after the stop"))
    assert sent == 2 and sum(client.ray_backend.batches) == sent


@pytest.mark.slow
def test_cache_and_stats_stay_in_the_driver(ray_local: Any, tmp_path: Path) -> None:
    from personaloom.executors.ray import RayLLM

    requests = reqs(6)
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        first = Stats()
        client = RayLLM(BackendConfig(kind="fake"), cache, first, progress=False)
        a = client.run(requests)
        assert first.llm["calls"] == 6 and first.llm["cache_hits"] == 0 and len(cache) == 6
        second = Stats()
        again = RayLLM(BackendConfig(kind="fake"), cache, second, progress=False)
        b = again.run(requests)
        assert second.llm["calls"] == 0 and second.llm["cache_hits"] == 6
        assert again.ray_backend.batches == []  # nothing reached Ray
        assert [x.texts for x in a] == [x.texts for x in b] and all(x.cached for x in b)
        # The local executor finds the same keys: a run may switch executors and keep its cache.
        third = Stats()
        c = LLM(create_backend(BackendConfig(kind="fake")), cache, third, progress=False).run(requests)
        assert third.llm["cache_hits"] == 6 and [x.texts for x in c] == [x.texts for x in a]


@pytest.mark.slow
def test_errors_like_the_local_executor(ray_local: Any) -> None:
    from personaloom.executors.ray import RayLLM

    client = RayLLM(BackendConfig(kind="fake"), progress=False, backend_factory=scripted_factory)
    good, bug = reqs(1, tag=" ok")[0], reqs(1, tag=" BUG")[0]
    out = client.run([good, bug])
    assert out[0].text == good.messages[-1].content.upper()
    assert out[1].error == "ValueError: scripted bug" and not out[1].ok
    assert client.stats.llm["errors"] == 1
    with pytest.raises(BackendError, match="scripted server is down"):
        client.run([good, reqs(1, tag=" DOWN")[0]])
    # A backend that cannot be built fails when the client is made, with the backend's own message.
    with pytest.raises(BackendError, match=r"no-such-model\.gguf"):
        RayLLM(BackendConfig(kind="embedded", model="/nonexistent/no-such-model.gguf"), progress=False)


@pytest.mark.slow
def test_embedded_same_seeds_same_texts_as_local(ray_local: Any) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from personaloom.backends import default_gguf_path
    from personaloom.executors.ray import RayLLM

    try:
        default_gguf_path()
    except BackendError as exc:
        pytest.skip(str(exc))
    cfg = BackendConfig(kind="embedded", n_ctx=512)
    requests = reqs(3, max_tokens=12)
    client = RayLLM(cfg, progress=False)
    got = client.run(requests)
    want = local_results(cfg, requests)
    assert all(g.ok for g in got), [g.error for g in got]
    assert [g.texts for g in got] == [w.texts for w in want]
    assert [g.usage for g in got] == [w.usage for w in want]
    assert client.ray_backend.model_id == create_backend(cfg).model_id


@pytest.mark.slow
def test_openai_backend_through_ray(ray_local: Any) -> None:
    from personaloom.executors.ray import RayLLM

    with LoopbackServer(latency_s=0.05, max_model_len=4096) as server:
        cfg = BackendConfig(kind="openai", model="loopback-model", base_url=server.url, concurrency=8,
                            timeout_s=10.0, max_retries=1, api_key_env="PL_RAY_TEST_NO_KEY")
        requests = reqs(16)
        client = RayLLM(cfg, progress=False)
        got = client.run(requests)
        # The window the server states reaches the driver, which fits every request to it.
        assert client.endpoint.window is not None and client.endpoint.window.tokens == 4096
        want = local_results(cfg, requests)
        assert all(g.ok for g in got), [g.error for g in got]
        assert [g.texts for g in got] == [w.texts for w in want]
        assert server.stats()["total"] == 32
        assert server.stats()["max_in_flight"] > 1  # the worker keeps the server busy, not one by one


def run_pipeline(out: Path, executor: str) -> list[dict[str, Any]]:
    from personaloom import pipeline
    from personaloom.config import build_config

    config = build_config(None, [], {
        "out": str(out), "executor": executor, "seed": 3, "backend.kind": "fake",
        "expand.new_attributes": 6, "expand.bootstrap_steps": 1, "profiles.profiles": 6, "pair.max_pairs": 4,
        "generate.pairs": 4, "generate.iterations": 2, "generate.candidates": 2,
    })
    pipeline.run(config)
    lines = (out / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_pipeline_run_with_ray_writes_the_same_conversations(
    ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from personaloom.executors import ray as ray_executor

    made: list[ray_executor.RayLLM] = []

    class Recorded(ray_executor.RayLLM):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(ray_executor, "RayLLM", Recorded)
    local = run_pipeline(tmp_path / "local", "local")
    assert made == [], "the local executor must not use Ray"
    # Sentence embeddings are not what is compared: reuse them (the LLM cache is not copied).
    (tmp_path / "ray").mkdir()
    shutil.copy(tmp_path / "local" / "embeddings.sqlite", tmp_path / "ray" / "embeddings.sqlite")
    on_ray = run_pipeline(tmp_path / "ray", "ray")
    assert made, "pipeline.run with executor 'ray' did not create a RayLLM (Clients.for_backend)"
    assert sum(sum(c.ray_backend.batches) for c in made) > 0
    assert local, "the fake run kept no conversation: nothing to compare"
    assert on_ray == local
    stats = [json.loads((tmp_path / d / "stats.json").read_text(encoding="utf-8"))["llm"] for d in ("local", "ray")]
    assert stats[0]["calls"] == stats[1]["calls"] > 0 and stats[1]["cache_hits"] == stats[0]["cache_hits"]
