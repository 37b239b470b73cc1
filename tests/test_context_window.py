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
from personaloom.executors.window import Window, corrected, cut, estimate, fit, refusal
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


def ollama_runner(body: dict[str, Any]) -> int:
    """Ollama's usage for a prompt longer than num_ctx: the runner keeps num_ctx tokens and reports that many."""
    return min(server_tokens(body), WINDOW)


def ollama_ps(server: Any, body: dict[str, Any]) -> tuple[int, Any]:
    """GET /api/ps: the model is listed, with the context it runs with, once it has been loaded by a request."""
    loaded = [{"name": "m:latest", "model": "m:latest", "context_length": WINDOW}] if server.total else []
    return 200, {"models": loaded}


OLLAMA_SHOW = {"modelfile": "FROM m", "parameters": 'stop "<|im_end|>"', "model_info": {"llama.context_length": 131072}}


def test_ollama_cutting_silently_with_its_window_unknown_is_caught_and_every_later_request_fitted(
        tmp_path: Path) -> None:
    """The window is nowhere before the first request (/api/ps lists no model loaded, /api/show's Modelfile sets
    no num_ctx): the first over-long reply reports exactly 2,048 prompt tokens, is taken as cut (never cached or
    kept), the window is asked again (/api/ps now says it) and the request refitted; nothing cut after it."""
    routes = {"GET /api/ps": ollama_ps, "POST /api/show": lambda server, body: (200, OLLAMA_SHOW)}
    result, bodies, stats = run(tmp_path, None, prompt_tokens=ollama_runner, routes=routes)
    assert result.returncode == 0, result.stderr
    cut_short = [b for b in bodies if server_tokens(b) > WINDOW]
    generator = [b for b in bodies if b["messages"][0]["content"].startswith(GENERATOR)]
    assert len(cut_short) == 1 and cut_short[0] is generator[0] and examples(generator[0]) == 5
    assert all(server_tokens(b) + int(b.get("max_tokens") or 0) <= WINDOW for b in generator[1:])
    assert all(examples(b) < 5 for b in generator[1:])
    said = [ln for ln in result.stderr.splitlines() if f"context window is {WINDOW} tokens" in ln]
    assert len(said) == 1 and "/api/ps" in said[0], result.stderr
    out = tmp_path / "out"
    assert json.loads((out / "conversations.jsonl").read_text().splitlines()[0])["turns"]
    generate = json.loads((out / "stats.json").read_text())["stages"]["generate"]
    assert generate["context_refused"] == 1 and generate["errors"] == 0
    assert stats["routed"]["GET /api/ps"] == 2  # before the first request, and after the cut


@pytest.mark.parametrize("where", ["ollama-show", "llama.cpp-props"])
def test_a_window_the_server_states_outside_the_openai_api_is_used_from_the_first_request(
        tmp_path: Path, where: str) -> None:
    """Ollama's /api/show num_ctx (a Modelfile's PARAMETER), llama.cpp's /props n_ctx: nothing is cut or refused."""
    if where == "ollama-show":
        shown = {**OLLAMA_SHOW, "parameters": f"num_ctx                        {WINDOW}\nstop \"<|im_end|>\""}
        routes: dict[str, Any] = {"POST /api/show": lambda server, body: (200, shown)}
        source = "the model's num_ctx (Ollama's /api/show)"
    else:
        routes = {"GET /props": lambda server, body: (200, {"default_generation_settings": {"n_ctx": WINDOW},
                                                          "total_slots": 1})}
        source = "llama.cpp's /props n_ctx"
    result, bodies, stats = run(tmp_path, llama_cpp, prompt_tokens=ollama_runner, routes=routes)
    assert result.returncode == 0, result.stderr
    assert "scripted" not in stats["faults"] and all(server_tokens(b) <= WINDOW for b in bodies)
    generator = [b for b in bodies if b["messages"][0]["content"].startswith(GENERATOR)]
    assert generator and all(examples(b) < 5 for b in generator)
    assert f"context window ({source})" in " ".join(result.stderr.split())


def vllm_tokenize(server: Any, body: dict[str, Any]) -> tuple[int, Any]:
    count = server_tokens(body)
    return 200, {"count": count, "max_model_len": WINDOW, "tokens": list(range(count))}


