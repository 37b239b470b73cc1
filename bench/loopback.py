"""A loopback OpenAI-compatible server for the benchmarks, run in its own process.

In: latency settings on the command line (or `spawn(...)` from a bench script). Out: the base URL on
the first stdout line; POST /v1/chat/completions answered after a modelled latency; GET /_stats
(requests, max in flight, first arrival / last answer times); POST /_reset.

Latency model, per request: (latency + per_token x completion words) x exp(N(0, sigma)), where the
completion length is a fraction U(lo, hi) of the request's max_tokens (or `--reply-words` when set).
Every random draw is keyed by (seed, hash of messages + max_tokens + n), never by arrival order, so two clients that
send the same requests get the same replies and latencies. With n > 1 the choices decode in
parallel, as on a batching server: the latency follows the longest choice, usage counts them all.
`--slots k` lets at most k requests be served at once (the rest queue, like vLLM's max_num_seqs);
0 = unlimited. One asyncio task per connection, no thread per request.

tests/servers.py has a richer loopback server (faults, schemas, echo replies); this one adds what
the peer benchmark needs: per-request completion lengths, parallel n, server-side slots and a
timeline of the busy window. It is stdlib-only so that another venv's process can start it too, except
`--replies demo` (bench/e2e_scale.py): the replies `--backend fake` gives, so a whole `personaloom run`
parses them, with the latency following each reply's length; GET /_stats adds the summed service seconds
(`busy_s`) and the longest single request (`max_latency_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.slots = asyncio.Semaphore(args.slots) if args.slots > 0 else None
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_arrival: float | None = None
        self.last_answer: float | None = None
        self.completion_words = 0
        self.busy_s = 0.0
        self.max_latency_s = 0.0

    def stats(self) -> dict[str, Any]:
        window = (self.last_answer - self.first_arrival) if self.first_arrival and self.last_answer else 0.0
        return {"total": self.total, "max_in_flight": self.max_in_flight, "window_s": window,
                "first_arrival": self.first_arrival, "last_answer": self.last_answer,
                "completion_words": self.completion_words, "busy_s": self.busy_s,
                "max_latency_s": self.max_latency_s}

    def _reply(self, body: dict[str, Any]) -> tuple[list[str], float]:
        a = self.args
        n = max(1, int(body.get("n") or 1))
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        # Keyed by what decides a reply's length (messages, max_tokens, n), not by client-specific
        # fields (model name, sampling, seed): two clients sending the same prompts get the same work.
        key = json.dumps([_plain_messages(body.get("messages")), max_tokens, n], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()
        rng = random.Random(f"{a.seed}:{digest}")
        demo = _demo_reply(body) if a.replies == "demo" else None
        lengths = []
        for _ in range(n):
            if demo is not None:
                lengths.append(len(demo.split()))
            elif a.reply_words is not None:
                lengths.append(a.reply_words)
            else:
                lengths.append(max(1, round(max_tokens * rng.uniform(a.lo, a.hi))))
        delay = a.latency + a.per_token * max(lengths)
        if a.sigma > 0:
            delay *= math.exp(rng.gauss(0.0, a.sigma))
        # A tag per request and choice keeps replies distinct (a judge prompt that quotes one is unique too).
        texts = [" ".join([f"r{digest[:10]}.{i}", *(["word"] * (k - 1))]) for i, k in enumerate(lengths)]
        return (texts if demo is None else [demo] * n), delay

    async def _answer(self, body: dict[str, Any]) -> bytes:
        texts, delay = self._reply(body)
        if self.slots is not None:
            async with self.slots:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(delay)
        self.busy_s += delay
        self.max_latency_s = max(self.max_latency_s, delay)
        prompt = sum(len(str(m.get("content", "")).split()) for m in _plain_messages(body.get("messages", [])))
        completion = sum(len(t.split()) for t in texts)
        self.completion_words += completion
        return json.dumps({
            "id": f"chatcmpl-{self.total}", "object": "chat.completion", "created": int(time.time()),
            "model": str(body.get("model", "loopback")),
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }).encode()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, payload: bytes) -> None:
        head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n")
        writer.write(head.encode("latin-1") + payload)
        await writer.drain()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path = ([*lines[0].split(" "), "", ""])[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:]) if k}
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                path = path.split("?")[0].rstrip("/")
                if method == "GET" and path.endswith("/models"):
                    await self._send(writer, 200, b'{"object":"list","data":[{"id":"loopback","object":"model"}]}')
                elif method == "GET" and path == "/_stats":
                    await self._send(writer, 200, json.dumps(self.stats()).encode())
                elif method == "POST" and path == "/_reset":
                    self.reset()
                    await self._send(writer, 200, b"{}")
                elif method == "POST" and path.endswith("/chat/completions"):
                    now = time.time()
                    self.total += 1
                    self.first_arrival = self.first_arrival or now
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                    try:
                        payload = await self._answer(json.loads(raw))
                    finally:
                        self.in_flight -= 1
                    self.last_answer = time.time()
                    await self._send(writer, 200, payload)
                else:
                    await self._send(writer, 404, b'{"error":{"message":"no route"}}')
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _plain_messages(messages: Any) -> Any:
    """Messages with text-part lists (`[{"type": "text", "text": ...}]`, as Data Designer sends) joined into one
    string, so a client that sends parts gets the same replies as one that sends plain strings (unchanged)."""
    if not isinstance(messages, list):
        return messages
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            m = {**m, "content": "".join(str(p.get("text", "")) for p in content)}
        out.append(m)
    return out


def _demo_reply(body: dict[str, Any]) -> str:
    from personaloom.backends.fake import demo_http_reply  # only in --replies demo: the rest is stdlib-only

    return demo_http_reply(body)


async def _serve(args: argparse.Namespace) -> None:
    server = Server(args)
    stop = asyncio.Event()
    # SIGTERM (spawn's exit) stops the loop cleanly instead of raising inside a connection's callback.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    srv = await asyncio.start_server(server.handle, args.host, args.port, backlog=4096, limit=2**24)
    port = srv.sockets[0].getsockname()[1]
    print(f"http://{args.host}:{port}/v1", flush=True)
    async with srv:
        await stop.wait()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Loopback OpenAI-compatible server for benchmarks.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.1, help="fixed seconds per request")
    p.add_argument("--per-token", type=float, default=0.0, help="extra seconds per completion word")
    p.add_argument("--sigma", type=float, default=0.0, help="lognormal jitter of the latency")
    p.add_argument("--lo", type=float, default=0.2, help="completion length: lowest fraction of max_tokens")
    p.add_argument("--hi", type=float, default=1.0, help="completion length: highest fraction of max_tokens")
    p.add_argument("--reply-words", type=int, default=None, help="fixed completion length (overrides lo/hi)")
    p.add_argument("--slots", type=int, default=0, help="requests served at once (0 = unlimited)")
    p.add_argument("--replies", choices=["words", "demo"], default="words",
                   help="demo: what personaloom's --backend fake answers (a whole `personaloom run` works against "
                        "it; needs personaloom importable), latency by its length")
    p.add_argument("--seed", type=int, default=0)
    return p


@contextlib.contextmanager
def spawn(**settings: Any) -> Iterator[str]:
    """Start this server in a child process (its own GIL); yields the base URL."""
    cmd = [sys.executable, str(Path(__file__).resolve())]
    for key, value in settings.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"loopback server did not start: {url!r}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_stats(url: str, reset: bool = False) -> dict[str, Any]:
    root = url.rsplit("/v1", 1)[0]
    if reset:
        req = urllib.request.Request(root + "/_reset", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
        return {}
    with urllib.request.urlopen(root + "/_stats", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def main() -> None:
    args = parser().parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
