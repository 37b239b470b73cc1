"""Prompt templates: one Jinja file per stage/expert in this package, rendered with `render()`.

Untrusted text (persona attributes, conversations) goes into prompts only through the `quoted` and
`persona_block` filters: each item becomes a JSON string literal inside a delimited block, so that
instructions, fake "User 1:" lines or JSON inside a persona cannot change the prompt's structure.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, MutableMapping, Sequence
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import jinja2


@lru_cache(maxsize=1 << 16)  # every candidate's utterances are quoted once per expert that reads them
def quoted(text: str) -> str:
    """One JSON string literal on one line: newlines, quotes and braces are escaped."""
    return json.dumps(" ".join(str(text).split()), ensure_ascii=False)


def persona_block(attributes: list[str]) -> str:
    return "\n".join(f"- {quoted(a)}" for a in attributes)


def turn_lines(turns: Sequence[Any]) -> tuple[tuple[int, str], ...]:
    """(speaker, text) of each turn (a Turn or its dict): the hashable form prompts are memoised by."""
    return tuple((t["speaker"], t["text"]) if isinstance(t, dict) else (t.speaker, t.text) for t in turns)


def dialogue(turns: Sequence[Any]) -> str:
    """critic_conversation.j2's `dialogue` macro (templates call it as a global), memoised by the turns'
    (speaker, text): each candidate is shown to every expert, several times to the pairwise ones."""
    return _dialogue(turn_lines(turns))


@lru_cache(maxsize=4096)  # a pair's candidates, for the time its Critic takes
def _dialogue(turns: tuple[tuple[int, str], ...]) -> str:
    macro = _template("critic_conversation.j2").module.dialogue  # type: ignore[attr-defined]
    return str(macro([{"speaker": speaker, "text": text} for speaker, text in turns]))


def _load(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


class _Environment(jinja2.Environment):
    """Templates' globals as one plain dict. Jinja's default, a ChainMap over the environment's globals, is
    iterated twice per render (a fifth of a render's cost here); ours are all set before the first
    template loads, so nothing it would reflect ever changes."""

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


@cache
def _env() -> jinja2.Environment:
    env = _Environment(
        loader=jinja2.FunctionLoader(_load),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["quoted"] = quoted
    env.filters["persona_block"] = persona_block
    env.globals["dialogue"] = dialogue
    return env


def render(name: str, **variables: Any) -> str:
    """Render prompts/<name> (e.g. "generator.j2") with the given variables."""
    return _template(name).render(**variables).strip()


@cache  # the package's templates never change while it runs: no loader look-up or freshness check per render
def _template(name: str) -> jinja2.Template:
    return _env().get_template(name)


def render_fixed(name: str, **settings: Hashable) -> str:
    """`render` for a prompt that depends only on a few hashable settings (an expert's system prompt), rendered
    once per distinct settings instead of once per request."""
    return _render_fixed(name, tuple(sorted(settings.items())))


@lru_cache(maxsize=256)
def _render_fixed(name: str, settings: tuple[tuple[str, Hashable], ...]) -> str:
    return render(name, **dict(settings))
