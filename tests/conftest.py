"""Shared fixtures: the real data beside the checkout, and a plain client over a backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from personaloom.backends.base import Backend, ChatRequest, ChatResult

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PERSONA_CHAT = SHARED_DATA / "persona-chat" / "valid_both_original_no_cands.txt"
SPC_VALID = SHARED_DATA / "synthetic-persona-chat" / "Synthetic-Persona-Chat_valid.csv"


# The longest test files (make test's --durations), longest first. `make test` runs files in two processes
# (xdist --dist loadfile --no-loadscope-reorder) in collection order: started first, the long ones end before
# the short ones do, instead of one process running the last long file while the other idles.
LONGEST_FIRST = ("test_features_e2e.py", "test_pipeline.py", "test_calibrate.py", "test_notebook.py",
                 "test_scenarios.py", "test_context_window.py", "test_compat_servers.py",
                 "test_persona_collections.py", "test_generator_smollm2.py", "test_evaluate_real.py",
                 "test_reliability_crash.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole, in order


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
