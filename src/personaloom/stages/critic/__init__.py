"""The Critic, a mixture of experts (DESIGN.md §1 step 6).

format_expert: rule-based format checks; experts: LLM judges (quality, faithfulness, toxicity);
vote: filtering and the quality vote; pair_round: generate + critique one pair (`generate_and_critique`).
"""

from __future__ import annotations

from personaloom.stages.critic.pair_round import PairOutcome, generate_and_critique

__all__ = ["PairOutcome", "generate_and_critique"]
