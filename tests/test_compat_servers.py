"""Compatibility suite (issue 15): `personaloom run` against the servers people point it at.

In: loopback OpenAI-compatible servers that answer like the demo model but shape every reply as a real
server kind does, per its documentation and its users' bug reports:
- vLLM / SGLang with a reasoning parser: the answer in `content`, the thinking in `reasoning_content`;
- vLLM without a reasoning parser (DeepSeek-R1 distills, Qwen3, QwQ): `<think>` + draft `User 1:` lines and
  a draft JSON verdict before the answer in `content`; DeepSeek-R1's template that opens the block in the
  prompt (only `</think>` in the reply);
- Ollama with a thinking model: `content: ""` and the text in `message.reasoning`, unless the request says
  `reasoning_effort: "none"`; a gateway answering `content: null` with `reasoning_content`;
- a strict OpenAI / Azure-style endpoint: HTTP 400 "Unrecognized request argument supplied: top_k" and
  "Unsupported parameter: 'max_tokens' ... Use 'max_completion_tokens' instead";
- a server that sends no `usage` block;
plus the REAL `python -m llama_cpp.server`.
Out: each run ends with a kept conversation (the same ones the plain demo server gives, so no draft inside
a reasoning block was read as an answer or a verdict) or with one error line naming the server's problem,
exit 2, and nothing failed in cache.sqlite.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline_server import DemoServer, cli_env, demo_reply, read_jsonl, run_cli
from servers import LlamaServer, LoopbackConfig, llama_server_fixture, requested_schema, words  # noqa: F401

DRAFT = ('Okay, let me draft it first.\nUser 1: a draft line nobody should keep\nUser 2: another draft\n'
         '{"winner": "B", "decision": "reject", "answer": "no", "toxic": true, "faithful": false, '
         '"contradicts": true}\nHmm, that is not right. Let me write the final one.')
# One pair, one round: the whole run is a few dozen calls.
ONE_PAIR = ("--pairs", "1", "--iterations", "1")


class CompatServer(DemoServer):
    """The demo model behind a server of kind `flavour` (see the module docstring)."""

    def __init__(self, flavour: str) -> None:
        super().__init__(LoopbackConfig(reply=demo_reply, model="m", keep_bodies=True))
        self.flavour = flavour

    def _message(self, body: dict[str, Any], answer: str) -> dict[str, Any]:
        f = self.flavour
        if f in ("vllm-reasoning-parser", "sglang"):
            return {"role": "assistant", "content": answer, "reasoning_content": DRAFT}
        if f == "vllm-think-in-content":
            return {"role": "assistant", "content": f"<think>\n{DRAFT}\n</think>\n\n{answer}"}
        if f == "deepseek-r1-template":
            return {"role": "assistant", "content": f"{DRAFT}\n</think>\n\n{answer}"}
        if f == "ollama-thinking":
            if body.get("reasoning_effort") == "none":
                return {"role": "assistant", "content": answer}
            return {"role": "assistant", "content": "", "reasoning": f"{DRAFT}\n{answer}"}
        if f == "gateway-null-content":
            return {"role": "assistant", "content": None, "reasoning_content": f"{DRAFT}\n{answer}"}
        return {"role": "assistant", "content": answer}

    def _strict_refusal(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if self.flavour != "strict-openai":
            return None
        if "top_k" in body:
            return {"message": "Unrecognized request argument supplied: top_k", "type": "invalid_request_error",
                    "param": None, "code": None}
        if "max_tokens" in body:
            return {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                               "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                    "param": "max_tokens", "code": "unsupported_parameter"}
        return None

    async def _complete(self, body: dict[str, Any], raw: bytes, headers: dict[str, str],
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        self._admit(body, raw, None)
        refusal = self._strict_refusal(body)
        if refusal is not None:
            await self._send(writer, 400, json.dumps({"error": refusal}).encode())
            return True
        answer = demo_reply(body, 0)
        prompt = sum(words(str(m.get("content", ""))) for m in body.get("messages", []))
        choice: dict[str, Any] = {"index": 0, "message": self._message(body, answer), "finish_reason": "stop"}
        if self.flavour == "sglang":
            choice["matched_stop"] = None
        payload: dict[str, Any] = {"id": "x", "object": "chat.completion", "created": int(time.time()),
                                   "model": "m", "choices": [choice]}
        if self.flavour != "no-usage":
            payload["usage"] = {"prompt_tokens": prompt, "completion_tokens": words(answer),
                                "total_tokens": prompt + words(answer)}
        await self._send(writer, 200, json.dumps(payload).encode())
        return True


def run_against(flavour: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], CompatServer]:
    with CompatServer(flavour) as server:
        done = run_cli(out, server.url, *ONE_PAIR, *extra, timeout=300)
    return done, server


def cached_texts(out: Path) -> list[str]:
    with sqlite3.connect(out / "cache.sqlite") as db:
        return [json.loads(row[0])["texts"][0] for row in db.execute("SELECT result FROM responses")]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The conversations a plain OpenAI-compatible server gives for the same run."""
    out = tmp_path_factory.mktemp("plain") / "run"
    done, _ = run_against("plain", out)
    assert done.returncode == 0, done.stderr[-2000:]
    convs = read_jsonl(out / "conversations.jsonl")
    assert len(convs) == 1 and convs[0]["turns"]
    return convs


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["vllm-reasoning-parser", "sglang", "vllm-think-in-content",
                                     "deepseek-r1-template"])
