"""P-2: does personaloom's executor keep a server at its concurrency, with memory flat as a run grows?

In: nothing (settings on the command line). Out: printed settings and numbers; last line `ratio=<x>`.

A loopback OpenAI-compatible server (bench/loopback.py, its own process, asyncio, no slot limit)
answers every request after a fixed latency. Everything goes through what a run uses: OpenAIBackend
+ ResponseCache (a fresh file) + executors.local.LLM, with `concurrency` requests in flight.

1. Memory: `--conversations` conversations' worth of work, each a generator request (up to 400-word
   reply) then a critic request that quotes it; a bounded pool of tasks pulls conversations from a
   lazy source and streams each result to a JSONL file, as the pipeline does. Peak RSS of the whole
   process (ru_maxrss) is read after the first 1,000 conversations and at the end (goal: +100 MB
   at most).
2. Scheduling: `--requests` independent requests; ratio = measured seconds / ideal seconds, where
   ideal = requests x latency / concurrency (goal <= 1.1).

    .venv/bin/python bench/scheduler.py [--requests 10000] [--latency 0.1] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import spawn
from personaloom.backends.base import ChatRequest, Message, SamplingParams
from personaloom.backends.cache import ResponseCache
from personaloom.backends.openai_compat import OpenAIBackend
from personaloom.config import BackendConfig
from personaloom.executors.local import LLM
from personaloom.stats import Stats

T = TypeVar("T")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def request(i: int, stage: str, text: str, max_tokens: int) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="system", content="You write a conversation between two personas."),
                  Message(role="user", content=f"#{i}: {text}")],
        params=SamplingParams(max_tokens=max_tokens, seed=i),
        metadata={"stage": stage, "id": str(i)},
    )


async def stream(items: Iterator[T], work: Callable[[T], Awaitable[str]], out: IO[str], workers: int,
                 on_done: Callable[[int], None] | None = None) -> int:
    """`workers` tasks pull items from a lazy source and write each result as a line: nothing piles up."""
    done = 0

    async def worker() -> None:
        nonlocal done
        for item in items:  # a shared iterator: each item goes to exactly one worker
            out.write(await work(item) + "\n")
            done += 1
            if on_done is not None:
                on_done(done)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


def make_llm(url: str, args: argparse.Namespace, folder: Path) -> tuple[LLM, ResponseCache]:
    cfg = BackendConfig(kind="openai", model="loopback", base_url=url, concurrency=args.concurrency, timeout_s=120,
                        transport=args.transport)
    cache = ResponseCache(folder / "cache.sqlite")
    return LLM(OpenAIBackend(cfg), cache, Stats(), progress=False), cache


async def memory_phase(url: str, args: argparse.Namespace, folder: Path) -> tuple[float, float, float, float]:
    llm, cache = make_llm(url, args, folder / "mem")
    marks: dict[str, tuple[float, float]] = {}
    profiles = "User 1: I grow tomatoes. I fix old radios. User 2: I teach chess. I bake sourdough."

    async def conversation(i: int) -> str:
        gen = (await llm.complete([request(i, "generate", profiles, 400)]))[0]
        critic = (await llm.complete([request(i, "critic.depth", gen.text, 160)]))[0]
        return json.dumps({"id": i, "conversation": gen.text, "critic": critic.text, "ok": gen.ok and critic.ok})

    def on_done(n: int) -> None:
        if n == 1000:
            marks["1k"] = (peak_rss_mb(), current_rss_mb())

    start = time.perf_counter()
    with (folder / "conversations.jsonl").open("w") as out:
        await stream(iter(range(args.conversations)), conversation, out, 2 * args.concurrency, on_done)
    elapsed = time.perf_counter() - start
    await llm.aclose()
    errors = llm.stats.llm["errors"]
    cache.close()
    assert errors == 0, f"{errors} requests failed"
    peak_1k, cur_1k = marks["1k"]
    print(f"memory: {args.conversations} conversations ({2 * args.conversations} requests) in {elapsed:.1f} s")
    return peak_1k, peak_rss_mb(), cur_1k, current_rss_mb()


async def timing_phase(url: str, args: argparse.Namespace, folder: Path) -> float:
    llm, cache = make_llm(url, args, folder / "time")

    async def one(i: int) -> str:
        result = (await llm.complete([request(i, "generate", "Tell me about your week.", 256)]))[0]
        return str(result.text[:20])

    # Warm the connection pool outside the clock: a long run pays that once.
    await llm.complete([request(-k, "warmup", "hi", 16) for k in range(args.concurrency)])
    start, cpu = time.perf_counter(), time.process_time()
    with (folder / "timing.jsonl").open("w") as out:
        n = await stream(iter(range(args.requests)), one, out, 2 * args.concurrency)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    # The client's own CPU per request bounds the request rate one core can drive, whatever the latency.
    print(f"client CPU: {cpu:.1f} s = {1000 * cpu / n:.2f} ms per request (one free core drives at most "
          f"{n / cpu:.0f} req/s; ideal here needs {args.concurrency / args.latency:.0f} req/s)")
    await llm.aclose()
    calls, errors = llm.stats.llm["calls"], llm.stats.llm["errors"]
    cache.close()
    assert n == args.requests and errors == 0 and calls == args.requests + args.concurrency, (n, calls, errors)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.1)
    # The backend default (backend.concurrency). At 64 on 2 cores the openai client's HTTP stack needs
    # ~2 ms CPU per request and becomes the limit (bench/README.md); run with --concurrency 64 to see it.
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--transport", choices=["aiohttp", "httpx"], default="aiohttp",
                        help="backend.transport: the openai client's HTTP transport (default aiohttp)")
    args = parser.parse_args()
    print(f"settings: server latency={args.latency * 1000:g} ms fixed, unlimited server concurrency (asyncio, own "
          f"process); client OpenAIBackend ({args.transport}) + ResponseCache (fresh) + LLM, "
          f"concurrency={args.concurrency}, "
          f"{2 * args.concurrency} producer tasks; requests={args.requests}, conversations={args.conversations} "
          f"(2 requests each)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    server = spawn(latency=args.latency, lo=0.2, hi=1.0)
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp, server as url:
        folder = Path(tmp)
        peak_1k, peak_10k, cur_1k, cur_10k = asyncio.run(memory_phase(url, args, folder))
        print(f"peak RSS: {peak_1k:.1f} MB after 1,000 conversations, {peak_10k:.1f} MB after "
              f"{args.conversations:,} (+{peak_10k - peak_1k:.1f} MB; goal <= +100 MB); "
              f"current RSS {cur_1k:.1f} -> {cur_10k:.1f} MB")
        elapsed = asyncio.run(timing_phase(url, args, folder))
    ideal = args.requests * args.latency / args.concurrency
    ratio = elapsed / ideal
    print(f"scheduling: {args.requests} requests in {elapsed:.2f} s; ideal {ideal:.2f} s "
          f"({args.requests} x {args.latency:g} s / {args.concurrency}); {args.requests / elapsed:.0f} req/s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"memory_growth_mb={peak_10k - peak_1k:.1f}")
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
