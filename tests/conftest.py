"""Shared fixtures: the real data beside the checkout, and a plain client over a backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from personaloom.backends.base import Backend, ChatRequest, ChatResult

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PERSONA_CHAT = SHARED_DATA / "persona-chat" / "valid_both_original_no_cands.txt"
SPC_VALID = SHARED_DATA / "synthetic-persona-chat" / "Synthetic-Persona-Chat_valid.csv"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found: {path} (../shared/data beside the checkout)")
    return path


@pytest.fixture
def persona_chat_path() -> Path:
    return _need(PERSONA_CHAT)


@pytest.fixture
def spc_path() -> Path:
    return _need(SPC_VALID)


class BackendClient:
    """The thinnest LLMClient: no cache, no concurrency limit. For stage unit tests."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return await self.backend.agenerate(requests)
