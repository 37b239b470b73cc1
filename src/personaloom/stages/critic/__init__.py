"""The Critic, a mixture of experts (DESIGN.md §1 step 6).

format_expert: rule-based format checks; experts: LLM judges (quality, faithfulness, toxicity);
vote: filtering and the quality vote; pair_round: generate + critique one pair (`generate_and_critique`).
`PairOutcome` and `generate_and_critique` are importable from here; they load lazily because the
generator itself uses format_expert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from personaloom.stages.critic.pair_round import PairOutcome, generate_and_critique

__all__ = ["PairOutcome", "generate_and_critique"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from personaloom.stages.critic import pair_round

        return getattr(pair_round, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
