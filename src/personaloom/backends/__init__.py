"""LLM backends: pick one from a `BackendConfig` and find the default embedded model.

In: `BackendConfig` (kind embedded | openai | fake). Out: a `Backend` (base.py protocol). Each kind's
module is imported only when that kind is asked for, so a server-only run never loads llama.cpp.
"""

from __future__ import annotations

from personaloom.aio import gather_all
from personaloom.backends.base import Backend
from personaloom.backends.models import default_gguf_path
from personaloom.chat import ChatRequest, ChatResult, Message, SamplingParams, Usage
from personaloom.config import BackendConfig
from personaloom.errors import ConfigError

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

        return FakeBackend(demo_responder, model=cfg.model or "fake-model", max_concurrency=cfg.concurrency,
                           record=False)
    raise ConfigError(f"setting backend.kind: unknown backend {cfg.kind!r} (embedded, openai or fake)")
