"""P-4: tokens per kept conversation, pairwise vs listwise critic, on the same pairs.

In: nothing (settings on the command line). Out: both modes' calls and tokens; last line
`ratio=<listwise tokens per kept conversation / pairwise tokens per kept conversation>` (generation
+ critic tokens, what a run pays; the critic-only ratio is printed too).

Everything goes through the real stage code: `generate_and_critique` (real request builders and
prompt templates, format expert, vote) over executors.local.LLM, for the builtin seed pairs with the
seed conversations as few-shot examples. The backend is deterministic and answers instantly:
generations are real seed conversations (chosen by the request's seed, so both modes get the same
candidates), judge replies are valid JSON for the request's schema with a ~40-word rationale, as a
real judge writes. Usage is counted as a server would: every message tokenized with the SmolLM2
tokenizer (the GGUF's vocabulary only, no weights loaded) plus the ChatML overhead per message.

    .venv/bin/python bench/critic_cost.py [--pairs 60] [--candidates 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from personaloom.backends.base import Backend, ChatRequest, ChatResult, Usage
from personaloom.backends.fake import demo_responder
from personaloom.config import CriticConfig, GenerateConfig, RunConfig
from personaloom.executors.local import LLM
from personaloom.records import Conversation, Pair, TokenCount
from personaloom.seed_data import load_seed_set
from personaloom.stages.round import generate_and_critique
from personaloom.step import add_tokens

# ChatML: "<|im_start|>{role}\n" ... "<|im_end|>\n" per message, "<|im_start|>assistant\n" to reply.
PER_MESSAGE, PER_REPLY = 5, 3
RATIONALE = ("The first conversation stays closer to both personas and the speakers build on what the other "
             "said, asking follow-up questions that reveal more about their lives, while the second drifts "
             "into generic small talk and repeats a greeting, so it is less engaging overall.")


def tokenizer() -> tuple[Callable[[str], int], str]:
    """Token counter: the SmolLM2 vocabulary if its GGUF is installed, else ~1.3 tokens per word."""
    try:
        from llama_cpp import Llama

        from personaloom.backends import default_gguf_path

        vocab = Llama(model_path=str(default_gguf_path()), vocab_only=True, verbose=False)

        @functools.lru_cache(maxsize=4096)  # system prompts and few-shot blocks repeat across requests
        def count(text: str) -> int:
            return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

        return count, "SmolLM2-135M-Instruct tokenizer"
    except Exception:  # no GGUF or no llama_cpp: an estimate is still a fair comparison of the two modes
        return (lambda text: round(1.3 * len(text.split()))), "estimate: 1.3 tokens per word"


def render(conv: Conversation) -> str:
    return "\n".join(f"User {t.speaker}: {t.text}" for t in conv.turns)


class RealisticBackend(Backend):
    """Instant, deterministic replies with server-like token usage."""

    kind = "fake"

    def __init__(self, examples: list[Conversation], count: Callable[[str], int]) -> None:
        self.max_concurrency = 64
        self.examples = [render(c) for c in examples if len(c.turns) >= 6]
        self.count = count

    @property
    def model_id(self) -> str:
        return "bench-critic-cost"

    def reply(self, request: ChatRequest, index: int) -> str:
        if request.json_schema is not None:
            obj: dict[str, Any] = json.loads(demo_responder(request))
            if "rationale" in obj:
                obj["rationale"] = RATIONALE
            return json.dumps(obj)
        rnd = random.Random(f"{request.params.seed}|{index}")
        return rnd.choice(self.examples)

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results = []
        for r in requests:
            texts = [self.reply(r, 0)]
            prompt = sum(self.count(m.content) + PER_MESSAGE for m in r.messages) + PER_REPLY
            completion = sum(self.count(t) + 1 for t in texts)  # + the end-of-turn token
            results.append(ChatResult(texts=texts, usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
                                      finish_reason="stop"))
        return results


Mode = Literal["pairwise", "listwise"]


async def run_mode(mode: Mode, args: argparse.Namespace, count: Callable[[str], int]) -> dict[str, Any]:
    seeds = load_seed_set(None)
    pairs = bench_pairs(seeds.conversations, args.pairs)
    config = RunConfig(
        generate=GenerateConfig(candidates=args.candidates),
        critic=CriticConfig(mode=mode),
    )
    llm = LLM(RealisticBackend(seeds.conversations, count), None, progress=False)
    outcomes = await asyncio.gather(
        *(generate_and_critique(p, seeds.conversations, lambda _role: llm, config, 1) for p in pairs)
    )
    kept = sum(1 for o in outcomes if o.selected is not None)
    totals: dict[str, TokenCount] = {}
    for o in outcomes:
        add_tokens(totals, o.tokens)
    failures = sum(len(o.failures) for o in outcomes)
    return {"pairs": len(pairs), "kept": kept, "tokens": {r: t.model_dump() for r, t in totals.items()},
            "failures": failures}


def bench_pairs(convs: list[Conversation], n: int) -> list[Pair]:
    """n pairs from the seed conversations' personas (user 1 of one, user 2 of another): more pairs
    than the seed set has conversations, the same ones for both modes."""
    with_personas = [c for c in convs if c.user1_persona and c.user2_persona]
    m = len(with_personas)
    return [
        Pair(id=f"bench-pair-{i:04d}", user1_persona=with_personas[i % m].user1_persona,
             user2_persona=with_personas[(7 * i + 3) % m].user2_persona)
        for i in range(n)
    ]


def total(row: dict[str, int]) -> int:
    return row["prompt_tokens"] + row["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--candidates", type=int, default=3)
    args = parser.parse_args()
    count, how = tokenizer()
    print(f"settings: {args.pairs} pairs of builtin seed personas, {args.candidates} candidates each, iteration 1, "
          f"default critic experts (5 quality + faithfulness + toxicity), both_orders=False, filter_first=False; "
          f"tokens: {how} + ChatML overhead")
    per_kept: dict[str, tuple[float, float]] = {}
    modes: tuple[Mode, ...] = ("pairwise", "listwise")
    for mode in modes:
        start = time.perf_counter()
        res = asyncio.run(run_mode(mode, args, count))
        gen, critic = res["tokens"].get("generate", {}), res["tokens"].get("critic", {})
        kept = max(1, res["kept"])
        per_kept[mode] = ((total(gen) + total(critic)) / kept, total(critic) / kept)
        print(f"{mode}: kept {res['kept']}/{res['pairs']} pairs; generate {gen['calls']} calls "
              f"{total(gen):,} tokens; critic {critic['calls']} calls {critic['prompt_tokens']:,} prompt + "
              f"{critic['completion_tokens']:,} completion tokens; failures {res['failures']}; "
              f"per kept conversation: {per_kept[mode][0]:,.0f} tokens ({per_kept[mode][1]:,.0f} critic) "
              f"[{time.perf_counter() - start:.1f} s]")
    critic_ratio = per_kept["listwise"][1] / per_kept["pairwise"][1]
    print(f"critic_ratio={critic_ratio:.3f} (critic tokens only)")
    print(f"ratio={per_kept['listwise'][0] / per_kept['pairwise'][0]:.3f}")


if __name__ == "__main__":
    main()
