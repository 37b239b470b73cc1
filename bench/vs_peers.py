"""P-3 / P-7: personaloom vs its peers on the same generate-then-judge work against the same server.

Peers: distilabel 1.5.3, NeMo Data Designer 0.9.7 (its async engine), Bespoke Curator 0.1.31 (its online
processor). In: nothing (settings on the command line). Out: each system's settings and numbers, one line
per system; then `ratio_distilabel=<personaloom / distilabel conversations/s>` (P-3, goal >= 2),
`ratio_ideal=<personaloom's busy window / ideal>` (goal <= 1.1) and last `ratio=<personaloom / the fastest
peer>` (P-7, goal >= 1.0), all on the server's busy window (first request to last answer: a peer's process
start-up is not counted against it).

The work: N pairs; per pair C candidate generations (max_tokens 400) and then one judge call per
candidate (max_tokens 160) that quotes the candidate. A conversation is a pair whose C candidates are
judged. Every system sends the same messages (plain chat requests of the same shape as the generator's
and critic's, not the real stage builders, so that the peers can send byte-identical prompts), one
request per candidate, through an OpenAI-compatible client (personaloom: OpenAIBackend + ResponseCache +
LLM; distilabel: OpenAILLM; Data Designer: an "openai" ModelProvider; Curator: backend "openai").

The server (bench/loopback.py, its own process) answers like a decode-bound server: latency =
(ttft + per_token x completion words) x lognormal jitter, completion length U(0.2, 1.0) x max_tokens,
all drawn from the request's messages (seeded), so every system gets the same replies and latencies
(the check: the server's completion words are equal). It serves at most `slots` requests at once (like
vLLM's max_num_seqs) and queues the rest. The cap on requests in flight is the same for every system:
personaloom's client concurrency = slots; distilabel's generate and judge steps run concurrently in their
own processes, so each gets input_batch_size = slots / 2; Data Designer's max_parallel_requests = slots
(per provider and model: both columns use the one model); Curator's max_concurrent_requests = slots
(its two stages run one after the other). `--distilabel-batch N` changes distilabel's (e.g. = slots lets it
queue up to 2 x slots at the server, more than the others' cap).

Each peer runs in its own virtualenv (~/.cache/personaloom-bench/<peer>-venv, created with its pinned
`pip install` on first use, then reused), by running this same file there with `--side <peer>` (a side
imports no personaloom). What each peer is told, so that the server sees only the work (2 x N x C
requests): Data Designer: no model health check ("Hello!" per model), no telemetry, no plugins, no
metrics port; Curator: no cache, no telemetry, no rich display, the rate-limit header probe skipped,
tiktoken's cl100k_base read from the copy litellm ships (tiktoken would download it); distilabel: its
undeclared `requests` dependency installed.

    .venv/bin/python bench/vs_peers.py [--pairs 500] [--candidates 3] [--slots 32] [--peers distilabel curator]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

DISTILABEL_VERSION = "1.5.3"
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


API_KEY = "sk-local-no-key"

# ------------------------------------------------------------------------------------ NeMo Data Designer

DATA_DESIGNER_VERSION = "0.9.7"
DATA_DESIGNER_PACKAGES = (f"data-designer=={DATA_DESIGNER_VERSION}",)
DATA_DESIGNER_CHECK = ("import data_designer.config, data_designer.interface; from importlib.metadata import version; "
                       f"assert version('data-designer') == '{DATA_DESIGNER_VERSION}'")
# Set before data_designer is imported (read at import time or at run start).
DATA_DESIGNER_ENV = {
    "NEMO_TELEMETRY_ENABLED": "false",              # else: a batch event POSTed to events.telemetry.data.nvidia.com
    "DATA_DESIGNER_SKIP_MODEL_HEALTH_CHECKS": "1",  # else: one "Hello!" chat request per model alias before the run
    "DISABLE_DATA_DESIGNER_PLUGINS": "true",
}


def _cleanup(*paths: str) -> None:
    """Remove a side's scratch folders (PEER_KEEP_FILES=1 keeps them)."""
    if os.environ.get("PEER_KEEP_FILES") != "1":
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


def data_designer_side(args: argparse.Namespace) -> None:
    """Data Designer's (only) engine in 0.9.x: the async task-queue builder (AsyncTaskScheduler)."""
    home, artifacts = tempfile.mkdtemp(prefix="dd-home-"), tempfile.mkdtemp(prefix="dd-artifacts-")
    try:
        _data_designer(args, home, artifacts)
    finally:
        _cleanup(home, artifacts)


