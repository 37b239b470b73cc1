"""The `personaloom` command line (typer). No logic here: each command resolves its options and calls
one library function. `main()` is the one place that turns exceptions into a one-line message and an
exit code (a traceback only with PERSONALOOM_DEBUG=1).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from personaloom.errors import PersonaloomError

app = typer.Typer(
    name="personaloom",
    help="Build faithful persona-based conversation datasets with LLMs (Generator-Critic framework).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML run configuration.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run directory (default: ./out).")]
SeedDataOpt = Annotated[
    str | None,
    typer.Option("--seed-data", help="Seed conversations (Persona-Chat, SPC CSV, HF JSON, JSONL) or a persona "
                 "collection (PersonaHub/FinePersonas descriptions, Nemotron-Personas records; JSONL, CSV, Parquet)."),
]
SeedFormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="Force the seed data's format: parlai, hf-json, spc-csv, jsonl, hf, "
                 "persona-descriptions or persona-records (default: detected)."),
]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="LLM backend: embedded (default), openai or fake.")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="GGUF path (embedded) or model name (openai).")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting: key=value (repeatable).")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Bypass the response cache.")]
CalibrateOpt = Annotated[
    bool, typer.Option("--calibrate", help="Measure every judge in use on labelled probes first (calibration.json).")
]
TargetKeptOpt = Annotated[
    int | None,
    typer.Option("--target-kept", help="Generate over pairs.jsonl until this many conversations are kept "
                 "(pair.max_pairs caps the pairs; --pairs/--iterations then do not apply)."),
]
BigFiveOpt = Annotated[
    bool | None,
    typer.Option("--big-five", help="Give profiles Big Five trait levels (sampled unless set in the config)."),
]
LanguageOpt = Annotated[
    str | None, typer.Option("--language", help="Generate natively in this language (BCP-47 code, e.g. fr, ru, ja).")
]
SessionsOpt = Annotated[
    int | None, typer.Option("--sessions", help="Sessions per pair, with memory between them (default 1).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default 0).")]
DecontaminateOpt = Annotated[
    list[str] | None,
    typer.Option("--decontaminate", help="A benchmark file (any readable format; repeatable): conversations sharing a "
                 "13-word run with one of its utterances are contaminated."),
]
PromptsOpt = Annotated[
    str | None,
    typer.Option("--prompts", help="Folder of templates replacing the shipped ones of the same name (prompts list)."),
]


def _flags(
    config: Path | None,
    out: Path | None,
    seed_data: str | None,
    backend: str | None,
    model: str | None,
    base_url: str | None,
    sets: list[str] | None,
    no_cache: bool,
    seed: int | None,
    **extra: Any,
) -> Any:
    from personaloom.config import build_config

    flags: dict[str, Any] = {
        "out": str(out) if out is not None else None,
        "seed_data": seed_data,
        "backend.kind": backend,
        "backend.model": model,
        "backend.base_url": base_url,
        "seed": seed,
        "cache": False if no_cache else None,
        **extra,
    }
    return build_config(config, sets or [], flags)


def _stop() -> Any:
    """The command line's stop: Ctrl-C once stops gracefully, twice exits at once."""
    from personaloom.stop import StopSignal

    return StopSignal()


def _feature_flags(big_five: bool | None, language: str | None, sessions: int | None) -> dict[str, Any]:
    return {"big_five.enabled": big_five, "language": language, "sessions.count": sessions}


