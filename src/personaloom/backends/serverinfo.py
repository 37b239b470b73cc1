"""What an OpenAI-compatible server says about its model's context window and tokenizer beyond the OpenAI API.

In: the backend's `openai.AsyncOpenAI` client (its auth headers and query go with every probe), the model name,
the API's root URL (backend.base_url without its /v1) and the user's backend.extra_body. Out:

- `window(...)` -> ((tokens, where it came from) or None, whether Ollama's API answered), the window from the
  first that says, in this order: a `num_ctx`
  the user sends (extra_body `options.num_ctx` or `num_ctx`, Ollama's), vLLM's /v1/models `max_model_len`,
  llama.cpp's server GET /props `default_generation_settings.n_ctx` (one slot's context), Ollama's GET /api/ps
  `context_length` of the loaded model (what it runs with), Ollama's POST /api/show `parameters` `num_ctx` (a
  Modelfile's). Ollama's /api/show `context_length` is the length the model was trained for, not the window it
  runs with (2,048 or 4,096 tokens unless set), so it is not taken.
- `Tokenizer.count(request)` -> the prompt tokens the server's own tokenizer counts, or None where it has none:
  vLLM's POST /tokenize with the messages (chat template applied) -> `count`; llama.cpp's POST /tokenize with
  the text -> `tokens`; llama-cpp-python's POST /extras/tokenize/count -> `count`. The form that answered is
  remembered; none answering, it is not asked again.

Every probe is bounded (PROBE_S) and any failure means "the server does not say": the run goes on as before.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Literal

import openai

from personaloom.chat import PER_MESSAGE_TOKENS, ChatRequest

PROBE_S = 5.0
_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


def root_of(url: str) -> str:
    """The server's root: `url` without a trailing /v1 (where /props, /tokenize and /api/... live)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def _ask(client: openai.AsyncOpenAI, method: Literal["get", "post"], url: str,
               body: dict[str, Any] | None = None) -> Any:
    """The JSON a probe answered, or None (any failure, an answer that is not JSON)."""
    try:
        if method == "get":
            raw = await asyncio.wait_for(client.get(url, cast_to=str), PROBE_S)
        else:
            raw = await asyncio.wait_for(client.post(url, cast_to=str, body=body), PROBE_S)
        return json.loads(raw)
    except Exception:  # a 404, a timeout, HTML: the server does not say
        return None


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _user_num_ctx(extra_body: dict[str, Any]) -> int | None:
    options = extra_body.get("options")
    found = options.get("num_ctx") if isinstance(options, dict) else None
    return _positive(found if found is not None else extra_body.get("num_ctx"))


def _named(model: str, entry: dict[str, Any]) -> bool:
    names = {str(entry.get("name") or ""), str(entry.get("model") or "")}
    return model in names or f"{model}:latest" in names


async def window(client: openai.AsyncOpenAI, model: str, root: str,
                 extra_body: dict[str, Any]) -> tuple[tuple[int, str] | None, bool]:
    """See the module docstring."""
    told = _user_num_ctx(extra_body)
    if told is not None:
        return (told, "the num_ctx in backend.extra_body"), "options" in extra_body
    listed = await _ask(client, "get", "/models")
    data = listed.get("data") if isinstance(listed, dict) else None
    data = data if isinstance(data, list) else []
    for entry in data:
        size = _positive(entry.get("max_model_len")) if isinstance(entry, dict) else None
        if size is not None and (entry.get("id") == model or len(data) == 1):
            return (size, "the server's /v1/models max_model_len"), False
    props = await _ask(client, "get", f"{root}/props")
    if isinstance(props, dict):
        settings = props.get("default_generation_settings")
        size = _positive(settings.get("n_ctx") if isinstance(settings, dict) else props.get("n_ctx"))
        if size is not None:
            return (size, "llama.cpp's /props n_ctx"), False
    running = await _ask(client, "get", f"{root}/api/ps")
    models = running.get("models") if isinstance(running, dict) else None
    for entry in models if isinstance(models, list) else []:
        size = _positive(entry.get("context_length")) if isinstance(entry, dict) else None
        if size is not None and _named(model, entry):
            return (size, "Ollama's /api/ps context_length"), True
    shown = await _ask(client, "post", f"{root}/api/show", {"model": model})
    found = _NUM_CTX.search(str(shown.get("parameters") or "")) if isinstance(shown, dict) else None
    if found is not None:
        return (int(found.group(1)), "the model's num_ctx (Ollama's /api/show)"), True
    return None, isinstance(models, list) or (isinstance(shown, dict) and "parameters" in shown)


class Tokenizer:
    """The server's token count of a request's prompt (see the module docstring)."""

    def __init__(self, model: str, root: str) -> None:
        self.model, self.root = model, root
        self.form: str | None = None  # "vllm", "llama.cpp", "llama-cpp-python" or "none"

    async def count(self, client: openai.AsyncOpenAI, request: ChatRequest) -> int | None:
        messages = [m.model_dump() for m in request.messages]
        text = "\n".join(m.content for m in request.messages)
        overhead = PER_MESSAGE_TOKENS * len(messages)  # a tokenizer given the text only
        for form in [self.form] if self.form is not None else ["vllm", "llama.cpp", "llama-cpp-python"]:
            found: int | None = None
            if form == "vllm":
                said = await _ask(client, "post", f"{self.root}/tokenize",
                                  {"model": self.model, "messages": messages, "add_generation_prompt": True})
                found = _positive(said.get("count")) if isinstance(said, dict) else None
            elif form == "llama.cpp":
                said = await _ask(client, "post", f"{self.root}/tokenize", {"content": text})
                tokens = said.get("tokens") if isinstance(said, dict) else None
                found = len(tokens) + overhead if isinstance(tokens, list) and tokens else None
            elif form == "llama-cpp-python":
                said = await _ask(client, "post", f"{self.root}/extras/tokenize/count",
                                  {"model": self.model, "input": text})
                counted = _positive(said.get("count")) if isinstance(said, dict) else None
                found = counted + overhead if counted is not None else None
            if found is not None:
                self.form = form
                return found
        if self.form is None:
            self.form = "none"
        return None


__all__ = ["PROBE_S", "Tokenizer", "root_of", "window"]