def _data_designer(args: argparse.Namespace, home: str, artifacts: str) -> None:
    os.environ.setdefault("DATA_DESIGNER_HOME", home)  # default model settings are written under ~/.data-designer
    for key, value in DATA_DESIGNER_ENV.items():
        os.environ.setdefault(key, value)
    import logging

    import data_designer.config as dd
    import pandas as pd
    from data_designer.interface import DataDesigner

    rows = [{"pair": i, "candidate": j, "gen_prompt": gen_prompt(i, j)}
            for i in range(args.pairs) for j in range(args.candidates)]

    def params(max_tokens: int) -> Any:
        # max_parallel_requests caps requests per (provider, model): both aliases below share model
        # "loopback" on one provider, so the cap (min over the aliases) is `slots` in total.
        return dd.ChatCompletionInferenceParams(max_tokens=max_tokens, temperature=0.7,
                                                max_parallel_requests=args.slots, timeout=120)

    provider = dd.ModelProvider(name="loopback", endpoint=args.url, provider_type="openai", api_key=API_KEY)
    models = [dd.ModelConfig(alias="gen", model="loopback", provider="loopback", skip_health_check=True,
                             inference_parameters=params(GEN_MAX_TOKENS)),
              dd.ModelConfig(alias="judge", model="loopback", provider="loopback", skip_health_check=True,
                             inference_parameters=params(JUDGE_MAX_TOKENS))]
    builder = dd.DataDesignerConfigBuilder(model_configs=models)
    builder.with_seed_dataset(dd.DataFrameSeedSource(df=pd.DataFrame(rows)),
                              sampling_strategy=dd.SamplingStrategy.ORDERED)
    builder.add_column(dd.LLMTextColumnConfig(name="generation", model_alias="gen", system_prompt=GEN_SYSTEM,
                                              prompt="{{ gen_prompt }}"))
    builder.add_column(dd.LLMTextColumnConfig(name="judgement", model_alias="judge", system_prompt=JUDGE_SYSTEM,
                                              prompt=JUDGE_TEMPLATE))

    designer = DataDesigner(artifact_path=artifacts, model_providers=[provider])
    logging.getLogger("data_designer").setLevel(logging.WARNING)
    # otel_metrics_port=None: no loopback Prometheus endpoint; display_tui off (not a TTY anyway).
    designer.set_run_config(dd.RunConfig(otel_metrics_port=None, display_tui=False,
                                         buffer_size=1000))

    t_start, start = time.time(), time.perf_counter()
    result = designer.create(builder, num_records=len(rows), dataset_name="bench")
    elapsed, t_end = time.perf_counter() - start, time.time()
    df = result.load_dataset()
    ok = df[df["judgement"].fillna("").astype(str).str.len() > 0]
    per_pair = Counter(int(p) for p in ok["pair"])
    pairs_done = sum(1 for n in per_pair.values() if n == args.candidates)
    print(json.dumps({"seconds": elapsed, "rows": len(df), "pairs": pairs_done, "t_start": t_start,
                      "t_end": t_end}), flush=True)


# ----------------------------------------------------------------------------------------- Bespoke Curator

CURATOR_VERSION = "0.1.31"
CURATOR_PACKAGES = (f"bespokelabs-curator=={CURATOR_VERSION}",)
CURATOR_CHECK = ("from bespokelabs import curator; from importlib.metadata import version; "
                 f"assert version('bespokelabs-curator') == '{CURATOR_VERSION}'")
CURATOR_ENV = {
    "CURATOR_DISABLE_CACHE": "1",            # random run fingerprint: never reuses an earlier run's responses
    "TELEMETRY_ENABLED": "false",            # PostHog telemetry
    "CURATOR_DISABLE_RICH_DISPLAY": "1",     # plain log lines instead of a rich live progress display
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm: no fetch of the model cost map from GitHub at import
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "TQDM_DISABLE": "1",                     # its tqdm bars (the non-rich fallback) and datasets' bars
}


def curator_side(args: argparse.Namespace) -> None:
    """Curator's online processor (backend "openai": aiohttp straight to base_url + /chat/completions)."""
    work = tempfile.mkdtemp(prefix="curator-")
    try:
        _curator(args, work)
    finally:
        _cleanup(work)


