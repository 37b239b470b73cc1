"""Requests fitted to the model's context window: a loopback server with a 2,048-token window that refuses
longer requests in vLLM's words (before and since 0.8) or llama.cpp's, `personaloom run` with 3 pairs end to end:
the window is learned from the first refusal and said once, the Generator's later requests carry fewer few-shot
examples, no refused request after the first, a kept conversation; the window from vLLM's /v1/models or
`backend.context_window`: no refusal at all; a server that truncates silently (Ollama) given its window: nothing
cut; a reply at the window is a cut prompt; a request that cannot fit is a `context_window` Failure, never sent;
the embedded model at n_ctx 1024."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from personaloom.chat import ChatRequest, ChatResult, Message, SamplingParams, Usage
from personaloom.executors.window import Window, cut, estimate, fit, refusal
from pipeline_server import cli_env, demo_server

WINDOW = 2048
GENERATOR = "You write realistic chat conversations"
SMALL = ("--pairs", "3", "--iterations", "2", "--candidates", "2", "--set", "expand.new_attributes=4",
         "--set", "expand.bootstrap_steps=1", "--set", "backend.concurrency=1")


def server_tokens(body: dict[str, Any]) -> int:
    """The loopback model's tokenizer: four characters a token."""
    return math.ceil(sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) / 4)


def vllm_old(prompt: int, completion: int) -> dict[str, Any]:
    return {"object": "error", "type": "BadRequestError", "code": 400,
            "message": f"This model's maximum context length is {WINDOW} tokens. However, you requested "
                       f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
                       "Please reduce the length of the messages or completion."}


def vllm_new(prompt: int, completion: int) -> dict[str, Any]:
    return {"error": {"object": "error", "type": "BadRequestError", "code": 400, "param": None,
                      "message": f"'max_tokens' or 'max_completion_tokens' is too large: {completion}. This model's "
                                 f"maximum context length is {WINDOW} tokens and your request has {prompt} input "
                                 f"tokens ({completion} > {WINDOW} - {prompt})."}}


def llama_cpp(prompt: int, completion: int) -> dict[str, Any]:
    return {"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": prompt, "n_ctx": WINDOW,
                      "message": f"request ({prompt} tokens) exceeds the available context size ({WINDOW} tokens)"}}


def refusing(words: Any) -> Any:
    def respond(n: int, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]] | None:
        prompt, completion = server_tokens(body), int(body.get("max_tokens") or 0)
        return (400, {}, words(prompt, completion)) if prompt + completion > WINDOW else None

    return respond


def examples(body: dict[str, Any]) -> int:
    """The few-shot examples (user, assistant pairs) of a Generator request."""
    return (len(body["messages"]) - 2) // 2


def run(tmp_path: Path, words: Any, *extra: str, **server_config: Any) -> tuple[
        subprocess.CompletedProcess[str], list[dict[str, Any]], dict[str, Any]]:
    config = {"respond": refusing(words)} if words is not None else {}
    with demo_server(keep_bodies=True, **config, **server_config) as server:
        result = subprocess.run(
            [sys.executable, "-m", "personaloom.cli", "run", "--backend", "openai", "--base-url", server.url,
             "--model", "m", "--out", str(tmp_path / "out"), *SMALL, *extra],
            capture_output=True, text=True, env=cli_env(), timeout=600, check=False)
        return result, list(server.bodies), server.stats()


