"""The backend contract, one suite for every backend: fake, embedded (llama-cpp-python in process) and
openai (against the REAL `python -m llama_cpp.server`). Same assertions for all: one result per request in
order, usage, finish_reason, n, structured output yields valid JSON of the schema, errors as results,
same seed -> same text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from personaloom.backends import create_backend, default_gguf_path
from personaloom.backends.base import Backend, ChatRequest, ChatResult, Message, SamplingParams
from personaloom.backends.fake import FakeBackend
from personaloom.backends.openai_compat import schema_problem
from personaloom.config import BackendConfig
from personaloom.errors import BackendError
from servers import LlamaServer, llama_server_fixture, schema_instance  # noqa: F401 (fixture)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}


def fake_responder(request: ChatRequest) -> str:
    if request.json_schema is not None:
        return json.dumps(schema_instance(request.json_schema))
    return f"Reply to: {request.messages[-1].content}"


@pytest.fixture(
    scope="module",
    params=[
        "fake",
        pytest.param("embedded", marks=pytest.mark.slow),
        pytest.param("openai", marks=pytest.mark.slow),
    ],
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    kind = request.param
    if kind == "fake":
        yield FakeBackend(fake_responder, n_ctx=4096)
    elif kind == "embedded":
        yield create_backend(BackendConfig(kind="embedded", n_ctx=1024))
    else:
        server: LlamaServer = request.getfixturevalue("llama_server")
        # llama_cpp.server's context is 2048 tokens (servers.llama_cpp_server default).
        yield create_backend(BackendConfig(kind="openai", base_url=server.url, model=server.model, max_retries=2,
                                           retry_base_s=0.05, timeout_s=120))


def ask(text: str, *, seed: int = 7, max_tokens: int = 16, n: int = 1,
        schema: dict[str, Any] | None = None) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="system", content="You are a helpful assistant."),
                  Message(role="user", content=text)],
        params=SamplingParams(seed=seed, max_tokens=max_tokens, n=n),
        json_schema=schema,
        metadata={"stage": "contract"},
    )


def test_one_result_per_request_with_usage(backend: Backend) -> None:
    requests = [ask("Name a fruit."), ask("Name a color."), ask("Name an animal.")]
    results = backend.generate(requests)
    assert len(results) == 3
    for r in results:
        assert isinstance(r, ChatResult) and r.ok and r.error is None and len(r.texts) == 1
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
        assert r.usage.completion_tokens <= 16 or backend.kind == "fake"
        assert r.finish_reason in ("stop", "length")
        assert not r.cached and r.latency_s >= 0
    assert backend.generate([]) == []


def test_n_completions(backend: Backend) -> None:
    (result,) = backend.generate([ask("Tell me a hobby.", n=2)])
    assert result.ok and len(result.texts) == 2


def test_same_seed_same_text(backend: Backend) -> None:
    request = ask("Describe your weekend in one sentence.", seed=11, max_tokens=20)
    first, second = backend.generate([request, request])
    assert first.texts == second.texts


def test_structured_output_is_valid_json_of_the_schema(backend: Backend) -> None:
    request = ask("Write a persona question and its answer as JSON.", max_tokens=80, schema=SCHEMA)
    (result,) = backend.generate([request])
    assert result.ok, result.error
    value = json.loads(result.text)
    assert schema_problem(value, SCHEMA) is None, result.text


def test_errors_are_results(backend: Backend) -> None:
    too_long = ask("word " * 5000)
    results = backend.generate([ask("Say hi."), too_long, ask("Say bye.")])
    assert len(results) == 3
    assert results[0].ok and results[2].ok
    assert not results[1].ok and results[1].error and results[1].texts == []


def test_model_id_is_portable(backend: Backend) -> None:
    if backend.kind == "embedded":
        path = default_gguf_path()
        assert backend.model_id == f"{path.name}:{path.stat().st_size}" and "/" not in backend.model_id
    assert backend.model_id


def test_missing_gguf_is_a_backend_error(tmp_path: Any) -> None:
    with pytest.raises(BackendError, match="not found"):
        create_backend(BackendConfig(kind="embedded", model=str(tmp_path / "nope.gguf")))