@app.command()
def run(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    pairs: Annotated[int | None, typer.Option("--pairs", help="Pairs to generate for.")] = None,
    candidates: Annotated[int | None, typer.Option("--candidates", help="Candidates per pair.")] = None,
    iterations: Annotated[int | None, typer.Option("--iterations", help="Generator-Critic rounds.")] = None,
    target_kept: TargetKeptOpt = None,
    critic: Annotated[str | None, typer.Option("--critic", help="pairwise (default) or listwise.")] = None,
    executor: Annotated[str | None, typer.Option("--executor", help="local (default) or ray.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print expected calls/tokens; pay nothing.")] = False,
    price_in: Annotated[
        float | None, typer.Option("--price-in", help="Price per million prompt tokens (dry run, stats.json).")
    ] = None,
    price_out: Annotated[
        float | None, typer.Option("--price-out", help="Price per million completion tokens (default: --price-in).")
    ] = None,
    big_five: BigFiveOpt = None,
    language: LanguageOpt = None,
    sessions: SessionsOpt = None,
    seed_format: SeedFormatOpt = None,
    calibrate: CalibrateOpt = False,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    prompts: PromptsOpt = None,
    seed: SeedOpt = None,
    decontaminate: DecontaminateOpt = None,
) -> None:
    """Seed -> expand -> profiles -> pair -> K rounds of generate + critique -> dataset (less its duplicates and,
    with --decontaminate, its contaminated conversations)."""
    from personaloom import api

    cfg = _flags(
        config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
        **{
            "prompts.dir": prompts,
            "generate.pairs": pairs,
            "generate.candidates": candidates,
            "generate.iterations": iterations,
            "generate.target_kept": target_kept,
            "critic.mode": critic,
            "executor": executor,
            "seed_format": seed_format,
            "prices.prompt": price_in,
            "prices.completion": price_out,
            "decontaminate.paths": decontaminate or None,
            **_feature_flags(big_five, language, sessions),
        },
    )
    if dry_run:
        from personaloom.estimate import print_estimate

        print_estimate(cfg)
        return
    api.run(cfg, calibrate=calibrate, stop=_stop())


