"""P-3: personaloom vs distilabel 1.5.3 on the same generate-then-judge work against the same server.

In: nothing (settings on the command line). Out: both systems' settings and numbers; last line
`ratio=<personaloom conversations/s / distilabel conversations/s>` (goal >= 2).

The work: N pairs; per pair C candidate generations (max_tokens 400) and then one judge call per
candidate (max_tokens 160) that quotes the candidate. A conversation is a pair whose C candidates are
judged. Both systems send the same messages (plain ChatRequests of the same shape as the generator's
and critic's, not the real stage builders, so that distilabel can send byte-identical prompts), one
request per candidate (distilabel: C rows per pair, num_generations=1), through an OpenAI-compatible
client (personaloom: OpenAIBackend + ResponseCache + LLM; distilabel: OpenAILLM).

The server (bench/loopback.py, its own process) answers like a decode-bound server: latency =
(ttft + per_token x completion words) x lognormal jitter, completion length U(0.2, 1.0) x max_tokens,
all drawn from the request's messages (seeded), so both systems get the same replies and latencies.
It serves at most `slots` requests at once (like vLLM's max_num_seqs) and queues the rest; this is
the server's cap. The cap on requests in flight is the same for both systems: personaloom's client
concurrency = slots; distilabel's generate and judge steps run concurrently in their own processes,
so each gets input_batch_size = slots / 2 (at most `slots` in flight together). `--distilabel-batch
N` changes that (e.g. = slots lets distilabel queue up to 2 x slots at the server, more than
personaloom's cap; measured 1.93-2.51 that way).

distilabel runs in its own virtualenv (~/.cache/personaloom-bench/distilabel-venv, created with
`pip install distilabel==1.5.3 openai requests` on first use, then reused), by running this same file there
with `--side distilabel` (that side imports no personaloom).

    .venv/bin/python bench/vs_distilabel.py [--pairs 500] [--candidates 3] [--slots 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DISTILABEL_VERSION = "1.5.3"
# distilabel imports `requests` without declaring it (ModuleNotFoundError on `import distilabel.models`).
PACKAGES = (f"distilabel=={DISTILABEL_VERSION}", "openai", "requests")
GEN_SYSTEM = "You write a conversation between two personas, one utterance per line."
JUDGE_SYSTEM = "You are a strict judge of conversations. Answer with JSON."
JUDGE_TEMPLATE = "Rate this conversation for depth and coherency (1-5), then explain briefly.\n\n{{ generation }}"
GEN_MAX_TOKENS = 400
JUDGE_MAX_TOKENS = 160
PERSONAS = ["I grow tomatoes.", "I fix old radios.", "I teach chess.", "I bake sourdough.", "I run marathons.",
            "I have two cats.", "I work night shifts.", "I collect maps.", "I sing in a choir.", "I hate mornings."]


def gen_prompt(pair: int, candidate: int) -> str:
    p1 = " ".join(PERSONAS[(pair + k) % len(PERSONAS)] for k in range(3))
    p2 = " ".join(PERSONAS[(pair * 7 + k) % len(PERSONAS)] for k in range(3))
    return (f"Pair {pair}, candidate {candidate}. Write a conversation between User 1 and User 2.\n"
            f"User 1: {p1}\nUser 2: {p2}")


def judge_prompt(generation: str) -> str:
    return JUDGE_TEMPLATE.replace("{{ generation }}", generation)


# ------------------------------------------------------------------------------------------ distilabel


def distilabel_side(args: argparse.Namespace) -> None:
    """Runs inside the distilabel venv; prints one JSON line with its timings."""
    import logging
    from collections import Counter

    from distilabel.models.llms import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    logging.getLogger("distilabel").setLevel(logging.WARNING)
    rows = [{"instruction": gen_prompt(i, j), "pair": i} for i in range(args.pairs) for j in range(args.candidates)]

    def llm() -> Any:
        return OpenAILLM(model="loopback", base_url=args.url, api_key="sk-local-no-key", max_retries=0,
                         timeout=120)

    start = time.perf_counter()
    with Pipeline(name="bench-vs-personaloom", cache_dir=args.cache_dir) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=args.batch)
        gen = TextGeneration(name="generate", llm=llm(), system_prompt=GEN_SYSTEM, input_batch_size=args.batch)
        judge = TextGeneration(name="judge", llm=llm(), system_prompt=JUDGE_SYSTEM, template=JUDGE_TEMPLATE,
                               columns=["generation"], input_batch_size=args.batch,
                               output_mappings={"generation": "judgement", "model_name": "judge_model"})
        load >> gen >> judge
    distiset = pipeline.run(
        use_cache=False,
        parameters={
            gen.name: {"llm": {"generation_kwargs": {"max_new_tokens": GEN_MAX_TOKENS, "temperature": 0.7}}},
            judge.name: {"llm": {"generation_kwargs": {"max_new_tokens": JUDGE_MAX_TOKENS, "temperature": 0.7}}},
        },
    )
    elapsed = time.perf_counter() - start
    data = distiset["default"]["train"]
    per_pair = Counter(r["pair"] for r in data if r.get("judgement"))
    pairs_done = sum(1 for n in per_pair.values() if n == args.candidates)
    print(json.dumps({"seconds": elapsed, "rows": len(data), "pairs": pairs_done}), flush=True)


def venv_python() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "personaloom-bench" / "distilabel-venv"
    python = root / "bin" / "python"
    check = [str(python), "-c", "import distilabel, distilabel.models.llms, distilabel.pipeline; "
             f"assert distilabel.__version__ == '{DISTILABEL_VERSION}'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {root} (pip install {' '.join(PACKAGES)}); reused on later runs", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PACKAGES],
                   check=True)
    subprocess.run(check, check=True)
    return python


def run_distilabel(url: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    python = venv_python()
    cmd = [str(python), str(Path(__file__).resolve()), "--side", "distilabel", "--url", url,
           "--pairs", str(args.pairs), "--candidates", str(args.candidates), "--batch", str(args.distilabel_batch),
           "--cache-dir", str(folder / "distilabel-cache")]
    log = folder / "distilabel.log"
    env = {**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"distilabel run failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ----------------------------------------------------------------------------------------- personaloom


def run_personaloom(url: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import asyncio

    from personaloom.backends.base import ChatRequest, Message, SamplingParams
    from personaloom.backends.cache import ResponseCache
    from personaloom.backends.openai_compat import OpenAIBackend
    from personaloom.config import BackendConfig
    from personaloom.executors.local import LLM
    from personaloom.stats import Stats

    def request(system: str, user: str, max_tokens: int, stage: str) -> ChatRequest:
        return ChatRequest(
            messages=[Message(role="system", content=system), Message(role="user", content=user)],
            params=SamplingParams(temperature=0.7, max_tokens=max_tokens),
            metadata={"stage": stage},
        )

    cfg = BackendConfig(kind="openai", model="loopback", base_url=url, concurrency=args.slots, timeout_s=120,
                        max_retries=0)
    cache = ResponseCache(folder / "personaloom-cache.sqlite")
    llm = LLM(OpenAIBackend(cfg), cache, Stats(), progress=False)

    async def pair(i: int) -> dict[str, Any]:
        gens = await llm.complete([request(GEN_SYSTEM, gen_prompt(i, j), GEN_MAX_TOKENS, "generate")
                                   for j in range(args.candidates)])
        # The judge calls go out as soon as this pair's candidates exist, whatever other pairs are doing.
        judges = await llm.complete([request(JUDGE_SYSTEM, judge_prompt(g.text), JUDGE_MAX_TOKENS, "critic")
                                     for g in gens])
        return {"pair": i, "ok": all(r.ok for r in gens + judges)}

    async def main() -> int:
        pending = iter(range(args.pairs))
        done = 0
        with (folder / "personaloom.jsonl").open("w") as out:

            async def worker() -> None:
                nonlocal done
                for i in pending:
                    row = await pair(i)
                    out.write(json.dumps(row) + "\n")
                    done += int(row["ok"])

            # Enough pairs at once to keep `slots` requests busy; results stream to disk.
            await asyncio.gather(*(worker() for _ in range(args.slots)))
        await llm.aclose()
        return done

    start = time.perf_counter()
    pairs_done = asyncio.run(main())
    elapsed = time.perf_counter() - start
    cache.close()
    return {"seconds": elapsed, "pairs": pairs_done, "calls": llm.stats.llm["calls"], "errors": llm.stats.llm["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--slots", type=int, default=32, help="server slots = personaloom concurrency = "
                                                            "distilabel input_batch_size per LLM step")
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--per-token", type=float, default=0.001)
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", choices=["both", "distilabel"], default="both")
    parser.add_argument("--url", default="")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--distilabel-batch", type=int, default=0,
                        help="distilabel input_batch_size per LLM step (default: slots // 2, the same cap in flight)")
    parser.add_argument("--cache-dir", default="")
    args = parser.parse_args()
    if args.distilabel_batch <= 0:
        args.distilabel_batch = max(1, args.slots // 2)
    if args.side == "distilabel":
        distilabel_side(args)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loopback import server_stats, spawn

    n_req = 2 * args.pairs * args.candidates
    print(f"work: {args.pairs} pairs x {args.candidates} candidates (max_tokens {GEN_MAX_TOKENS}) + 1 judge call "
          f"per candidate (max_tokens {JUDGE_MAX_TOKENS}) = {n_req} requests per system")
    print(f"server: latency = ({args.ttft:g} s + {args.per_token * 1000:g} ms x words) x exp(N(0, {args.sigma:g})), "
          f"words = U(0.2, 1.0) x max_tokens, seed {args.seed}; {args.slots} slots (the rest queue)")
    print(f"personaloom: OpenAIBackend + ResponseCache (fresh) + executors.local.LLM, concurrency={args.slots}, "
          f"{args.slots} pairs at a time, judge calls as soon as a pair's candidates exist; max_retries=0")
    print(f"distilabel {DISTILABEL_VERSION}: Pipeline LoadDataFromDicts(batch_size={args.distilabel_batch}) >> "
          f"TextGeneration(OpenAILLM, input_batch_size={args.distilabel_batch}, num_generations=1, "
          f"{args.candidates} rows/pair) >> TextGeneration(judge, input_batch_size={args.distilabel_batch}); "
          "use_cache=False; max_retries=0")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vs-distilabel-") as tmp, spawn(
        latency=args.ttft, per_token=args.per_token, sigma=args.sigma, lo=0.2, hi=1.0, slots=args.slots,
        seed=args.seed,
    ) as url:
        folder = Path(tmp)
        venv_python()  # create the venv before any clock starts
        for name, runner in (("personaloom", run_personaloom), ("distilabel", run_distilabel)):
            load = os.getloadavg()[0]
            server_stats(url, reset=True)
            res = runner(url, args, folder)
            res.update({"server": server_stats(url), "load": load})
            results[name] = res
            s = res["server"]
            print(f"{name}: {res['pairs']} conversations in {res['seconds']:.1f} s wall "
                  f"({res['pairs'] / res['seconds']:.2f} conv/s); server saw {s['total']} requests, "
                  f"{s['completion_words']} completion words, busy window {s['window_s']:.1f} s, "
                  f"max in flight {s['max_in_flight']}; load average {load:.1f}")
    pl, dl = results["personaloom"], results["distilabel"]
    if pl["server"]["completion_words"] != dl["server"]["completion_words"]:
        print("warning: the two systems did not get the same replies (completion words differ)")
    ideal = pl["server"]["busy_s"] / args.slots
    print(f"ideal (server busy seconds / slots): {ideal:.1f} s")
    wall_ratio = (pl["pairs"] / pl["seconds"]) / (dl["pairs"] / dl["seconds"])
    window_ratio = (pl["pairs"] / pl["server"]["window_s"]) / (dl["pairs"] / dl["server"]["window_s"])
    print(f"ratio_wall={wall_ratio:.3f} (end-to-end, distilabel's process start-up included)")
    print(f"ratio_window={window_ratio:.3f} (first request to last answer at the server; the headline)")
    print(f"ratio={window_ratio:.3f}")


if __name__ == "__main__":
    main()