def test_reasoning_is_never_an_answer(flavour: str, tmp_path: Path, plain: list[dict[str, Any]]) -> None:
    out = tmp_path / "run"
    done, _ = run_against(flavour, out)
    assert done.returncode == 0, done.stderr[-2000:]
    convs = read_jsonl(out / "conversations.jsonl")
    # The very conversations (and votes) of the plain server: no draft line became a turn, no draft
    # verdict decided a vote, nothing was trimmed to the draft.
    assert [c["turns"] for c in convs] == [c["turns"] for c in plain]
    assert [c["critic"] for c in convs] == [c["critic"] for c in plain]
    assert not any("draft" in t["text"] for c in convs for t in c["turns"])
    assert all("<think>" not in t and "draft line" not in t for t in cached_texts(out))


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["ollama-thinking", "gateway-null-content"])
def test_reasoning_only_replies_stop_with_the_cause_and_are_not_cached(flavour: str, tmp_path: Path,
                                                                       plain: list[dict[str, Any]]) -> None:
    out = tmp_path / "run"
    done, server = run_against(flavour, out)
    assert done.returncode == 2, done.stderr[-2000:]
    error = [ln for ln in done.stderr.splitlines() if ln.startswith("personaloom: error:")]
    assert len(error) == 1, done.stderr[-2000:]
    assert "reasoning only" in error[0] and "turn thinking off" in error[0] and "expand" in error[0], error[0]
    assert "Traceback" not in done.stderr
    assert server.stats()["total"] < 60, "a dead server must stop the run early"
    assert cached_texts(out) == []  # nothing failed was cached as a success
    stats = json.loads((out / "stats.json").read_text())
    assert stats["llm_errors"] and "reasoning only" in stats["llm_errors"][0]["message"]
    failures = read_jsonl(out / "failures.jsonl")
    assert failures and all(f["reason"] == "llm_error" and "reasoning only" in f["detail"] for f in failures)

    # The same --out against a working server (or with thinking turned off) just works: nothing stale.
    fix = ("--set", "backend.extra_body.reasoning_effort=none") if flavour == "ollama-thinking" else ()
    again, _ = run_against("ollama-thinking" if fix else "plain", out, *fix)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [c["turns"] for c in read_jsonl(out / "conversations.jsonl")] == [c["turns"] for c in plain]


