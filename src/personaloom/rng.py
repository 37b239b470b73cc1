"""Deterministic randomness keyed by names, not by call order.

`derive_seed(run_seed, "generate", pair_id, 2)` gives the same integer on every run and on every
machine, so concurrent scheduling, resumes and the Ray executor all make the same random choices and
send the same (cacheable) LLM requests.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def rng_for(*parts: object) -> random.Random:
    return random.Random(derive_seed(*parts))