@app.command()
def expand(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    new_attributes: Annotated[
        int | None, typer.Option("--new-attributes", help="Target number of new attributes.")
    ] = None,
    seed_format: SeedFormatOpt = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    prompts: PromptsOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Query induction + persona bootstrapping: writes attributes.jsonl and expansion statistics."""
    from personaloom import api

    cfg = _flags(config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
                 **{"prompts.dir": prompts, "expand.new_attributes": new_attributes, "seed_format": seed_format})
    api.expand(cfg, stop=_stop())


@app.command()
def profiles(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    n_profiles: Annotated[int | None, typer.Option("--profiles", help="Profiles to build.")] = None,
    big_five: BigFiveOpt = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    prompts: PromptsOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Build consistent user profiles from attributes.jsonl: writes profiles.jsonl."""
    from personaloom import api

    cfg = _flags(config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
                 **{"prompts.dir": prompts, "profiles.profiles": n_profiles, "big_five.enabled": big_five})
    api.profiles(cfg, stop=_stop())


@app.command()
def pair(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    max_pairs: Annotated[int | None, typer.Option("--max-pairs", help="Most pairs to make.")] = None,
    keep_seed_pairs: Annotated[
        bool | None, typer.Option("--keep-seed-pairs/--no-keep-seed-pairs", help="Keep the seed data's pairs.")
    ] = None,
    big_five: BigFiveOpt = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    seed: SeedOpt = None,
) -> None:
    """Pair similar profiles from profiles.jsonl: writes pairs.jsonl."""
    from personaloom import api

    cfg = _flags(config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
                 **{"pair.max_pairs": max_pairs, "pair.keep_seed_pairs": keep_seed_pairs,
                    "big_five.enabled": big_five})
    api.pair(cfg, stop=_stop())


@app.command()
def generate(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    pairs: Annotated[int | None, typer.Option("--pairs", help="Pairs to generate for.")] = None,
    candidates: Annotated[int | None, typer.Option("--candidates", help="Candidates per pair.")] = None,
    iterations: Annotated[int | None, typer.Option("--iterations", help="Generator-Critic rounds.")] = None,
    target_kept: TargetKeptOpt = None,
    critic: Annotated[str | None, typer.Option("--critic", help="pairwise (default) or listwise.")] = None,
    big_five: BigFiveOpt = None,
    language: LanguageOpt = None,
    sessions: SessionsOpt = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    prompts: PromptsOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Generator + Critic rounds over pairs.jsonl: writes iterations/ and the dataset."""
    from personaloom import api

    cfg = _flags(
        config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
        **{
            "prompts.dir": prompts,
            "generate.pairs": pairs,
            "generate.candidates": candidates,
            "generate.iterations": iterations,
            "generate.target_kept": target_kept,
            "critic.mode": critic,
            **_feature_flags(big_five, language, sessions),
        },
    )
    api.generate(cfg, stop=_stop())


@app.command()
def evaluate(
    data: Annotated[str, typer.Option("--data", help="Run directory or dataset file to evaluate.")],
    reference: Annotated[
        str | None, typer.Option("--reference", help="Human-written reference data (any readable format).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where metrics.json and report.html go.")] = None,
    judge: Annotated[
        str, typer.Option("--judge", "--judge-backend", help="LLM judge: embedded, openai, fake or none.")
    ] = "embedded",
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Judge at most N conversations (metrics always cover all).")
    ] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    calibrate: CalibrateOpt = False,
    decontaminate: DecontaminateOpt = None,
) -> None:
    """Evaluate a dataset against human data: defects, diversity, hits@1, duplicates, contamination (with
    --decontaminate), Turing and faithfulness tests."""
    from personaloom.api import evaluate as run_evaluation
    from personaloom.evaluate.command import print_metrics

    started = time.perf_counter()
    result = run_evaluation(data, reference, out=out, judge=judge, model=model, base_url=base_url, limit=limit,
                            seed=seed, calibrate=calibrate, decontaminate=decontaminate or ())
    print_metrics(result.metrics)
    typer.echo(f"wrote {result.metrics_path} and {result.report_path} in {time.perf_counter() - started:.1f} s",
               err=True)


@app.command("calibrate")
def calibrate_judges(
    config: ConfigOpt = None,
    out: OutOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Conversations with personas to build probes from (default: seeds).")
    ] = None,
    reference: Annotated[
        str | None, typer.Option("--reference", help="Machine-written conversations of --data's user pairs (Turing).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Probes (pairs) per judge.", min=1)] = 10,
    critic: Annotated[str | None, typer.Option("--critic", help="pairwise (default) or listwise.")] = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    prompts: PromptsOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Measure every configured judge on labelled probes: accuracy, bias, kappa -> OUT/calibration.json."""
    from personaloom import api

    cfg = _flags(config, out, None, backend, model, base_url, sets, no_cache, seed,
                 **{"prompts.dir": prompts, "critic.mode": critic})
    api.calibrate(cfg, data=data, reference=reference, limit=limit)


@app.command()
def convert(
    src: Annotated[
        Path, typer.Argument(help="Input file (ParlAI text, HF JSON, SPC CSV, JSONL, Parquet) or datasets directory.")
    ],
    dst: Annotated[Path, typer.Argument(help="Output file or directory.")],
    to: Annotated[
        str | None, typer.Option("--to", help="jsonl, spc-csv, parlai or hf (default: from OUT's extension).")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Input format override: parlai, hf-json, spc-csv, jsonl, "
                                       "hf (a datasets directory or Parquet file).")
    ] = None,
    candidates: Annotated[
        int, typer.Option("--candidates", help="ParlAI output: distractor candidates per turn.")
    ] = 19,
    seed: Annotated[int, typer.Option("--seed", help="Seed for distractor sampling.")] = 0,
) -> None:
    """Convert between dataset formats."""
    from personaloom import api

    report = api.convert(src, dst, to=to, format=fmt, candidates=candidates, seed=seed)
    typer.echo(report)


@app.command()
def dedup(
    src: Annotated[str, typer.Argument(help="Conversations: any file the readers accept, or a datasets directory.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the kept conversations here (format from the extension or "
                                  "--to) and <name>.duplicates.jsonl beside it.")
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Estimated Jaccard similarity of word 5-grams that makes a near "
                            "duplicate.")
    ] = 0.7,
    decontaminate: DecontaminateOpt = None,
    ngram: Annotated[int, typer.Option("--ngram", help="Words a copied run must have (--decontaminate).")] = 13,
    fmt: Annotated[str | None, typer.Option("--format", help="Input format override (as convert).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Output format: jsonl, spc-csv, parlai or hf.")] = None,
) -> None:
    """Find (and with --out remove) exact and near-duplicate conversations, and with --decontaminate the ones
    that copy a benchmark's utterances."""
    from personaloom import api

    found = api.dedup(src, out, threshold=threshold, decontaminate=decontaminate or (), ngram=ngram, format=fmt,
                      to=to)
    if out is None:
        typer.echo(f"{src}: {found.describe(removed=False)}; {len(found.kept)} would be kept (--out to write them)")
    else:
        typer.echo(f"{src}: {found.describe()}; {len(found.kept)} kept, written to {out} (the ones removed listed in "
                   f"{found.listed_in(f'{out.stem}.')} beside it)")
    if out is None:
        for d in found.duplicates[:20]:
            typer.echo(f"  {d.id} duplicates {d.kept_id} ({d.kind}, similarity {d.similarity})")
        for c in found.contaminated[:20]:
            typer.echo(f"  {c.id} shares {c.ngram!r} with {c.source}")


