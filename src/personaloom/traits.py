"""Big Five trait levels for --big-five: sampling, reading levels, and agreement with a judge.

In: profiles/pairs (which may already carry levels set by the user), the `big_five` settings and the
run seed. Out: every profile with a level for each trait ("high", "low" or a score in [0, 1]: a
profile's own level wins, then `big_five.levels`, then a seeded draw per profile), and
`agreement(set_levels, reading)`: how many of the judged levels match the set ones. A score counts as
"high" from 0.5 up. Draws are keyed by the profile id (a pair's id and side when there is no profile),
so a profile keeps its levels whichever stage assigns them.
"""

from __future__ import annotations

from typing import Any

from personaloom import rng
from personaloom.config import BigFiveConfig
from personaloom.records import TRAITS, Pair, Profile, TraitLevel, Traits


def level(value: TraitLevel) -> str:
    """"high" or "low" for a level or a score."""
    if isinstance(value, str):
        return value
    return "high" if value >= 0.5 else "low"


def resolve(key: str, own: Traits | None, cfg: BigFiveConfig, seed: int) -> Traits:
    draws = rng.rng_for(seed, "big-five", key)
    out: Traits = {}
    for trait in TRAITS:
        # Draw for every trait, so that setting one trait does not change the draws of the others.
        high = draws.random() < cfg.p_high
        if own and trait in own:
            out[trait] = own[trait]
        elif trait in cfg.levels:
            out[trait] = cfg.levels[trait]
        else:
            out[trait] = "high" if high else "low"
    return out


def assign_to_profiles(profiles: list[Profile], cfg: BigFiveConfig, seed: int) -> list[Profile]:
    if not cfg.active:
        return profiles
    return [p.model_copy(update={"traits": resolve(p.id, p.traits, cfg, seed)}) for p in profiles]


def assign_to_pair(pair: Pair, cfg: BigFiveConfig, seed: int, profiles: dict[str, Profile] | None = None) -> Pair:
    """The pair with both speakers' levels, per trait: the pair's own, else its profile's, else
    big_five.levels, else sampled. Without --big-five a pair keeps whatever levels it already carries."""
    if not cfg.active:
        return pair
    profiles = profiles or {}
    update: dict[str, Any] = {}
    for side, profile_id, own in (
        ("user1", pair.user1_profile_id, pair.user1_traits),
        ("user2", pair.user2_profile_id, pair.user2_traits),
    ):
        profile = profiles.get(profile_id) if profile_id else None
        inherited = profile.traits if profile is not None and profile.traits else {}
        base = {**inherited, **(own or {})}
        update[f"{side}_traits"] = resolve(profile_id or f"{pair.id}/{side}", base, cfg, seed)
    return pair.model_copy(update=update)


def levels(traits: Traits | None) -> dict[str, str]:
    """{trait: "high" | "low"} in TRAITS order (the form prompts and judges use)."""
    return {t: level(traits[t]) for t in TRAITS if traits and t in traits}


def agreement(set_levels: dict[str, Traits | None], reading: dict[str, dict[str, str]]) -> dict[str, tuple[int, int]]:
    """{trait: (matches, judged)} over both speakers; set_levels/reading are keyed "user1"/"user2"."""
    out: dict[str, tuple[int, int]] = {}
    for trait in TRAITS:
        matches = judged = 0
        for side, traits in set_levels.items():
            want = levels(traits).get(trait)
            got = reading.get(side, {}).get(trait)
            if want is None or got is None:
                continue
            judged += 1
            matches += want == got
        if judged:
            out[trait] = (matches, judged)
    return out


def agreement_rate(per_trait: dict[str, tuple[int, int]]) -> float | None:
    judged = sum(n for _, n in per_trait.values())
    return sum(m for m, _ in per_trait.values()) / judged if judged else None