@pytest.mark.parametrize("words", [vllm_old, vllm_new, llama_cpp], ids=["vllm", "vllm-0.8", "llama.cpp"])
def test_the_window_is_learned_from_the_first_refusal(tmp_path: Path, words: Any) -> None:
    result, bodies, stats = run(tmp_path, words)
    assert result.returncode == 0, result.stderr
    refused = [b for b in bodies if server_tokens(b) + int(b.get("max_tokens") or 0) > WINDOW]
    assert stats["faults"].get("scripted") == 1 and len(refused) == 1, "a too-long request went out after the first"
    generator = [b for b in bodies if b["messages"][0]["content"].startswith(GENERATOR)]
    assert generator[0] is refused[0] and examples(generator[0]) == 5  # the paper's five, then fewer
    assert all(examples(b) < 5 for b in generator[1:])
    said = [ln for ln in result.stderr.splitlines() if f"context window is {WINDOW} tokens" in ln]
    assert len(said) == 1, result.stderr
    out = tmp_path / "out"
    assert json.loads((out / "conversations.jsonl").read_text().splitlines()[0])["turns"]
    generate = json.loads((out / "stats.json").read_text())["stages"]["generate"]
    assert generate["context_refused"] == 1 and generate["refitted"] >= len(generator) - 1
    assert generate["examples_dropped"] >= len(generator) - 1 and generate["errors"] == 0
    assert "<h3>Context window</h3>" in (out / "report.html").read_text()
    learned = json.loads((out / "context_windows.json").read_text())
    assert [w["tokens"] for w in learned.values()] == [WINDOW]


def test_a_window_set_in_the_config_sends_no_request_the_server_refuses(tmp_path: Path) -> None:
    result, bodies, stats = run(tmp_path, vllm_old, "--set", f"backend.context_window={WINDOW}")
    assert result.returncode == 0, result.stderr
    assert "scripted" not in stats["faults"] and bodies
    generator = [b for b in bodies if b["messages"][0]["content"].startswith(GENERATOR)]
    assert generator and all(examples(b) < 5 for b in generator)
    assert sum("prompts are fitted to its 2048-token context window" in ln for ln in result.stderr.splitlines()) == 1
    # Resumed: the same fitted requests, answered by the cache.
    again, _, after = run(tmp_path, vllm_old, "--set", f"backend.context_window={WINDOW}")
    assert again.returncode == 0 and after["total"] == 0


def test_a_window_the_server_states_is_used_from_the_first_request(tmp_path: Path) -> None:
    """vLLM's /v1/models gives max_model_len: nothing too long is ever sent."""
    result, bodies, stats = run(tmp_path, vllm_old, max_model_len=WINDOW)
    assert result.returncode == 0, result.stderr
    assert "scripted" not in stats["faults"]
    generator = [b for b in bodies if b["messages"][0]["content"].startswith(GENERATOR)]
    assert generator and all(examples(b) < 5 for b in generator)
    assert "context window (the server's /v1/models max_model_len)" in " ".join(result.stderr.split())


def test_a_server_that_cuts_prompts_silently_gets_none_to_cut_once_its_window_is_set(tmp_path: Path) -> None:
    """Ollama truncates a prompt longer than its num_ctx and reports the window as the prompt's tokens: with
    backend.context_window set to it, every request is fitted and no reply follows a cut prompt."""
    result, bodies, _ = run(tmp_path, None, "--set", f"backend.context_window={WINDOW}",
                                prompt_tokens=lambda body: min(server_tokens(body), WINDOW))
    assert result.returncode == 0, result.stderr
    assert bodies and all(server_tokens(b) + int(b.get("max_tokens") or 0) <= WINDOW for b in bodies)
    assert (tmp_path / "out" / "conversations.jsonl").read_text().strip()


def test_a_reply_at_the_window_is_a_cut_prompt() -> None:
    full = request("Write a conversation.", 2, "the pair")
    window = Window(WINDOW, "backend.context_window")
    at_window = ChatResult(texts=["User 1: hi"], usage=Usage(prompt_tokens=WINDOW, completion_tokens=3))
    said = cut(at_window, full, window)
    assert said is not None and said.startswith("the server cut the prompt") and f"window of {WINDOW}" in said
    learned = refusal(said, full)
    assert learned is not None and learned.tokens == WINDOW and learned.chars_per_token < 3.0
    assert cut(at_window.model_copy(update={"usage": Usage(prompt_tokens=900)}), full, window) is None
    assert cut(at_window, full, None) is None


def request(system: str, shots: int, target: str, max_tokens: int = 400) -> ChatRequest:
    messages = [Message(role="system", content=system)]
    for i in range(shots):
        messages += [Message(role="user", content=f"profiles {i} " * 40), Message(role="assistant", content="x" * 900)]
    messages.append(Message(role="user", content=target))
    return ChatRequest(messages=messages, params=SamplingParams(max_tokens=max_tokens),
                       few_shot=(1, 2 * shots) if shots else None)