@app.command()
def annotate(
    data: Annotated[str, typer.Option("--data", help="Run directory or dataset file.")],
    reference: Annotated[str | None, typer.Option("--reference", help="Human-written reference data.")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where annotations.sqlite goes (default: the run dir, or beside the file)."),
    ] = None,
    raters: Annotated[int, typer.Option("--raters", help="Raters per item (one link each).")] = 3,
    items: Annotated[int, typer.Option("--items", help="Items in all (half Turing, half faithfulness).")] = 20,
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    show_results: Annotated[bool, typer.Option("--results", help="Print the results so far and exit.")] = False,
    csv: Annotated[Path | None, typer.Option("--csv", help="With --results: also export answers as CSV.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for item selection.")] = 0,
) -> None:
    """Human-evaluation web app (Turing and faithfulness tests with real raters)."""
    from personaloom.annotate.command import annotate_command

    annotate_command(data, reference, out, raters, items, host, port, show_results, csv, seed)


@app.command()
def doctor(
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    sets: SetOpt = None,
) -> None:
    """Try each backend the configuration uses with one tiny request; one line each (exit 2 if any fails)."""
    from personaloom.doctor import doctor as run_doctor

    cfg = _flags(config, None, None, backend, model, base_url, sets, False, None)
    code = run_doctor(cfg)
    if code:
        raise typer.Exit(code)


prompts_app = typer.Typer(help="The prompt templates: list them, show one, copy them to a folder to edit.",
                          no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("list")
def prompts_list() -> None:
    """Each template: its name, the stages that render it and the variables it receives."""
    from personaloom.prompts.catalog import templates

    for t in templates():
        typer.echo(f"{t.name:<30} {','.join(t.stages) or '-':<22} {', '.join(t.variables) or '-'}")


@prompts_app.command("show")
def prompts_show(name: Annotated[str, typer.Argument(help="Template file name, e.g. generator.j2.")]) -> None:
    """Print a shipped template."""
    from personaloom.prompts.catalog import shipped_text

    typer.echo(shipped_text(name))


@prompts_app.command("copy")
def prompts_copy(
    folder: Annotated[Path, typer.Argument(help="Folder to copy into (created; existing files are kept).")],
    names: Annotated[list[str] | None, typer.Argument(help="Templates to copy (default: all).")] = None,
) -> None:
    """Copy the shipped templates into FOLDER to edit; use it with --prompts FOLDER."""
    from personaloom.prompts.catalog import copy

    written = copy(folder, names)
    typer.echo(f"wrote {len(written)} templates to {folder} (edit them, then --prompts {folder})")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Rebuild report.html for a run directory."""
    from personaloom.evaluate.suite import build_report

    typer.echo(f"wrote {build_report(run_dir)}")


def _click_errors() -> tuple[type[Exception], ...]:
    """Usage errors come from click, or from the copy of click that newer typer versions vendor."""
    found: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:
        pass
    else:
        found.append(VendoredClickException)
    return tuple(found)


_CLICK_ERRORS = _click_errors()


def main(argv: list[str] | None = None) -> None:
    debug = os.environ.get("PERSONALOOM_DEBUG") == "1"
    try:
        code = app(args=argv, standalone_mode=False)
    except PersonaloomError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"personaloom: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        typer.echo("personaloom: interrupted", err=True)
        sys.exit(130)
    except _CLICK_ERRORS as exc:  # usage errors: click prints its own short message
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        typer.echo("personaloom: interrupted (finished work is kept; re-run to resume)", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line unless debugging
        if debug:
            raise
        typer.echo(
            f"personaloom: internal error: {type(exc).__name__}: {exc} (set PERSONALOOM_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(3)
    if isinstance(code, int) and code:
        sys.exit(code)  # typer.Exit(code) from a command (standalone_mode=False returns it)


if __name__ == "__main__":
    main()
