"""Profile consistency: calls per profile and recall on the labelled set, listwise judge vs the paper's pairwise one.

In: nothing (settings on the command line). Out, per judge (profiles.nli = llm, llm-pairwise):
- calls per profile: the real `build_profiles` over the builtin seed attributes (embedded with the real
  embedding model, redundancy and topic gate on), the consistency judge answered by the scripted demo backend
  (instant; it never finds a contradiction, so these are the calls of profiles that accept every candidate);
- recall on calibrate/data/nli_pairs.jsonl: the 24 contradicting pairs and 24 compatible ones (calibrate's
  probes), each asked as "candidate vs a profile holding the other attribute", by a real model: the embedded
  SmolLM2-135M by default, or `--base-url URL --model NAME` (an OpenAI-compatible server; a capable model
  is the meaningful measurement). Every call goes through a response cache in --out (re-running is free).
Last line: `ratio=<listwise calls per profile / pairwise calls per profile>`.

    .venv/bin/python bench/consistency.py [--profiles 400] [--base-url URL --model NAME] [--skip-recall]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from personaloom.backends.fake import FakeBackend, demo_responder
from personaloom.calibrate import measure, probes
from personaloom.config import ProfilesConfig, build_config
from personaloom.embed import Embedder
from personaloom.executors.clients import Clients
from personaloom.executors.local import LLM
from personaloom.seed_data import load_seed_set
from personaloom.stages.profiles import build_profiles
from personaloom.stats import Stats

JUDGES = ("llm", "llm-pairwise")


def calls_per_profile(judge: str, n: int, embedder: Embedder) -> tuple[float, int]:
    seeds = load_seed_set(None, None, 0, 0)
    attributes = seeds.attributes
    fake = FakeBackend(demo_responder)
    cfg = ProfilesConfig(profiles=n, nli=judge)  # type: ignore[arg-type]
    config = build_config(overrides=["backend.kind=fake"])
    res = asyncio.run(build_profiles(attributes, embedder, LLM(fake, progress=False), cfg, config.sampling, 0))
    return len(fake.requests) / max(1, len(res.profiles)), len(res.profiles)


def recall(judge: str, out: Path, base_url: str | None, model: str | None) -> dict[str, float]:
    overrides = [f"profiles.nli={judge}"]
    if base_url:
        overrides += ["backend.kind=openai", f"backend.base_url={base_url}", f"backend.model={model}"]
    config = build_config(overrides=overrides)
    stats = Stats()
    clients = Clients(config, out, stats)
    found = probes.contradictions(24)

    async def go() -> measure.JudgeScore:
        try:
            return await measure.nli(found, clients.role, config, stats)
        finally:
            await clients.aclose()

    score = asyncio.run(go())
    pairs = list(zip(score.truth, score.answers, strict=True))
    hits = sum(1 for t, a in pairs if t and a is True)
    false_alarms = sum(1 for t, a in pairs if not t and a is True)
    undecided = sum(1 for _, a in pairs if a is None)
    bad = sum(1 for t, _ in pairs if t)
    return {"recall": hits / bad, "false_alarm": false_alarms / (len(pairs) - bad), "undecided": undecided,
            "calls": score.calls, "n": len(pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", type=int, default=400)
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--out", type=Path, default=None, help="cache folder (default: a temporary one)")
    ap.add_argument("--skip-recall", action="store_true", help="calls per profile only (no model needed)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="consistency-"))
    embedder = Embedder(cache_path=out / "embeddings.sqlite")
    per_profile: dict[str, float] = {}
    for judge in JUDGES:
        t0 = time.perf_counter()
        per_profile[judge], built = calls_per_profile(judge, args.profiles, embedder)
        print(f"{judge}: {per_profile[judge]:.2f} consistency calls per profile ({built} profiles, "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
    if not args.skip_recall:
        where = f"{args.model} at {args.base_url}" if args.base_url else "embedded SmolLM2-135M-Instruct"
        for judge in JUDGES:
            r = recall(judge, out, args.base_url, args.model)
            print(f"{judge} on the labelled set ({where}, {r['n']} probes): recall {r['recall']:.2f}, "
                  f"false alarms {r['false_alarm']:.2f}, undecided {r['undecided']}, calls {r['calls']}", flush=True)
    print(f"calls_per_profile={per_profile['llm']:.2f}")
    print(f"ratio={per_profile['llm'] / per_profile['llm-pairwise']:.3f}")


if __name__ == "__main__":
    main()
