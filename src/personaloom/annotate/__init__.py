"""Human evaluation with real raters: the paper's AI-detection (Turing) and faithfulness tests.

In: a dataset (run directory or file) and optionally human reference conversations. Out: a small web
app raters answer in, an SQLite store of their answers, and the scores (lose/win/tie, precision/recall,
Fleiss' kappa, time per item) as a dict, an HTML page and a CSV file.

    session = prepare(data, reference, default_out_dir(data), raters=3, items=20, seed=0)
    for name, link in session.rater_links("http://127.0.0.1:8765"): print(name, link)
    serve(session)                      # until Ctrl-C
    results(session); results_csv(session, "annotations.csv")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from personaloom.annotate.stats import csv_text, fleiss_kappa, results, results_csv
from personaloom.annotate.store import DB_NAME, Rater, Session, default_out_dir, load_session, prepare
from personaloom.annotate.tasks import negate

if TYPE_CHECKING:
    from starlette.applications import Starlette


# The web parts import starlette/uvicorn only when used: results and CSV export work without them.
def create_app(session: Session) -> Starlette:
    from personaloom.annotate.app import create_app as _create_app

    return _create_app(session)


def serve(session: Session, host: str = "127.0.0.1", port: int = 8765) -> None:
    from personaloom.annotate.app import serve as _serve

    _serve(session, host=host, port=port)


__all__ = [
    "DB_NAME",
    "Rater",
    "Session",
    "create_app",
    "csv_text",
    "default_out_dir",
    "fleiss_kappa",
    "load_session",
    "negate",
    "prepare",
    "results",
    "results_csv",
    "serve",
]
