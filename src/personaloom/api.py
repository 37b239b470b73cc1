"""The Python API: what `import personaloom` offers, and what every CLI command calls.

In: a configuration — a `RunConfig`, a mapping of settings, a YAML path or nothing — plus keyword overrides
(see `configure`), and for the data operations files or Python objects. Out: a `Run` (personaloom.runs) for the
pipeline operations, an `Evaluation`, calibration results, conversations. Works from a script, a notebook cell,
inside a running event loop and from a worker thread (personaloom.runner); a kernel interrupt, Ctrl-C or a
cancelled task stops a run gracefully: the calls in flight are cached, what was kept is written, and
RunStopped (with `.run`, the partial Run) is raised; calling again with the same `out` resumes. Every error
raised is a `PersonaloomError` whose message is the line the CLI prints.

    import personaloom as pl
    run = pl.run(out="runs/demo", backend="fake", pairs=3)
    run.stats.conversations, run.stats.total.calls
    ds = run.to_hf()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from personaloom.config import RunConfig, load_yaml, resolve_config, set_setting
from personaloom.errors import ConfigError, InputError
from personaloom.records import Conversation
from personaloom.runs import Run
from personaloom.stop import RunStopped, StopSignal

if TYPE_CHECKING:
    from personaloom.release import Screening

ConfigLike = RunConfig | Mapping[str, Any] | str | os.PathLike[str] | None

# Keyword shortcuts, as the CLI's flags: run(pairs=100) is generate.pairs=100.
SHORTCUTS = {
    "pairs": "generate.pairs", "candidates": "generate.candidates", "iterations": "generate.iterations",
    "target_kept": "generate.target_kept", "model": "backend.model", "base_url": "backend.base_url",
    "new_attributes": "expand.new_attributes", "max_pairs": "pair.max_pairs",
    "keep_seed_pairs": "pair.keep_seed_pairs", "price_in": "prices.prompt", "price_out": "prices.completion",
}
# A section given a plain value sets its main field: run(backend="fake") is backend.kind="fake".
SECTION_VALUES = {"backend": "backend.kind", "critic": "critic.mode", "profiles": "profiles.profiles",
                  "sessions": "sessions.count", "big_five": "big_five.enabled", "prompts": "prompts.dir"}


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, into)
    else:
        into[prefix] = value


def _setting_key(key: str, value: Any) -> str:
    if key in SHORTCUTS:
        return SHORTCUTS[key]
    if key in SECTION_VALUES and not isinstance(value, Mapping | BaseModel):
        return SECTION_VALUES[key]
    top = key.split(".", 1)[0]
    if top not in RunConfig.model_fields:
        from difflib import get_close_matches

        near = get_close_matches(key, [*RunConfig.model_fields, *SHORTCUTS], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown setting {key!r}{hint}; sections: {', '.join(RunConfig.model_fields)}; "
                          f"shortcuts: {', '.join(SHORTCUTS)}")
    return key


def configure(config: ConfigLike = None, /, **overrides: Any) -> RunConfig:
    """A validated RunConfig from `config` (a RunConfig, a mapping of settings, a YAML file's path, or None for
    the defaults) and `overrides`, highest first. An override is a setting (`seed=1`, `generate={"pairs": 3}`,
    a dotted key `**{"critic.mode": "listwise"}`), a section with a plain value (`backend="fake"` sets
    backend.kind; `critic`: mode; `profiles`: profiles; `sessions`: count; `big_five`: enabled; `prompts`: dir)
    or a CLI-style shortcut (`pairs`, `candidates`, `iterations`, `target_kept`, `model`, `base_url`, `new_attributes`,
    `max_pairs`, `keep_seed_pairs`, `price_in`, `price_out`). Sizes the user left unset follow from the pairs,
    as on the command line. ConfigError names the bad setting."""
    source: Path | None = None
    data: dict[str, Any] = {}
    given: dict[str, Any] = {}
    if isinstance(config, RunConfig):
        data = config.model_dump(mode="json", exclude_unset=True)
    elif isinstance(config, Mapping):
        given = dict(config)
    elif config is not None:
        source = Path(config)
        data = load_yaml(source)
    for key, value in [*given.items(), *((_setting_key(k, v), v) for k, v in overrides.items())]:
        flat: dict[str, Any] = {}
        _flatten(key, value, flat)
        for dotted, leaf in flat.items():
            set_setting(data, dotted, leaf)
    return resolve_config(data, source)


def _seed_file(seed_data: Any, out: Path) -> str:
    """`seed_data` as a path the readers take: a path as it is; Python objects written into the run directory
    (seed_data.jsonl, or seed_data.parquet for a DataFrame / datasets.Dataset), so that resume fingerprints and
    config.yaml see them like any file."""
    from personaloom.fsutil import atomic_write_text, ensure_dir

    if isinstance(seed_data, str | os.PathLike):
        return os.fspath(seed_data)
    ensure_dir(out)
    if callable(getattr(seed_data, "to_parquet", None)):  # a pandas DataFrame or a datasets.Dataset
        target = out / "seed_data.parquet"
        tmp = out / ".seed_data.parquet.tmp"
        seed_data.to_parquet(str(tmp))
        os.replace(tmp, target)
        return str(target)
    items = list(seed_data) if isinstance(seed_data, Iterable) else None
    if not items:
        raise InputError("seed_data: expected a path, a non-empty list (persona attributes, personas as lists of "
                         "attributes, Conversations or records), a pandas DataFrame or a datasets.Dataset; got "
                         f"{type(seed_data).__name__}{' (empty)' if items == [] else ''}")
    import json

    lines: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, Conversation):
            lines.append(item.model_dump_json())
        elif isinstance(item, str) or (isinstance(item, Sequence) and all(isinstance(a, str) for a in item)):
            persona = [item] if isinstance(item, str) else list(item)
            lines.append(Conversation(id=f"seed-persona-{i:05d}", user1_persona=persona, user2_persona=[],
                                      turns=[], source="seed").model_dump_json())
        elif isinstance(item, Mapping):
            lines.append(json.dumps(dict(item), ensure_ascii=False, default=str))
        else:
            raise InputError(f"seed_data[{i}]: a {type(item).__name__}; expected a persona attribute (str), a "
                             "persona (list of str), a Conversation or a record (dict)")
    target = out / "seed_data.jsonl"
    atomic_write_text(target, "\n".join(lines) + "\n")
    return str(target)


def _prepared(config: ConfigLike, out: str | os.PathLike[str] | None, seed_data: Any,
              overrides: dict[str, Any]) -> RunConfig:
    if out is not None:
        overrides["out"] = os.fspath(out)
    cfg = configure(config, **overrides)
    if seed_data is not None:
        cfg = cfg.model_copy(update={"seed_data": _seed_file(seed_data, Path(cfg.out))})
    return cfg


def _pipeline(cfg: RunConfig, until: str, only: str | None, calibrate: bool, stop: StopSignal,
              progress: bool | None) -> Callable[[], Coroutine[Any, Any, Run]]:
    async def go() -> Run:
        from personaloom.pipeline import execute

        try:
            await execute(cfg, until, only, calibrate, stop, progress)
        except RunStopped as exc:
            exc.run = Run(Path(cfg.out))
            raise
        return Run(Path(cfg.out))

    return go


def _sync(cfg: RunConfig, until: str, only: str | None, calibrate: bool, stop: StopSignal | None,
          progress: bool | None) -> Run:
    from personaloom.runner import run_sync

    stop = stop if stop is not None else StopSignal(exit_at_once=False)
    return run_sync(_pipeline(cfg, until, only, calibrate, stop, progress), stop)


def run(config: ConfigLike = None, /, *, out: str | os.PathLike[str] | None = None, seed_data: Any = None,
        progress: bool | None = None, calibrate: bool = False, stop: StopSignal | None = None,
        **overrides: Any) -> Run:
    """The whole pipeline (expand -> profiles -> pair -> K Generator-Critic rounds -> dataset, report) into the
    run directory `out` (default: the config's, ./out); re-running on the same `out` resumes and pays only
    for what is not cached.

    `config` and `overrides`: see `configure`. `seed_data`: a path any reader takes, or Python objects — a
    list of persona attributes (str), of personas (lists of str), of `Conversation`s or of records (dicts in
    personaloom's, SPC's or a persona collection's fields), a pandas DataFrame or a `datasets.Dataset` with
    personaloom's or Synthetic-Persona-Chat's columns (or a persona collection's). `progress`: None shows a
    display where one can work (a terminal, a notebook), True always, False never. `calibrate`: measure the
    judges first (calibration.json). `stop`: a StopSignal whose `request()` (from any thread) stops the run
    gracefully.

    Returns the `Run`. Raises RunStopped (its `.run` is the partial Run) when stopped, ConfigError,
    InputError, OutputError or BackendError (exit codes 1 and 2 on the command line) otherwise."""
    cfg = _prepared(config, out, seed_data, overrides)
    return _sync(cfg, "all", None, calibrate, stop, progress)


async def arun(config: ConfigLike = None, /, *, out: str | os.PathLike[str] | None = None, seed_data: Any = None,
               progress: bool | None = None, calibrate: bool = False, stop: StopSignal | None = None,
               **overrides: Any) -> Run:
    """`run`, awaitable: the run goes on in a worker thread, so the caller's event loop is never blocked.
    Cancelling the awaiting task stops the run gracefully (then CancelledError is raised); cancelling it again
    stops it at once."""
    from personaloom.runner import run_async

    cfg = _prepared(config, out, seed_data, overrides)
    stop = stop if stop is not None else StopSignal(exit_at_once=False)
    return await run_async(_pipeline(cfg, "all", None, calibrate, stop, progress), stop)


def expand(config: ConfigLike = None, /, *, out: str | os.PathLike[str] | None = None, seed_data: Any = None,
           progress: bool | None = None, stop: StopSignal | None = None, **overrides: Any) -> Run:
    """Query induction + persona bootstrapping (DESIGN.md §1 steps 1-2): attributes.jsonl, expansion.json
    (the paper's Table 1). Arguments as `run`."""
    return _sync(_prepared(config, out, seed_data, overrides), "expand", None, False, stop, progress)


def profiles(config: ConfigLike = None, /, *, out: str | os.PathLike[str] | None = None,
             progress: bool | None = None, stop: StopSignal | None = None, **overrides: Any) -> Run:
    """Consistent user profiles from `out`'s attributes.jsonl (step 3): profiles.jsonl. Arguments as `run`."""
    return _sync(_prepared(config, out, None, overrides), "profiles", "profiles", False, stop, progress)


def pair(config: ConfigLike = None, /, *, out: str | os.PathLike[str] | None = None, progress: bool | None = None,
         stop: StopSignal | None = None, **overrides: Any) -> Run:
    """Pairs of similar profiles from `out`'s profiles.jsonl (step 4): pairs.jsonl. Arguments as `run`."""
    return _sync(_prepared(config, out, None, overrides), "pair", "pair", False, stop, progress)


def generate(config: ConfigLike = None, /, *, out: str | os.PathLike[str] | None = None,
             progress: bool | None = None, stop: StopSignal | None = None, **overrides: Any) -> Run:
    """Generator-Critic rounds over `out`'s pairs.jsonl (steps 5-7): iterations/ and the dataset. Arguments as
    `run`."""
    return _sync(_prepared(config, out, None, overrides), "generate", "generate", False, stop, progress)


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` wrote: `metrics` (metrics.json's content: defects, distinct-n, hits@1, judge tests, ...),
    and the paths of metrics.json and report.html."""

    metrics: dict[str, Any]
    out: Path

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.json"

    @property
    def report_path(self) -> Path:
        return self.out / "report.html"


def evaluate(data: str | os.PathLike[str] | Run, reference: str | os.PathLike[str] | Run | None = None, *,
             out: str | os.PathLike[str] | None = None, judge: str = "embedded", model: str | None = None,
             base_url: str | None = None, limit: int | None = 20, seed: int = 0, calibrate: bool = False,
             decontaminate: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = ()) -> Evaluation:
    """Evaluate a run directory or dataset file against human-written `reference` data (DESIGN.md §1 step 8):
    format defects, distinct-n, tf-idf hits@1, near-duplicates (personaloom.dedup) and, with a judge (`embedded`,
    `openai`, `fake`; `none` for none), the Turing, faithfulness and toxicity tests on `limit` conversations.
    `decontaminate`: benchmark files whose utterances the data must not reproduce (reported, never dropped:
    metrics["contamination"], contamination.jsonl). metrics.json and report.html go to `out` (default: the run
    directory, or ./eval). InputError for a missing file."""
    from personaloom.evaluate.command import aevaluate
    from personaloom.runner import run_sync

    def path(x: str | os.PathLike[str] | Run | None) -> str | None:
        return None if x is None else str(x.out if isinstance(x, Run) else os.fspath(x))

    data_path = path(data)
    assert data_path is not None
    where = None if out is None else Path(out)
    benchmarks = _paths(decontaminate)
    metrics, out_dir = run_sync(lambda: aevaluate(data_path, path(reference), where, judge, model, base_url, limit,
                                                  seed, calibrate, benchmarks))
    return Evaluation(metrics, out_dir)


def calibrate(config: ConfigLike = None, /, *, out: str | os.PathLike[str] | None = None,
              data: str | os.PathLike[str] | None = None, reference: str | os.PathLike[str] | None = None,
              limit: int = 10, **overrides: Any) -> dict[str, dict[str, Any]]:
    """Measure every judge the configuration uses on labelled probes (accuracy with a 95% Wilson interval,
    chance, position and length bias, kappa, calibrated weight) -> `out`/calibration.json; the results keyed
    by judge. `data`: conversations with personas to build probes from (default: the shipped seeds);
    `reference`: machine-written conversations of `data`'s user pairs (the Turing judge)."""
    from personaloom.calibrate.command import calibrate as measure
    from personaloom.prompts import catalog

    cfg = _prepared(config, out, None, overrides)
    with catalog.applied(cfg.prompts.dir):
        return measure(cfg, Path(cfg.out), None if data is None else os.fspath(data),
                       None if reference is None else os.fspath(reference), limit)


def read(path: str | os.PathLike[str], format: str | None = None) -> list[Conversation]:
    """The conversations of a file or datasets directory in any format the readers know (parlai, hf-json,
    spc-csv, jsonl, hf; detected unless `format` is given). InputError names the file and line."""
    from personaloom.io import read_conversations

    return read_conversations(Path(path), format)


def write(conversations: Iterable[Conversation], path: str | os.PathLike[str], *, to: str | None = None,
          candidates: int = 19, seed: int = 0) -> int:
    """Write conversations as jsonl, spc-csv, parlai (with `candidates` seeded distractors per turn) or hf (a
    datasets directory); `to` defaults from the path's extension. The number written."""
    from personaloom.io.convert import write_conversations

    return write_conversations(list(conversations), Path(path), to=to, candidates=candidates, seed=seed)


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str | None = None,
            format: str | None = None, candidates: int = 19, seed: int = 0) -> str:
    """Read `src`, write it to `dst` (see `read` and `write`); the one-line summary the CLI prints."""
    from personaloom.io.convert import convert as do_convert

    return do_convert(Path(src), Path(dst), to=to, fmt=format, candidates=candidates, seed=seed)


def dedup(src: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, threshold: float = 0.7,
          shingle: int = 5, decontaminate: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = (),
          ngram: int = 13,
          format: str | None = None, to: str | None = None) -> Screening:
    """Duplicates and (with `decontaminate`: reference files) contaminated conversations of `src`, any file the
    readers accept (`format` to override detection): a `personaloom.release.Screening` (`.duplicates`,
    `.contaminated`, `.summary`, `.kept`). With `out`, the kept conversations are written there (format `to`, or
    from its extension, as `write`), and the lists beside it (<out>.duplicates.jsonl, <out>.contaminated.jsonl).
    `threshold`: estimated Jaccard similarity of word-`shingle` sets at or above which two conversations are near
    duplicates (personaloom.dedup); `ngram`: the words a copied run must have (personaloom.decontaminate).
    InputError for an unreadable file, ConfigError for a setting out of range."""
    from personaloom.io.convert import write_conversations
    from personaloom.io.readers import read_conversations
    from personaloom.release import screen

    settings = resolve_config({"dedup": {"threshold": threshold, "shingle": shingle}, "decontaminate": {
        "paths": _paths(decontaminate), "ngram": ngram}})
    found = screen(read_conversations(Path(src), format), settings.dedup, settings.decontaminate)
    if out is not None:
        target = Path(out)
        write_conversations(list(found.kept), target, to=to, title=f"{Path(src).stem} (deduplicated)",
                            sources=[os.fspath(src)])
        found.write(target.parent, prefix=f"{target.stem}.")
    return found


def _paths(given: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """One path or several, as strings (a str is one path, never its characters)."""
    return [os.fspath(given)] if isinstance(given, str | os.PathLike) else [os.fspath(p) for p in given]


def load(out: str | os.PathLike[str]) -> Run:
    """An existing run directory as a `Run`; InputError when it holds no run."""
    return Run.load(os.fspath(out))


__all__ = ["Evaluation", "arun", "calibrate", "configure", "convert", "dedup", "evaluate", "expand", "generate",
           "load", "pair", "profiles", "read", "run", "write"]
