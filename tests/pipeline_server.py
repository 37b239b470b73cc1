"""A loopback OpenAI-compatible server that plays `demo_responder`, and helpers to run the CLI against it.

In: HTTP chat-completion bodies (tests/servers.py's LoopbackServer does the HTTP, latency and faults).
Out: the same replies `--backend fake` would give, so `personaloom run --backend openai --base-url
<loopback>` builds a real dataset over HTTP. The stage is not sent over HTTP, so it is inferred from
the prompt's opening words (the templates in src/personaloom/prompts/ that demo_responder tells apart).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personaloom.backends.fake import demo_http_reply, infer_stage
from servers import BAD_CONTENT, LoopbackConfig, LoopbackServer, Reply, requested_schema

# Small sizes: the whole run makes a few hundred calls.
SMALL_RUN = (
    "--pairs", "3", "--iterations", "2", "--candidates", "2",
    "--set", "expand.new_attributes=6", "--set", "profiles.profiles=6",
    "--set", "expand.bootstrap_steps=1", "--set", "expand.max_clusters_for_questions=6",
)


def demo_reply(body: dict[str, Any], index: int) -> str:
    """The reply `--backend fake` would give to the ChatRequest this body was built from."""
    return demo_http_reply(body)


def garble_first_pair(reply: Reply = demo_reply) -> Reply:
    """`reply`, except that every Generator call for the first pair asked about gets unparseable text
    (all its candidates share the prompt), so that pair must end as a Failure record."""
    first: list[str] = []
    lock = threading.Lock()

    def garbled(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages", [])
        is_generator = (requested_schema(body) is None and infer_stage(body) == "generate"
                        and bool(messages) and messages[0].get("role") == "system")
        if is_generator:
            target = str(messages[-1].get("content", ""))
            with lock:
                if not first:
                    first.append(target)
            if target == first[0]:
                return BAD_CONTENT
        return reply(body, index)

    return garbled


class DemoServer(LoopbackServer):
    """LoopbackServer that also notes when each chat request finished (to bound calls lost at a kill)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finished_at: list[float] = []

    async def _complete(self, body: dict[str, Any], raw: bytes, headers: dict[str, str],
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            return await super()._complete(body, raw, headers, reader, writer)
        finally:
            self.finished_at.append(time.monotonic())

    def finished_since(self, moment: float) -> int:
        return sum(1 for t in list(self.finished_at) if t >= moment)


def demo_server(reply: Reply = demo_reply, **overrides: Any) -> DemoServer:
    """A loopback server (not started) answering like the demo model; overrides go to LoopbackConfig."""
    return DemoServer(LoopbackConfig(reply=reply, model="m"), **overrides)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "PERSONALOOM_DEBUG")}
    env.update({"PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})
    env.update(extra)
    return env


def cli_command(out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "personaloom.cli", "run", "--backend", "openai", "--base-url", url,
            "--model", "m", "--out", str(out), *SMALL_RUN, *extra]


def run_cli(out: Path, url: str, *extra: str, env: dict[str, str] | None = None,
            timeout: float = 300, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *cli_command(out, url, *extra)], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, check=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file parsed (raises on a corrupt line)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_jsonl_files(out: Path) -> int:
    """Parse every *.jsonl under a run directory; the number of files checked."""
    files = sorted(out.rglob("*.jsonl"))
    for path in files:
        read_jsonl(path)
    return len(files)
