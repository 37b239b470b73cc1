"""P-1: decode rate of the embedded model, raw vs through personaloom (backend + cache + executor).

Raw: llama-cpp-python's `Llama.create_chat_completion` called directly, its state reset before each
request (a fresh evaluation: what the embedded backend computes too, since it reuses only KV blocks that
give the same result as a fresh evaluation; llama-cpp-python's own prefix reuse is not deterministic).
Through: `create_backend` +
`ResponseCache` (a fresh file each round, so no hits) + `LLM`. Same GGUF, threads, prompts, max_tokens,
sampling and seeds, so both generate the same tokens (checked). Each request runs raw and through back
to back, the order alternating, so that load from other processes hits both sides alike; rates are
total tokens / total wall time per side. CPU time per side is printed too (less sensitive to load).
Prints both rates and, as the last line, `ratio=<through/raw>` (goal >= 0.9).

    .venv/bin/python bench/backend_throughput.py [--requests 6] [--max-tokens 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_cpp import Llama

from personaloom.backends import create_backend, default_gguf_path
from personaloom.backends.base import ChatRequest, Message, SamplingParams
from personaloom.backends.cache import ResponseCache
from personaloom.backends.llamacpp import default_threads
from personaloom.config import BackendConfig
from personaloom.executors.local import LLM
from personaloom.stats import Stats

TOPICS = ["your pets", "your favourite food", "your job", "your weekend", "a trip you took", "your hobbies",
          "your family", "music you like", "a book you read", "your hometown", "sports", "the weather"]


def make_requests(n: int, max_tokens: int) -> list[ChatRequest]:
    return [
        ChatRequest(
            messages=[Message(role="system", content="You are a friendly person chatting with a new friend."),
                      Message(role="user", content=f"Tell me about {TOPICS[i % len(TOPICS)]}.")],
            params=SamplingParams(temperature=0.7, top_k=40, top_p=1.0, max_tokens=max_tokens, seed=1000 + i),
            metadata={"stage": "bench"},
        )
        for i in range(n)
    ]


def raw_one(llama: Any, r: ChatRequest) -> tuple[int, str]:
    p = r.params
    llama.reset()
    out = llama.create_chat_completion(
        messages=[m.model_dump() for m in r.messages], temperature=p.temperature, top_k=p.top_k,
        top_p=p.top_p, max_tokens=p.max_tokens, stop=None, seed=p.seed,
    )
    return int(out["usage"]["completion_tokens"]), out["choices"][0]["message"]["content"] or ""


@dataclass
class Side:
    tokens: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    texts: list[str] = field(default_factory=list)

    def rate(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


async def measure(
    llama: Any, backend: Any, requests: list[ChatRequest], rounds: int, folder: Path
) -> tuple[Side, Side]:
    """Per request, raw and through back to back (the order alternating), so both meet the same load."""
    raw, through = Side(), Side()
    for k in range(rounds):
        stats = Stats()
        with ResponseCache(folder / f"cache-{k}.sqlite") as cache:  # fresh: no hits
            llm = LLM(backend, cache, stats, progress=False)
            for i, r in enumerate(requests):
                for side in (("raw", "through") if (i + k) % 2 == 0 else ("through", "raw")):
                    w0, c0 = time.perf_counter(), time.process_time()
                    if side == "raw":
                        tokens, text = raw_one(llama, r)
                        target = raw
                    else:
                        (result,) = await llm.complete([r])
                        assert result.ok and not result.cached, "through path must pay every call"
                        tokens, text = result.usage.completion_tokens, result.text
                        target = through
                    target.wall += time.perf_counter() - w0
                    target.cpu += time.process_time() - c0
                    target.tokens += tokens
                    target.texts.append(text)
        print(f"round {k}: raw {raw.rate():.1f} tok/s, through {through.rate():.1f} tok/s (cumulative)")
    return raw, through


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args()

    path = default_gguf_path()
    threads = default_threads()
    cfg = BackendConfig(kind="embedded", model=str(path), n_ctx=args.n_ctx, n_threads=threads)
    llama = Llama(model_path=str(path), n_ctx=cfg.n_ctx, n_threads=threads, n_threads_batch=threads,
                  n_batch=cfg.n_batch, verbose=False)
    backend = create_backend(cfg)
    requests = make_requests(args.requests, args.max_tokens)
    print(f"model={path.name} threads={threads} requests={args.requests} max_tokens={args.max_tokens} "
          f"rounds={args.rounds}")
    # Warm-up (first-call allocations) on both sides, not timed.
    raw_one(llama, requests[0])
    backend.generate(requests[:1])
    with tempfile.TemporaryDirectory() as tmp:
        raw, through = asyncio.run(measure(llama, backend, requests, args.rounds, Path(tmp)))
    print(f"raw: {raw.tokens} tokens in {raw.wall:.2f} s = {raw.rate():.1f} tok/s (cpu {raw.cpu:.2f} s)")
    print(f"through: {through.tokens} tokens in {through.wall:.2f} s = {through.rate():.1f} tok/s "
          f"(cpu {through.cpu:.2f} s)")
    print(f"same_texts={raw.texts == through.texts} cpu_ratio={raw.cpu / through.cpu:.3f}")
    print(f"ratio={through.rate() / raw.rate():.3f}")


if __name__ == "__main__":
    main()
