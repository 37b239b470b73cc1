"""Loopback servers for tests and benchmarks (importable as `servers` from tests/, or by path from bench/).

1. `llama_cpp_server()`: the REAL `python -m llama_cpp.server` on 127.0.0.1 with the SmolLM2 GGUF
   (or any GGUF); waits until /v1/models answers; stops it afterwards. Pytest fixture: `llama_server`
   (module scope; import `llama_server_fixture` into a test module to use it).
2. `LoopbackServer`: a small asyncio OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models,
   GET /_stats) with unlimited concurrency, fixed or lognormal latency (optionally proportional to the
   reply's length), injected faults (HTTP 500, 429 + Retry-After, hang past the client's timeout,
   truncated JSON body, well-formed reply with unparseable content, 400 on chosen response_format
   types), a scripted or echo reply, and request counting (total, per request hash, per fault).
   Fault choice is deterministic: drawn from (seed, request hash, how often that request came before),
   so it does not depend on arrival order. Received Authorization headers are logged only when
   `log_auth=True`. Runs in a background thread (`with LoopbackServer(...) as srv:`) or in its own
   process (`spawn_loopback(...)`, for benchmarks where the server must not share the client's GIL):
   `python tests/servers.py --port 0 --latency 0.1 ...` prints its base URL on the first stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from personaloom.backends.fake import body_schema

# Reply function: (request body, choice index) -> message content.
Reply = Callable[[dict[str, Any], int], str]
BAD_CONTENT = "\u0000<<this is not the reply you asked for>> }{ User 3 ::"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable_url() -> str:
    """A loopback base URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