def _curator(args: argparse.Namespace, work: str) -> None:
    os.environ.setdefault("CURATOR_CACHE_DIR", os.path.join(work, "cache"))
    os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(work, "hf-datasets"))
    for key, value in CURATOR_ENV.items():
        os.environ.setdefault(key, value)
    import importlib.util
    import logging

    # The "openai" backend counts prompt tokens with tiktoken's cl100k_base, which tiktoken downloads from
    # openaipublic.blob.core.windows.net on first use (no internet here: ConnectionError). litellm (a curator
    # dependency) ships that file; point tiktoken's cache at it, as litellm itself does for its own counting.
    spec = importlib.util.find_spec("litellm")
    if spec and spec.submodule_search_locations:
        bundled = os.path.join(next(iter(spec.submodule_search_locations)), "litellm_core_utils", "tokenizers")
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", bundled)

    from bespokelabs import curator

    # Imported here, before the clock, like the other sides' imports (an LLM imports it lazily when built).
    from bespokelabs.curator.request_processor.online import openai_online_request_processor as olp

    # The "openai" backend POSTs one rate-limit probe ({"model": ..., "messages": []}) per LLM to read
    # x-ratelimit-* headers. The limits are set by hand below and the server sends no such headers (the
    # answer would be (0, 0), unused): skipped, so the server sees only the work (2 x pairs x candidates).
    olp.OpenAIOnlineRequestProcessor.get_header_based_rate_limits = lambda self: (0, 0)

    backend, model = "openai", "loopback"
    backend_params = {
        "base_url": args.url, "api_key": API_KEY,
        "max_concurrent_requests": args.slots,      # asyncio.Semaphore around each request: the in-flight cap
        "max_requests_per_minute": 1_000_000_000,   # effectively no request-rate limit
        "max_tokens_per_minute": 1_000_000_000_000,  # ... nor token-rate limit
        "max_retries": 0, "request_timeout": 120, "require_all_responses": False,
    }

    class Generate(curator.LLM):
        def prompt(self, row: dict) -> list[dict]:
            return [{"role": "system", "content": GEN_SYSTEM}, {"role": "user", "content": row["gen_prompt"]}]

        def parse(self, row: dict, response: str) -> dict:
            return {"pair": row["pair"], "candidate": row["candidate"], "generation": response}

    class Judge(curator.LLM):
        def prompt(self, row: dict) -> list[dict]:
            return [{"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": judge_prompt(row["generation"])}]

        def parse(self, row: dict, response: str) -> dict:
            return {"pair": row["pair"], "candidate": row["candidate"], "judgement": response}

    rows = [{"pair": i, "candidate": j, "gen_prompt": gen_prompt(i, j)}
            for i in range(args.pairs) for j in range(args.candidates)]
    logging.getLogger("curator").setLevel(logging.WARNING)
    t_start, start = time.time(), time.perf_counter()
    # Building an LLM builds its request processor (tiktoken encoding, cost processor).
    generate = Generate(model_name=model, backend=backend, backend_params=dict(backend_params),
                        generation_params={"max_tokens": GEN_MAX_TOKENS, "temperature": 0.7})
    judge = Judge(model_name=model, backend=backend, backend_params=dict(backend_params),
                  generation_params={"max_tokens": JUDGE_MAX_TOKENS, "temperature": 0.7})
    generated = generate(rows)  # stage 1: all candidates; stage 2 starts when every generation is back
    judged = judge(generated.dataset)
    elapsed, t_end = time.perf_counter() - start, time.time()
    data = judged.dataset
    per_pair = Counter(r["pair"] for r in data if r.get("judgement"))
    pairs_done = sum(1 for n in per_pair.values() if n == args.candidates)
    print(json.dumps({"seconds": elapsed, "rows": len(data), "pairs": pairs_done, "t_start": t_start,
                      "t_end": t_end}), flush=True)


# distilabel imports `requests` without declaring it (ModuleNotFoundError on `import distilabel.models`).
DISTILABEL_PACKAGES = (f"distilabel=={DISTILABEL_VERSION}", "openai", "requests")
DISTILABEL_CHECK = ("import distilabel, distilabel.models.llms, distilabel.pipeline; "
                    f"assert distilabel.__version__ == '{DISTILABEL_VERSION}'")

# peer -> (side, pinned packages, venv check)
PEERS: dict[str, tuple[Callable[[argparse.Namespace], None], tuple[str, ...], str]] = {
    "distilabel": (distilabel_side, DISTILABEL_PACKAGES, DISTILABEL_CHECK),
    "data-designer": (data_designer_side, DATA_DESIGNER_PACKAGES, DATA_DESIGNER_CHECK),
    "curator": (curator_side, CURATOR_PACKAGES, CURATOR_CHECK),
}