def llama_tokenize(server: Any, body: dict[str, Any]) -> tuple[int, Any]:
    if "content" not in body:
        return 400, {"error": {"code": 400, "message": "\"content\" must be provided", "type": "invalid_request_error"}}
    return 200, {"tokens": list(range(math.ceil(len(str(body["content"])) / 4)))}


@pytest.mark.parametrize("tokenize", [vllm_tokenize, llama_tokenize], ids=["vllm", "llama.cpp"])
def test_the_servers_tokenizer_counts_a_request_the_estimate_would_cut_down(tmp_path: Path, tokenize: Any) -> None:
    """The 3-characters-a-token estimate errs long; where the server has /tokenize (vLLM: messages -> count;
    llama.cpp: content -> tokens) a request the estimate would shorten is counted, and keeps more examples."""
    setting = ("--set", f"backend.context_window={WINDOW}", "--set", "generate.max_tokens=200")
    fixed, plain, _ = run(tmp_path / "estimated", vllm_old, *setting)
    assert fixed.returncode == 0, fixed.stderr
    estimated = [examples(b) for b in plain if b["messages"][0]["content"].startswith(GENERATOR)]
    result, bodies, stats = run(tmp_path / "counted", vllm_old, *setting, routes={"POST /tokenize": tokenize})
    assert result.returncode == 0, result.stderr
    assert "scripted" not in stats["faults"] and stats["routed"]["POST /tokenize"] >= 1
    counted = [examples(b) for b in bodies if b["messages"][0]["content"].startswith(GENERATOR)]
    assert counted and max(counted) > max(estimated) and max(counted) < 5


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
    fitted, dropped, capped = fit(full, window)
    assert fitted is not None and dropped >= 1 and capped == 0 and fitted.few_shot == (1, 2 * (5 - dropped))
    assert fitted.messages[: 1 + 2 * (5 - dropped)] == full.messages[: 1 + 2 * (5 - dropped)]
    assert fitted.messages[-1] == full.messages[-1] and estimate(fitted) + 400 + 32 <= 1500
    assert fit(full, Window(100_000, "test")) == (full, 0, 0)
    assert fit(request("x" * 9000, 0, "the pair"), window) == (None, 0, 0)
    assert fit(fitted, window) == (fitted, 0, 0)  # deterministic: a fitted request fits as it is
    # Counted by the server at 4.5 characters a token: more examples kept than the 3.0 estimate allows.
    counted, fewer, _ = fit(full, window, 4.5)
    assert counted is not None and fewer < dropped
    learned = refusal("HTTP 400 from http://h/v1: " + vllm_old(2578, 400)["message"], full)
    assert learned is not None and learned.tokens == WINDOW
    assert learned.chars_per_token == pytest.approx(0.9 * sum(len(m.content) for m in full.messages) / 2578, rel=1e-3)
    assert refusal("HTTP 400: 'temperature' must be below 2", full) is None


def test_the_last_example_is_capped_in_turns_before_it_goes() -> None:
    turns = "\n".join(f"User {1 + i % 2}: " + "word " * 30 for i in range(16))
    messages = [Message(role="system", content="Write a conversation."),
                Message(role="user", content="profiles " * 20), Message(role="assistant", content=turns),
                Message(role="user", content="the pair")]
    full = ChatRequest(messages=messages, params=SamplingParams(max_tokens=400), few_shot=(1, 2))
    # Needed: whole ~1,370 tokens; capped at 4 turns ~730, at 2 ~625; without the example ~450.
    fitted, dropped, capped = fit(full, Window(750, "test"))
    assert fitted is not None and dropped == 0 and capped == 4 and fitted.few_shot == (1, 2)
    assert fitted.messages[2].content.splitlines() == turns.splitlines()[:4]
    assert fitted.messages[1] == messages[1] and fitted.messages[-1] == messages[-1]
    bare, dropped, capped = fit(full, Window(500, "test"))
    assert bare is not None and dropped == 1 and capped == 0 and bare.few_shot is None and len(bare.messages) == 2


