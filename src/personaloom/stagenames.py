"""The names of the pipeline's stages and LLM steps, as stats.json, failures, progress and the dry run
show them: one source for every module that names a stage (the stages themselves, the dry-run estimate,
the demo responses of the fake backend).
"""

from __future__ import annotations

EXPAND = "expand"
EXPAND_QUESTIONS = "expand.queries"
EXPAND_ANSWERS = "expand.bootstrap"
EXPAND_DESCRIBE = "expand.describe"
PROFILES = "profiles"
PROFILES_NEGATION = "profiles.negation"
PROFILES_NLI = "profiles.nli"
PAIR = "pair"
GENERATE = "generate"
CRITIC = "critic"
LOCALIZE = "localize"
SESSIONS_MEMORY = "sessions.memory"
SCENARIOS = "scenarios"
SCENARIOS_SUBTOPICS = "scenarios.subtopics"
SCENARIOS_EXPAND = "scenarios.expand"
