"""Where personaloom's messages, tables and the terminal progress display are printed: rich consoles.

In: nothing. Out: `console` (stderr, shared by the modules that report), and `make_console` for one with other
settings. In a Jupyter kernel, plain text on the kernel's stderr stream: neither rich's Jupyter mode (each print
a display whose plain-text part keeps its ANSI codes, saved in the notebook) nor a terminal (ipykernel sets
FORCE_COLOR, which rich reads as one).
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell): where a terminal display cannot work."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def make_console(*, stderr: bool = True, **settings: Any) -> Console:
    """A rich Console (`settings` as rich's), printing to stderr (or stdout), never as Jupyter displays."""
    if in_notebook():
        settings.setdefault("force_terminal", False)
    return Console(stderr=stderr, highlight=False, force_jupyter=False, **settings)


console = make_console()

__all__ = ["console", "in_notebook", "make_console"]