def test_a_cut_is_told_without_a_known_window_and_a_short_estimate_is_corrected() -> None:
    full = request("Write a conversation.", 5, "the pair")  # ~1,900 tokens estimated
    reply = ChatResult(texts=["User 1: hi"], usage=Usage(prompt_tokens=1024, completion_tokens=3))
    said = cut(reply, full, None)  # exactly a power of two below the estimate: Ollama's runner kept num_ctx
    assert said is not None and "context window is 1024 tokens" in said and "backend.context_window" in said
    learned = refusal(said, full)
    assert learned is not None and learned.tokens == 1024
    assert "window is 1024" in (cut(reply.model_copy(update={"usage": Usage(prompt_tokens=700)}), full, None) or "")
    assert cut(reply.model_copy(update={"usage": Usage(prompt_tokens=1400)}), full, None) is None  # a plain reply
    assert cut(reply.model_copy(update={"usage": Usage(reported=False)}), full, None) is None
    assert cut(reply, request("short", 0, "the pair"), None) is None  # too short to tell
    # Exactly 1,024 tokens from a server not known to be Ollama is a prompt of that length, no sign of a cut;
    # under half the estimate still is one; a backend that never cuts (the embedded model) is never read so.
    at_2048 = reply.model_copy(update={"usage": Usage(prompt_tokens=2048)})  # above half of ~2,290 estimated
    assert cut(at_2048, full, None, "maybe") is None and cut(at_2048, full, None, "ollama") is not None
    assert cut(reply.model_copy(update={"usage": Usage(prompt_tokens=700)}), full, None, "maybe") is not None
    assert cut(reply.model_copy(update={"usage": Usage(prompt_tokens=700)}), full, None, "never") is None
    window = Window(WINDOW, "test")
    assert corrected(window, request("short", 0, "the pair"), 400) is None  # a short prompt's template skews it
    assert corrected(window, full, 1200) is None  # the estimate errs long, as it should
    finer = corrected(window, full, 2500)  # a text the tokenizer splits finely: estimate longer from now on
    assert finer is not None and finer.tokens == WINDOW and finer.chars_per_token < window.chars_per_token
    assert estimate(full, finer.chars_per_token) >= 2500


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



def test_a_listwise_ranking_the_window_cannot_hold_is_compared_pairwise(tmp_path: Path) -> None:
    """Four candidates ranked in one request do not fit 1,100 tokens; pairs of them do: the quality experts
    compare pairwise instead (no failure recorded for them), a filter expert that cannot fit says why."""
    import personaloom as pl

    out = tmp_path / "out"
    cfg = pl.configure(None, backend="fake", out=str(out), pairs=2, seed=1, **{
        "critic.mode": "listwise", "generate.candidates": 4, "generate.iterations": 1,
        "expand.new_attributes": 4, "expand.bootstrap_steps": 1, "backend.context_window": 1100})
    run = pl.run(cfg)
    assert run.stats.conversations == 2
    stages = json.loads((out / "stats.json").read_text())["stages"]
    verdicts = [json.loads(ln) for ln in (out / "iterations" / "1" / "verdicts.jsonl").read_text().splitlines()]
    for expert in ("depth", "likeability"):
        assert stages[f"critic.{expert}"]["context_window"] == 2  # one ranking per pair could not fit
        assert stages[f"critic.{expert}"]["calls"] == 2 * 6  # C(4, 2) comparisons per pair instead
        decisions = {v["decision"] for v in verdicts if v["expert"] == expert}
        assert decisions and decisions <= {"win", "lose", "tie"}
    failures = [json.loads(ln) for ln in (out / "iterations" / "1" / "failures.jsonl").read_text().splitlines()]
    assert not [f for f in failures if f["stage"] in ("critic.depth", "critic.likeability")]
    faithfulness = [f for f in failures if f["stage"] == "critic.faithfulness"]
    assert faithfulness and all("max_tokens of critic.faithfulness"
                                in f["detail"] and "generate.few_shot" not in f["detail"] for f in faithfulness)
    summary = json.loads((out / "conversations.jsonl").read_text().splitlines()[0])["critic"]
    assert summary["mode"] == "listwise" and summary["winner"]