def test_fitting_drops_whole_examples_from_the_end_and_refuses_what_cannot_fit() -> None:
    full = request("Write a conversation.", 5, "the pair")
    window = Window(1500, "test")
    fitted, dropped = fit(full, window)
    assert fitted is not None and dropped >= 1 and fitted.few_shot == (1, 2 * (5 - dropped))
    assert fitted.messages[: 1 + 2 * (5 - dropped)] == full.messages[: 1 + 2 * (5 - dropped)]
    assert fitted.messages[-1] == full.messages[-1] and estimate(fitted) + 400 + 32 <= 1500
    assert fit(full, Window(100_000, "test")) == (full, 0)
    assert fit(request("x" * 9000, 0, "the pair"), window) == (None, 0)
    assert fit(fitted, window) == (fitted, 0)  # deterministic: a fitted request fits as it is
    learned = refusal("HTTP 400 from http://h/v1: " + vllm_old(2578, 400)["message"], full)
    assert learned is not None and learned.tokens == WINDOW
    assert learned.chars_per_token == pytest.approx(0.9 * sum(len(m.content) for m in full.messages) / 2578, rel=1e-3)
    assert refusal("HTTP 400: 'temperature' must be below 2", full) is None


def test_a_request_that_cannot_fit_is_a_context_window_failure_never_sent(tmp_path: Path) -> None:
    result, bodies, _ = run(tmp_path, vllm_old, "--set", "backend.context_window=300", "--pairs", "1",
                            "--iterations", "1")
    generator = [b for b in bodies if b["messages"][0]["content"].startswith(GENERATOR)]
    assert not generator  # nothing the server could not take was sent
    failures = [json.loads(ln) for p in (tmp_path / "out").glob("iterations/*/failures.jsonl")
                for ln in p.read_text().splitlines()]
    assert failures and all(f["reason"] == "context_window" for f in failures if f["stage"] == "generate")
    assert any("has 300 (backend.context_window)" in f["detail"] and "generate.few_shot" in f["detail"]
               for f in failures)
    assert result.returncode != 3, result.stderr  # an outcome the run explains, never an internal error


@pytest.mark.slow
def test_the_embedded_model_at_n_ctx_1024_keeps_running_with_fewer_examples(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "personaloom.cli", "run", "--out", str(tmp_path / "out"), "--pairs", "1",
         "--iterations", "1", "--candidates", "2", "--set", "backend.n_ctx=1024", "--set", "expand.new_attributes=0",
         "--set", "expand.bootstrap_steps=0", "--set", "expand.max_clusters_for_questions=2",
         "--set", "profiles.profiles=4"],
        capture_output=True, text=True, env=cli_env(), timeout=1200, check=False)
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    generate = stats["stages"]["generate"]
    assert generate["refitted"] == generate["calls"] == 2 and generate["examples_dropped"] >= 2
    assert generate["errors"] == 0, "a request over n_ctx reached the model"
    assert "prompts are fitted to its 1024-token context window (backend.n_ctx)" in " ".join(result.stderr.split())


def test_doctor_says_each_endpoints_window_and_where_it_came_from(tmp_path: Path) -> None:
    with demo_server(max_model_len=WINDOW) as server:
        stated = subprocess.run([sys.executable, "-m", "personaloom.cli", "doctor", "--backend", "openai",
                                 "--base-url", server.url, "--model", "m"], capture_output=True, text=True,
                                env=cli_env(), timeout=120, check=False)
    with demo_server() as server:
        unstated = subprocess.run([sys.executable, "-m", "personaloom.cli", "doctor", "--backend", "openai",
                                   "--base-url", server.url, "--model", "m"], capture_output=True, text=True,
                                  env=cli_env(), timeout=120, check=False)
    assert stated.returncode == 0, stated.stdout + stated.stderr
    assert f"context window {WINDOW} (the server's /v1/models max_model_len)" in stated.stdout
    assert "context window not stated (learned from the first refusal" in unstated.stdout

