"""`personaloom annotate`: prepare the items once, print the per-rater links, serve; or print results."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from personaloom.annotate import default_out_dir, load_session, prepare, results, results_csv, serve


def annotate_command(
    data: str,
    reference: str | None,
    out: Path | None,
    raters: int,
    items: int,
    host: str,
    port: int,
    show_results: bool,
    csv: Path | None,
    seed: int,
) -> None:
    out_dir = out if out is not None else default_out_dir(data)
    if show_results:
        session = load_session(out_dir)
        typer.echo(json.dumps(results(session), indent=2))
        if csv is not None:
            typer.echo(f"wrote {results_csv(session, csv)} answers to {csv}")
        return
    session = prepare(data, reference, out_dir, raters=raters, items=items, seed=seed)
    base = f"http://{host}:{port}"
    typer.echo(
        f"{session.turing_items} AI-detection + {session.faithfulness_items} faithfulness items, "
        f"{len(session.raters)} raters; answers in {session.db_path}"
    )
    for name, url in session.rater_links(base):
        typer.echo(f"  {name}: {url}")
    typer.echo(f"  results: {session.results_link(base)}")
    serve(session, host=host, port=port)
