"""The Critic, a mixture of experts (DESIGN.md §1 step 6).

format_expert, language_expert: rule-based checks; registry: the LLM experts by name (`CriticExpert`);
experts: the built-in LLM experts (quality, faithfulness, toxicity, traits, cross-session); vote: filtering
and the quality vote. The per-pair round (generate, critique, vote) is stages/round.py.
"""
