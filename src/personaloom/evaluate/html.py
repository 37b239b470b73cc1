"""HTML building blocks of report.html: escaping, number formats, tables and embedded matplotlib figures.

In: values and already-escaped cells; matplotlib figures. Out: HTML strings (a figure as an inline base64
PNG, so the report stays one self-contained file).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

DATA_COLOUR = "#3b6ea5"
REF_COLOUR = "#d08a3c"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pct(x: Any, digits: int = 1) -> str:
    return f"{100 * float(x):.{digits}f}%" if isinstance(x, int | float) else "–"


def num(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return esc(x)


def table(header: list[str], rows: list[list[str]], left_cols: int = 1) -> str:
    """Cells are already-escaped HTML."""
    head = "".join(f'<th class="l">{h}</th>' if i < left_cols else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="l">{c}</td>' if i < left_cols else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<div class="fig"><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></div>'


def plt_headless() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless; never opens a window
    import matplotlib.pyplot as plt

    return plt
