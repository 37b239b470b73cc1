"""The `personaloom` command line (typer). No logic here: each command resolves its options and calls
one library function. `main()` is the one place that turns exceptions into a one-line message and an
exit code (a traceback only with PERSONALOOM_DEBUG=1).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer

from personaloom.errors import NotBuiltError, PersonaloomError

app = typer.Typer(
    name="personaloom",
    help="Build faithful persona-based conversation datasets with LLMs (Generator-Critic framework).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML run configuration.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run directory (default: ./out).")]
SeedDataOpt = Annotated[
    Optional[str],
    typer.Option("--seed-data", help="Seed conversations/personas (Persona-Chat, SPC CSV, HF JSON, JSONL)."),
]
BackendOpt = Annotated[
    Optional[str], typer.Option("--backend", help="LLM backend: embedded (default), openai or fake.")
]
ModelOpt = Annotated[
    Optional[str], typer.Option("--model", help="GGUF path (embedded) or model name (openai).")
]
BaseUrlOpt = Annotated[
    Optional[str], typer.Option("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a setting: key=value (repeatable).")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Bypass the response cache.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (default 0).")]


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


@app.command()
def run(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    pairs: Annotated[Optional[int], typer.Option("--pairs", help="Pairs to generate for.")] = None,
    candidates: Annotated[Optional[int], typer.Option("--candidates", help="Candidates per pair.")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", help="Generator-Critic rounds.")] = None,
    critic: Annotated[Optional[str], typer.Option("--critic", help="pairwise (default) or listwise.")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local (default) or ray.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print expected calls/tokens; pay nothing.")] = False,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    seed: SeedOpt = None,
) -> None:
    """Seed -> expand -> profiles -> pair -> K rounds of generate + critique -> dataset."""
    from personaloom import pipeline

    cfg = _flags(
        config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
        **{
            "generate.pairs": pairs,
            "generate.candidates": candidates,
            "generate.iterations": iterations,
            "critic.mode": critic,
            "executor": executor,
        },
    )
    pipeline.run(cfg, until="all", dry_run=dry_run)


@app.command()
def expand(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    new_attributes: Annotated[
        Optional[int], typer.Option("--new-attributes", help="Target number of new attributes.")
    ] = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    seed: SeedOpt = None,
) -> None:
    """Query induction + persona bootstrapping: writes attributes.jsonl and expansion statistics."""
    from personaloom import pipeline

    cfg = _flags(config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
                 **{"expand.new_attributes": new_attributes})
    pipeline.run(cfg, until="expand")


@app.command()
def profiles(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    n_profiles: Annotated[Optional[int], typer.Option("--profiles", help="Profiles to build.")] = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    seed: SeedOpt = None,
) -> None:
    """Build consistent user profiles from attributes.jsonl: writes profiles.jsonl."""
    from personaloom import pipeline

    cfg = _flags(config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
                 **{"profiles.profiles": n_profiles})
    pipeline.run(cfg, until="profiles")


@app.command()
def pair(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    max_pairs: Annotated[Optional[int], typer.Option("--max-pairs", help="Most pairs to make.")] = None,
    keep_seed_pairs: Annotated[
        Optional[bool], typer.Option("--keep-seed-pairs/--no-keep-seed-pairs", help="Keep the seed data's pairs.")
    ] = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    seed: SeedOpt = None,
) -> None:
    """Pair similar profiles from profiles.jsonl: writes pairs.jsonl."""
    from personaloom import pipeline

    cfg = _flags(config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
                 **{"pair.max_pairs": max_pairs, "pair.keep_seed_pairs": keep_seed_pairs})
    pipeline.run(cfg, until="pair")


@app.command()
def generate(
    config: ConfigOpt = None,
    out: OutOpt = None,
    seed_data: SeedDataOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    pairs: Annotated[Optional[int], typer.Option("--pairs", help="Pairs to generate for.")] = None,
    candidates: Annotated[Optional[int], typer.Option("--candidates", help="Candidates per pair.")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", help="Generator-Critic rounds.")] = None,
    critic: Annotated[Optional[str], typer.Option("--critic", help="pairwise (default) or listwise.")] = None,
    sets: SetOpt = None,
    no_cache: NoCacheOpt = False,
    seed: SeedOpt = None,
) -> None:
    """Generator + Critic rounds over pairs.jsonl: writes iterations/ and the dataset."""
    from personaloom import pipeline

    cfg = _flags(
        config, out, seed_data, backend, model, base_url, sets, no_cache, seed,
        **{
            "generate.pairs": pairs,
            "generate.candidates": candidates,
            "generate.iterations": iterations,
            "critic.mode": critic,
        },
    )
    pipeline.run(cfg, until="generate", only="generate")


@app.command()
def evaluate(
    data: Annotated[str, typer.Option("--data", help="Run directory or dataset file to evaluate.")],
    reference: Annotated[
        Optional[str], typer.Option("--reference", help="Human-written reference data (any readable format).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where metrics.json and report.html go.")] = None,
    judge: Annotated[
        Optional[str], typer.Option("--judge", "--judge-backend", help="embedded, openai, fake or none.")
    ] = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Judge at most N conversations.")] = None,
    seed: SeedOpt = None,
) -> None:
    """Evaluate a dataset against human data: defects, diversity, hits@1, Turing and faithfulness tests."""
    raise NotBuiltError("evaluate is not built yet")


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Input file (ParlAI text, HF JSON, SPC CSV, JSONL).")],
    dst: Annotated[Path, typer.Argument(help="Output file or directory.")],
    to: Annotated[
        Optional[str], typer.Option("--to", help="jsonl, spc-csv, parlai or hf (default: from OUT's extension).")
    ] = None,
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="Input format override: parlai, hf-json, spc-csv, jsonl.")
    ] = None,
    candidates: Annotated[
        int, typer.Option("--candidates", help="ParlAI output: distractor candidates per turn.")
    ] = 19,
    seed: Annotated[int, typer.Option("--seed", help="Seed for distractor sampling.")] = 0,
) -> None:
    """Convert between dataset formats."""
    from personaloom.io.convert import convert as do_convert

    report = do_convert(src, dst, to=to, fmt=fmt, candidates=candidates, seed=seed)
    typer.echo(report)


@app.command()
def annotate(
    data: Annotated[str, typer.Option("--data", help="Run directory or dataset file.")],
    reference: Annotated[Optional[str], typer.Option("--reference", help="Human-written reference data.")] = None,
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Human-evaluation web app (Turing and faithfulness tests with real raters)."""
    raise NotBuiltError("annotate is not built yet")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Rebuild report.html for a run directory."""
    raise NotBuiltError("report is not built yet")


def main(argv: list[str] | None = None) -> None:
    debug = os.environ.get("PERSONALOOM_DEBUG") == "1"
    try:
        app(args=argv, standalone_mode=False)
    except PersonaloomError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"personaloom: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        typer.echo("personaloom: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
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


if __name__ == "__main__":
    main()