def venv_python(peer: str) -> Path:
    """The peer's virtualenv's python, created (pinned packages) on first use."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "personaloom-bench" / f"{peer}-venv"
    python = root / "bin" / "python"
    packages, check_code = PEERS[peer][1], PEERS[peer][2]
    check = [str(python), "-c", check_code]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {root} (pip install {' '.join(packages)}); reused on later runs", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    subprocess.run(check, check=True)
    return python


def run_peer(peer: str, url: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    cmd = [str(venv_python(peer)), str(Path(__file__).resolve()), "--side", peer, "--url", url,
           "--pairs", str(args.pairs), "--candidates", str(args.candidates), "--slots", str(args.slots),
           "--batch", str(args.distilabel_batch), "--cache-dir", str(folder / f"{peer}-cache")]
    log = folder / f"{peer}.log"
    env = {**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{peer} run failed (exit {proc.returncode}):\n{tail}")
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
    parser.add_argument("--slots", type=int, default=32, help="server slots = every system's cap in flight")
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--per-token", type=float, default=0.001)
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", nargs="+", choices=sorted(PEERS), default=list(PEERS))
    parser.add_argument("--side", choices=["all", *PEERS], default="all")
    parser.add_argument("--url", default="")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--distilabel-batch", type=int, default=0,
                        help="distilabel input_batch_size per LLM step (default: slots // 2, the same cap in flight)")
    parser.add_argument("--cache-dir", default="")
    args = parser.parse_args()
    if args.distilabel_batch <= 0:
        args.distilabel_batch = max(1, args.slots // 2)
    if args.side != "all":
        PEERS[args.side][0](args)
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
    batch = args.distilabel_batch
    setups = {
        "distilabel": f"distilabel {DISTILABEL_VERSION}: Pipeline LoadDataFromDicts(batch_size={batch}) >> "
                      f"TextGeneration(OpenAILLM, input_batch_size={batch}, num_generations=1, {args.candidates} "
                      f"rows/pair) >> TextGeneration(judge, input_batch_size={batch}); use_cache=False; max_retries=0",
        "data-designer": f"data-designer {DATA_DESIGNER_VERSION}: DataFrameSeedSource (ordered) -> LLMTextColumn "
                         f"generation -> LLMTextColumn judgement ('{{{{ generation }}}}'), max_parallel_requests="
                         f"{args.slots}, buffer_size 1000; no health check, telemetry or plugins",
        "curator": f"bespokelabs-curator {CURATOR_VERSION}: curator.LLM generate, then curator.LLM judge over its "
                   f"dataset; backend openai, max_concurrent_requests={args.slots}, rate limits off, max_retries=0; "
                   "cache and rate-limit probe off",
    }
    for peer in args.peers:
        print(setups[peer])
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vs-peers-") as tmp, spawn(
        latency=args.ttft, per_token=args.per_token, sigma=args.sigma, lo=0.2, hi=1.0, slots=args.slots,
        seed=args.seed,
    ) as url:
        folder = Path(tmp)
        for peer in args.peers:
            venv_python(peer)  # create the venvs before any clock starts
        runners: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("personaloom", lambda: run_personaloom(url, args, folder))]
        runners += [(peer, lambda peer=peer: run_peer(peer, url, args, folder)) for peer in args.peers]  # type: ignore[misc]
        for name, runner in runners:
            load = os.getloadavg()[0]
            server_stats(url, reset=True)
            res = runner()
            res.update({"server": server_stats(url), "load": load})
            results[name] = res
            s = res["server"]
            res["rate"] = res["pairs"] / s["window_s"] if s["window_s"] else 0.0
            print(f"{name}: {res['pairs']} conversations in {res['seconds']:.1f} s wall; server saw {s['total']} "
                  f"requests, {s['completion_words']} completion words, busy window {s['window_s']:.1f} s "
                  f"({res['rate']:.2f} conv/s), max in flight {s['max_in_flight']}; load average {load:.1f}")
    pl = results["personaloom"]
    for name, res in results.items():
        if res["server"]["completion_words"] != pl["server"]["completion_words"] or res["server"]["total"] != n_req:
            print(f"warning: {name} did not get the same work (requests {res['server']['total']} of {n_req}, "
                  f"completion words {res['server']['completion_words']} vs {pl['server']['completion_words']})")
    ideal = pl["server"]["busy_s"] / args.slots
    print(f"ideal (server busy seconds / slots): {ideal:.1f} s")
    if "distilabel" in results:
        print(f"ratio_distilabel={pl['rate'] / results['distilabel']['rate']:.3f}")
    print(f"ratio_ideal={pl['server']['window_s'] / ideal:.3f}")
    fastest = max((n for n in results if n != "personaloom"), key=lambda n: results[n]["rate"])
    print(f"fastest peer: {fastest} ({results[fastest]['rate']:.2f} conv/s)")
    print(f"ratio={pl['rate'] / results[fastest]['rate']:.3f}")


if __name__ == "__main__":
    main()
