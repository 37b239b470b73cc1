"""Prompt templates: one Jinja file per stage/expert in this package, rendered with `render()`.

A run may replace any of them from a folder (`prompts.dir`, `--prompts DIR`): `using(folder)` makes a file of
the same name there take the shipped template's place for every render in the current context (the run's
task and the threads and tasks it starts); `source(name)` is the text in effect, which resume fingerprints
hold. `personaloom.prompts.catalog` lists the templates and checks a folder before anything is paid.

Untrusted text (persona attributes, conversations) goes into prompts only through the `quoted` and
`persona_block` filters: each item becomes a JSON string literal inside a delimited block, so that
instructions, fake "User 1:" lines or JSON inside a persona cannot change the prompt's structure.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Hashable, Iterator, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
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
    return _dialogue(turn_lines(turns), _folder.get())


@lru_cache(maxsize=4096)  # a pair's candidates, for the time its Critic takes
def _dialogue(turns: tuple[tuple[int, str], ...], folder: Overrides | None) -> str:
    macro = _template("critic_conversation.j2", folder).module.dialogue  # type: ignore[attr-defined]
    return str(macro([{"speaker": speaker, "text": text} for speaker, text in turns]))


@dataclass(frozen=True)
class Overrides:
    """A folder of replacement templates as a cache key: `stamp` holds each .j2 file's (name, mtime_ns, size),
    so that a file edited between two runs in one process (a notebook) is compiled again."""

    path: Path
    stamp: tuple[tuple[str, int, int], ...]

    @classmethod
    def of(cls, folder: str | Path) -> Overrides:
        path = Path(folder).resolve()
        files = sorted(path.glob("*.j2")) if path.is_dir() else []
        return cls(path, tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files))

    def file(self, name: str) -> Path | None:
        path = self.path / name
        return path if path.is_file() else None


# The replacement templates in effect in this context (None: the shipped ones only).
_folder: ContextVar[Overrides | None] = ContextVar("personaloom_prompts_dir", default=None)


@contextlib.contextmanager
def using(folder: str | Path | None) -> Iterator[None]:
    """Within the block, a template file in `folder` replaces the shipped template of the same name (None: no
    change). Scoped to the current context: other runs, threads and notebook cells are not affected."""
    token = _folder.set(Overrides.of(folder) if folder is not None else None)
    try:
        yield
    finally:
        _folder.reset(token)


def in_effect() -> Overrides | None:
    """The replacement templates in effect in this context (None: the shipped ones), a hashable cache key."""
    return _folder.get()


def names() -> list[str]:
    """The shipped templates' file names, sorted."""
    return sorted(p.name for p in resources.files(__package__).iterdir() if p.name.endswith(".j2"))


def shipped(name: str) -> str:
    """The text of the shipped template `name`."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def source(name: str) -> str:
    """The text of template `name` in effect here: the folder in use's file if it has one, else the shipped one."""
    folder = _folder.get()
    path = folder.file(name) if folder is not None else None
    return path.read_text(encoding="utf-8") if path is not None else shipped(name)


class _Environment(jinja2.Environment):
    """Templates' globals as one plain dict. Jinja's default, a ChainMap over the environment's globals, is
    iterated twice per render (a fifth of a render's cost here); ours are all set before the first
    template loads, so nothing it would reflect ever changes."""

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


@cache
def environment(folder: Overrides | None = None) -> jinja2.Environment:
    """The Jinja environment that loads `folder`'s templates before the shipped ones (None: shipped only)."""

    def load(name: str) -> tuple[str, str | None, None]:
        path = folder.file(name) if folder is not None else None
        if path is not None:
            return path.read_text(encoding="utf-8"), str(path), None
        return shipped(name), None, None

    env = _Environment(
        loader=jinja2.FunctionLoader(load),
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
    """Render prompts/<name> (e.g. "generator.j2") with the given variables: the folder in use's file of that
    name if it has one (`using`), else the shipped template."""
    return _template(name, _folder.get()).render(**variables).strip()


@cache  # templates never change while a run runs: no loader look-up or freshness check per render
def _template(name: str, folder: Overrides | None) -> jinja2.Template:
    return environment(folder).get_template(name)


def render_fixed(name: str, **settings: Hashable) -> str:
    """`render` for a prompt that depends only on a few hashable settings (an expert's system prompt), rendered
    once per distinct settings instead of once per request."""
    return _render_fixed(name, tuple(sorted(settings.items())), _folder.get())


@lru_cache(maxsize=256)
def _render_fixed(name: str, settings: tuple[tuple[str, Hashable], ...], folder: Overrides | None) -> str:
    return _template(name, folder).render(**dict(settings)).strip()