def http_json(url: str, *, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------- replies


def schema_instance(schema: dict[str, Any]) -> Any:
    """A small value valid for a (simple) JSON schema: the first enum/const, required fields filled."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return schema_instance(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: schema_instance(sub) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items") or {"type": "string"}
        return [schema_instance(items) for _ in range(int(schema.get("minItems", 1)))]
    return {"string": "ok", "integer": 1, "number": 1.0, "boolean": True, "null": None}.get(str(kind), "ok")


requested_schema = body_schema  # the JSON schema a chat-completion body asks for, or None


def echo_reply(body: dict[str, Any], index: int) -> str:
    """Default reply: a schema instance for structured requests, else the last user message."""
    schema = requested_schema(body)
    if schema is not None:
        return json.dumps(schema_instance(schema))
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    text = str(users[-1]) if users else ""
    return text if index == 0 else f"{text} ({index})"


def words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- the loopback server


@dataclass
class Faults:
    """Probabilities per request (drawn in this order); the rest are answered normally."""

    http_500: float = 0.0
    http_429: float = 0.0
    hang: float = 0.0
    truncated: float = 0.0
    bad_content: float = 0.0
    retry_after_s: float = 1.0
    # A hang holds the request this long (or until the client hangs up): past any client timeout.
    hang_s: float = 600.0
    # Scripted faults: the k-th arrival of each distinct request gets first[k] (None = answer normally; also
    # "disconnect": the connection is closed without an answer);
    # arrivals past the script draw from the rates above.
    first: tuple[str | None, ...] = ()


@dataclass
class LoopbackConfig:
    latency_s: float = 0.0
    # Lognormal jitter: each latency is multiplied by exp(N(0, sigma)).
    latency_sigma: float = 0.0
    # Extra latency per completion word, as a decode-bound server has.
    latency_per_token_s: float = 0.0
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    reply: Reply = echo_reply
    model: str = "loopback-model"
    # response_format types answered with HTTP 400, as a server without structured output would.
    reject_response_format: tuple[str, ...] = ()
    log_auth: bool = False
    keep_bodies: bool = False
    # A rate-limited provider: a request arriving while this many are in flight gets a 429 with
    # Retry-After faults.retry_after_s (counted as fault "rate_limited").
    max_concurrency: int | None = None
    # Scripted answers by arrival: respond(n, body) for the n-th request (from 0) returns (status, headers,
    # JSON body) to send instead, or None to answer as configured (counted as fault "scripted").
    respond: Callable[[int, dict[str, Any]], tuple[int, dict[str, str], dict[str, Any]] | None] | None = None
    # Authentication the server requires: require(target, headers) -> None to serve, or the reason for a 401
    # (target: the request's path with its query; headers lower-cased). Counted as fault "unauthorized".
    require: Callable[[str, dict[str, str]], str | None] | None = None
    # vLLM's /v1/models field for the model's context window (None: not sent, as most servers do not).
    max_model_len: int | None = None
    # The usage block's prompt tokens of a body (None: its words), e.g. capped at a window, as a server that
    # truncates long prompts silently (Ollama) reports them.
    prompt_tokens: Callable[[dict[str, Any]], int] | None = None
    # Other routes the server answers, "METHOD /path" -> handler(server, JSON body or {}) returning (status,
    # JSON payload): llama.cpp's /props and /tokenize, Ollama's /api/ps and /api/show, ... (counted in "routed").
    routes: dict[str, Callable[[LoopbackServer, dict[str, Any]], tuple[int, Any]]] = field(default_factory=dict)


class LoopbackServer:
    def __init__(self, config: LoopbackConfig | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 **overrides: Any) -> None:
        base = config or LoopbackConfig()
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self.total = 0
        self.by_hash: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.routed: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- accounting

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": self.total,
                "unique": len(self.by_hash),
                "repeated": sum(n - 1 for n in self.by_hash.values()),
                "faults": dict(self.faults),
                "max_in_flight": self.max_in_flight,
                "routed": dict(self.routed),
            }

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.by_hash.clear()
            self.faults.clear()
            self.max_in_flight = 0
            self.auth_headers.clear()
            self.bodies.clear()
            self.routed.clear()

    def _admit(self, body: dict[str, Any], raw: bytes, auth: str | None) -> tuple[str, int, random.Random]:
        digest = hashlib.sha256(raw).hexdigest()
        with contextlib.suppress(TypeError, ValueError):
            # Canonical form: the same request hashes the same whatever the client's key order.
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            seen = self.by_hash[digest]
            self.by_hash[digest] += 1
            self.total += 1
            if self.config.log_auth and auth is not None:
                self.auth_headers.append(auth)
            if self.config.keep_bodies:
                self.bodies.append(body)
        return digest, seen, random.Random(f"{self.config.seed}:{digest}:{seen}")

    def _pick_fault(self, rng: random.Random, seen: int) -> str | None:
        f = self.config.faults
        u = rng.random()
        if seen < len(f.first):
            return f.first[seen]
        for name, p in (("http_500", f.http_500), ("http_429", f.http_429), ("hang", f.hang),
                        ("truncated", f.truncated), ("bad_content", f.bad_content)):
            if u < p:
                return name
            u -= p
        return None

    # -- HTTP

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, payload: bytes,
                    headers: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(payload)}", "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()

    @staticmethod
    def _error(message: str, kind: str) -> bytes:
        return json.dumps({"error": {"message": message, "type": kind}}).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                problem = self.config.require(path, headers) if self.config.require is not None else None
                if problem is not None:
                    with self._lock:
                        self.faults["unauthorized"] += 1
                    await self._send(writer, 401, self._error(problem, "authentication_error"))
                    continue
                keep = await self._route(method, path.split("?")[0], headers, raw, reader, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # the server is stopping
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            model: dict[str, Any] = {"id": self.config.model, "object": "model", "owned_by": "loopback"}
            if self.config.max_model_len is not None:
                model["max_model_len"] = self.config.max_model_len
            data = {"object": "list", "data": [model]}
            await self._send(writer, 200, json.dumps(data).encode())
            return True
        handler = self.config.routes.get(f"{method} {path}")
        if handler is not None:
            try:
                asked = json.loads(raw) if raw.strip() else {}
            except ValueError:
                asked = {}
            with self._lock:
                self.routed[f"{method} {path}"] += 1
            status, answer = handler(self, asked if isinstance(asked, dict) else {})
            await self._send(writer, status, json.dumps(answer).encode())
            return True
        if method == "GET" and path == "/_stats":
            await self._send(writer, 200, json.dumps(self.stats()).encode())
            return True
        if method == "POST" and path == "/_reset":
            self.reset()
            await self._send(writer, 200, b"{}")
            return True
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            await self._send(writer, 404, self._error(f"no route {method} {path}", "not_found"))
            return True
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError:
            await self._send(writer, 400, self._error("invalid JSON body", "invalid_request_error"))
            return True
        cap = self.config.max_concurrency
        with self._lock:
            limited = cap is not None and self.in_flight >= cap
            if limited:
                self.faults["rate_limited"] += 1
            else:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if limited:
            after = self.config.faults.retry_after_s
            await self._send(writer, 429, self._error("rate limit: too many requests in flight", "rate_limit_error"),
                             headers={"Retry-After": f"{after:g}"})
            return True
        try:
            return await self._complete(body, raw, headers, reader, writer)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _complete(self, body: dict[str, Any], raw: bytes, headers: dict[str, str],
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        cfg = self.config
        _, seen, rng = self._admit(body, raw, headers.get("authorization"))
        scripted = cfg.respond(self.total - 1, body) if cfg.respond is not None else None
        if scripted is not None:
            status, extra_headers, payload = scripted
            with self._lock:
                self.faults["scripted"] += 1
            await self._send(writer, status, json.dumps(payload).encode(), extra_headers)
            return True
        fmt = (body.get("response_format") or {}).get("type")
        if fmt and fmt in cfg.reject_response_format:
            with self._lock:
                self.faults["rejected_response_format"] += 1
            await self._send(writer, 400, self._error(f"response_format {fmt} is not supported",
                                                      "invalid_request_error"))
            return True
        fault = self._pick_fault(rng, seen)
        n = max(1, int(body.get("n") or 1))
        contents = [BAD_CONTENT if fault == "bad_content" else cfg.reply(body, i) for i in range(n)]
        completion = sum(max(1, words(c)) for c in contents)
        delay = cfg.latency_s + cfg.latency_per_token_s * completion
        if cfg.latency_sigma > 0:
            delay *= math.exp(rng.gauss(0.0, cfg.latency_sigma))
        if fault is not None:
            with self._lock:
                self.faults[fault] += 1
        if fault == "disconnect":  # hang up without an answer (a crashed worker, a proxy's reset)
            return False
        if fault == "hang":
            # Hold the request until the client gives up (its socket closes) or hang_s passes.
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(65536), cfg.faults.hang_s)
            return False
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "http_500":
            await self._send(writer, 500, self._error("injected server error", "server_error"))
            return True
        if fault == "http_429":
            after = cfg.faults.retry_after_s
            await self._send(writer, 429, self._error("injected rate limit", "rate_limit_error"),
                             {"Retry-After": f"{after:g}"})
            return True
        prompt = sum(words(str(m.get("content", ""))) for m in body.get("messages", []))
        if cfg.prompt_tokens is not None:
            prompt = cfg.prompt_tokens(body)
        payload = json.dumps({
            "id": f"chatcmpl-{self.total}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", cfg.model)),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
                for i, c in enumerate(contents)
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }).encode()
        if fault == "truncated":
            payload = payload[: len(payload) // 2]
        await self._send(writer, 200, payload)
        return True

    # -- lifecycle

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, self.host, self.port, backlog=4096,
                                                  limit=2**24)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if ready is not None:
            ready()
        async with self._server:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serve_forever()

    def start(self) -> LoopbackServer:
        def main() -> None:
            asyncio.run(self.serve(self._ready.set))

        self._thread = threading.Thread(target=main, name="loopback-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("loopback server did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            def shutdown() -> None:
                server.close()
                for task in asyncio.all_tasks(loop):
                    task.cancel()

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SpawnedServer:
    url: str
    process: subprocess.Popen[str]

    @property
    def root(self) -> str:
        return self.url.rsplit("/v1", 1)[0]

    def stats(self) -> dict[str, Any]:
        return dict(http_json(self.root + "/_stats"))


@contextlib.contextmanager
def spawn_loopback(*, latency_s: float = 0.0, latency_sigma: float = 0.0, latency_per_token_s: float = 0.0,
                   seed: int = 0, reply_words: int | None = None,
                   faults: Faults | None = None) -> Iterator[SpawnedServer]:
    """A LoopbackServer in its own process (echo replies, or `reply_words` words of filler)."""
    f = faults or Faults()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--port", "0", "--latency", str(latency_s),
           "--sigma", str(latency_sigma), "--per-token", str(latency_per_token_s), "--seed", str(seed),
           "--p500", str(f.http_500), "--p429", str(f.http_429), "--hang", str(f.hang),
           "--truncated", str(f.truncated), "--bad-content", str(f.bad_content),
           "--retry-after", str(f.retry_after_s)]
    if reply_words is not None:
        cmd += ["--reply-words", str(reply_words)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http"):
            raise RuntimeError(f"loopback server failed to start: {line!r}")
        yield SpawnedServer(line, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def filler_reply(n_words: int) -> Reply:
    def reply(body: dict[str, Any], index: int) -> str:
        schema = requested_schema(body)
        if schema is not None:
            return json.dumps(schema_instance(schema))
        return " ".join(["word"] * n_words)

    return reply


# ---------------------------------------------------------------- the real llama.cpp server


@dataclass
class LlamaServer:
    url: str
    model: str
    log: Path


def llama_server_available() -> bool:
    needed = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette")
    return all(importlib.util.find_spec(m) is not None for m in needed)


@contextlib.contextmanager
def llama_cpp_server(model: Path | None = None, *, n_ctx: int = 2048, startup_s: float = 120.0,
                     extra_args: tuple[str, ...] = ()) -> Iterator[LlamaServer]:
    """`python -m llama_cpp.server` on 127.0.0.1:<free port>; yields once /v1/models answers."""
    if model is None:
        from personaloom.backends import default_gguf_path

        model = default_gguf_path()
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), *extra_args]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_s
        model_id = str(model)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                data = http_json(url + "/models", timeout=2)
                model_id = str(data["data"][0]["id"])
                break
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not answer in {startup_s:g} s") from None
                time.sleep(0.3)
        yield LlamaServer(url=url, model=model_id, log=log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            log.unlink()


@pytest.fixture(scope="module", name="llama_server")
def llama_server_fixture() -> Iterator[LlamaServer]:
    if not llama_server_available():
        pytest.skip("llama-cpp-python[server] is not installed")
    with llama_cpp_server() as server:
        yield server


@pytest.fixture(name="loopback")
def loopback_fixture() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Loopback OpenAI-compatible server (prints its base URL).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--sigma", type=float, default=0.0)
    parser.add_argument("--per-token", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reply-words", type=int, default=None)
    parser.add_argument("--p500", type=float, default=0.0)
    parser.add_argument("--p429", type=float, default=0.0)
    parser.add_argument("--hang", type=float, default=0.0)
    parser.add_argument("--truncated", type=float, default=0.0)
    parser.add_argument("--bad-content", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=1.0)
    args = parser.parse_args(argv)
    config = LoopbackConfig(
        latency_s=args.latency, latency_sigma=args.sigma, latency_per_token_s=args.per_token, seed=args.seed,
        reply=filler_reply(args.reply_words) if args.reply_words is not None else echo_reply,
        faults=Faults(http_500=args.p500, http_429=args.p429, hang=args.hang, truncated=args.truncated,
                      bad_content=args.bad_content, retry_after_s=args.retry_after),
    )
    server = LoopbackServer(config, host=args.host, port=args.port)

    def ready() -> None:
        print(server.url, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        asyncio.run(server.serve(ready))


if __name__ == "__main__":
    main()
