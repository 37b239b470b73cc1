"""Executors: run stages' requests through a backend. `local` (asyncio, in this process) is the default;
`ray` (Ray Data) is imported only when asked for.
"""

from __future__ import annotations

from personaloom.executors.local import LLM

__all__ = ["LLM"]