@pytest.mark.slow
def test_strict_endpoint_gets_what_it_accepts(tmp_path: Path, plain: list[dict[str, Any]]) -> None:
    out = tmp_path / "run"
    done, server = run_against("strict-openai", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [c["turns"] for c in read_jsonl(out / "conversations.jsonl")] == [c["turns"] for c in plain]
    # Said once each, with the server's own words; then every request was sent without the field.
    notes = [ln for ln in done.stderr.splitlines() if "rejects" in ln]
    assert len(notes) == 2, done.stderr[-2000:]
    assert "top_k" in notes[0] and "Unrecognized request argument supplied: top_k" in notes[0]
    assert "max_completion_tokens" in notes[1]
    # Only requests already in flight when a refusal arrived (at most backend.concurrency, 16, per
    # field) were refused; everything after went out in the accepted form.
    refused = [i for i, b in enumerate(server.bodies) if "top_k" in b or "max_tokens" in b]
    assert len(refused) <= 32 and len(server.bodies) > 2 * len(refused) + 40, (len(refused), len(server.bodies))
    assert all("max_completion_tokens" in b for b in server.bodies[max(refused) + 1 :])


@pytest.mark.slow
def test_top_k_can_be_switched_off_in_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done, server = run_against("plain", out, "--set", "sampling.top_k=null")
    assert done.returncode == 0, done.stderr[-2000:]
    assert server.bodies and not any("top_k" in b for b in server.bodies)


@pytest.mark.slow
def test_a_refused_setting_that_cannot_be_dropped_stops_with_the_servers_words(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # extra_body fields are the user's: personaloom never drops them, so the 400 must reach the user.
    with StrictExtraServer() as server:
        done = run_cli(out, server.url, *ONE_PAIR, "--set", "backend.extra_body.frobnicate=1", timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    error = [ln for ln in done.stderr.splitlines() if ln.startswith("personaloom: error:")]
    assert len(error) == 1 and "HTTP 400" in error[0] and "frobnicate is not a valid field" in error[0], error
    stats = json.loads((out / "stats.json").read_text())
    assert "frobnicate is not a valid field" in stats["llm_errors"][0]["message"]
    assert "frobnicate" in read_jsonl(out / "failures.jsonl")[0]["detail"]


class StrictExtraServer(CompatServer):
    def __init__(self) -> None:
        super().__init__("plain")

    def _strict_refusal(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if "frobnicate" in body:
            return {"message": "frobnicate is not a valid field\nmore detail on the next line"}
        return None


@pytest.mark.slow
def test_unknown_usage_is_unknown_not_zero(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done, _ = run_against("no-usage", out)
    assert done.returncode == 0, done.stderr[-2000:]
    llm = json.loads((out / "stats.json").read_text())["llm"]
    assert llm["calls"] > 0 and llm["usage_unknown"] == llm["calls"] and llm["prompt_tokens"] == 0
    assert "the server reported no usage" in done.stderr
    estimate = subprocess.run(
        [sys.executable, "-m", "personaloom.cli", "run", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
         "--model", "m", "--out", str(out), *ONE_PAIR, "--dry-run", "--price-in", "1"],
        capture_output=True, text=True, env=cli_env(), timeout=120, check=False,
    )
    assert estimate.returncode == 0, estimate.stderr
    assert "server reported no usage" in estimate.stdout and "$0.00" not in estimate.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_llama_cpp_server_end_to_end(tmp_path: Path, llama_server: LlamaServer) -> None:
    """SmolLM2-135M behind the real llama_cpp.server: the run finishes, its generations parse into
    turns, and no call failed. (Whether a 135M model's candidate survives the Critic is the model's
    business; `kept` is reported either way.)"""
    out = tmp_path / "run"
    done = run_cli(out, llama_server.url, *ONE_PAIR, "--candidates", "2", "--model", llama_server.model,
                   "--set", "expand.new_attributes=2", "--set", "expand.bootstrap_steps=0",
                   "--set", "expand.max_clusters_for_questions=2", "--set", "profiles.nli=none",
                   "--set", "generate.max_tokens=200", "--set", "generate.temperature=1.0",
                   # llama_cpp.server runs with a 2048-token context here: two short few-shot examples.
                   "--set", "generate.few_shot=2", "--set", "generate.example_max_turns=6", timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["llm"]["errors"] == 0 and stats["llm"]["calls"] > 0, stats["llm_errors"]
    candidates = read_jsonl(out / "iterations" / "1" / "candidates.jsonl")
    assert any(len(c["turns"]) >= 2 for c in candidates), candidates
