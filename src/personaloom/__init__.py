"""personaloom: faithful persona-based conversation datasets with LLMs (Generator-Critic framework)."""

__version__ = "0.1.0"
