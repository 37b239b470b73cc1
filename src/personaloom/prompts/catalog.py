"""What the prompt templates are and whether a folder of replacements is sound, before anything is paid.

In: the shipped templates (personaloom/prompts/*.j2) and, to check, a folder of replacement templates.
Out: `templates()` — one `Template` per shipped file (name, the stages that render it, the variables it
receives); `check(folder)` — nothing, or ConfigError naming the file and line of the first problem; `copy(folder)`
— the shipped files written there to start from.

The variables a template receives are those its shipped version reads (with what it extends, includes or
imports): the stage passes exactly those. A replacement may read any of them, and no other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import get_close_matches
from functools import cache
from pathlib import Path

import jinja2
from jinja2 import meta, nodes

from personaloom import prompts
from personaloom.errors import ConfigError

# Templates no pipeline stage's StageInputs lists: who renders them.
_OTHER_STAGES = {"judge_*.j2": ("evaluate", "calibrate"), "distractor_*.j2": ("evaluate", "calibrate"),
                 "dataset_card.j2": ("write",)}


@dataclass(frozen=True)
class Template:
    """One shipped template: `name` (file name), `stages` (the stages that render it), `variables` (sorted)."""

    name: str
    stages: tuple[str, ...]
    variables: tuple[str, ...]


def _stage_globs() -> list[tuple[str, tuple[str, ...]]]:
    from personaloom.stages import expansion, pairing, profiles, sessions

    found = [(spec.name, spec.templates) for spec in (expansion.INPUTS, profiles.INPUTS, pairing.INPUTS,
                                                      sessions.INPUTS)]
    return found + [(stage, (glob,)) for glob, stages in _OTHER_STAGES.items() for stage in stages]


def _parse(name: str, text: str) -> nodes.Template:
    return prompts.environment().parse(text, name=name)


@cache
def variables(name: str) -> frozenset[str]:
    """The variables shipped template `name` receives: what it and the templates it uses read, less globals."""
    env = prompts.environment()
    seen: set[str] = set()
    todo, found = [name], set[str]()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        tree = _parse(current, prompts.shipped(current))
        found |= meta.find_undeclared_variables(tree)
        todo += [t for t in meta.find_referenced_templates(tree) if t is not None]
    return frozenset(found - set(env.globals))


def templates() -> list[Template]:
    """Every shipped template with the stages that render it and the variables it receives, by name."""
    from fnmatch import fnmatchcase

    globs = _stage_globs()
    return [
        Template(name, tuple(dict.fromkeys(stage for stage, pats in globs if any(fnmatchcase(name, p) for p in pats))),
                 tuple(sorted(variables(name))))
        for name in prompts.names()
    ]


def check(folder: str | Path) -> list[str]:
    """Check a folder of replacement templates; return the names it replaces. Every .j2 file there must be named
    like a shipped template, compile, and read only the variables that template receives. Raises ConfigError
    naming the file and line of the first problem (`prompts.dir`: a missing folder; a non-.j2 file is ignored)."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"prompts.dir: {path} is not a folder (`personaloom prompts copy {path}` starts one from "
                          "the shipped templates)")
    known = prompts.names()
    replaced = []
    for file in sorted(path.glob("*.j2")):
        _known(file.name, f"{file}: ")
        try:
            text = file.read_text(encoding="utf-8")
            tree = _parse(file.name, text)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read it ({exc})") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"{file}:{exc.lineno}: {exc.message}") from exc
        allowed = variables(file.name)
        for ref in meta.find_referenced_templates(tree):
            if ref is not None and ref not in known:
                raise ConfigError(f"{file}: uses template {ref!r}, which is not a shipped template")
        unknown = sorted(meta.find_undeclared_variables(tree) - allowed - set(prompts.environment().globals))
        if unknown:
            line = min((n.lineno for n in tree.find_all(nodes.Name) if n.name == unknown[0]), default=1)
            near = get_close_matches(unknown[0], sorted(allowed), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            receives = ", ".join(sorted(allowed)) or "no variables"
            raise ConfigError(f"{file}:{line}: {file.name} receives no variable {unknown[0]!r}{hint}; it receives: "
                              f"{receives}")
        replaced.append(file.name)
    return replaced


@contextlib.contextmanager
def applied(folder: str | Path | None) -> Iterator[None]:
    """`check(folder)`, then its templates in effect within the block (`prompts.using`); None: the shipped ones.
    Raises ConfigError before the block runs, so a broken template costs no call."""
    if folder is not None:
        check(folder)
    with prompts.using(folder):
        yield


def _known(name: str, where: str = "") -> str:
    known = prompts.names()
    if name not in known:
        near = get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{where}no shipped template is called {name}{hint}; `personaloom prompts list` shows "
                          "their names")
    return name


def shipped_text(name: str) -> str:
    """The shipped template `name`'s text. ConfigError (with a did-you-mean) for an unknown name."""
    return prompts.shipped(_known(name))


def copy(folder: str | Path, names: list[str] | None = None) -> list[Path]:
    """Write the shipped templates (or those in `names`) into `folder`, creating it; an existing file is kept.
    Returns the files written. Raises ConfigError for a name that is not a shipped template."""
    wanted = [_known(n) for n in names] if names else prompts.names()
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in wanted:
        path = target / name
        if not path.exists():
            path.write_text(prompts.shipped(name), encoding="utf-8")
            written.append(path)
    return written


__all__ = ["Template", "applied", "check", "copy", "shipped_text", "templates", "variables"]
