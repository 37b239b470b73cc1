"""The API reference: HTML from the docstrings of what `import personaloom` exports (pdoc, offline), checked.

In: the installed package. Out: OUT_DIR (default build/docs) with personaloom.html and its search index; exit 1
with one line per problem when pdoc warned (an annotation it could not resolve, a missing module) or a
docstring names a `personaloom.X` that does not exist, so a broken reference fails `make test` (tests/test_api.py).

    python tools/api_docs.py [OUT_DIR]
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REFERENCE = re.compile(r"`(personaloom(?:\.\w+)+)`")


def _resolves(dotted: str) -> bool:
    """Whether `dotted` names a module or an attribute of one (personaloom.runs.Run.stats)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def _documented(obj: Any, where: str) -> Iterator[tuple[str, str]]:
    """(where, docstring) of `obj` and, for a class, of its own public members."""
    yield where, inspect.getdoc(obj) or ""
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if not name.startswith("_"):
                yield f"{where}.{name}", inspect.getdoc(member) or ""


def broken_references(module: Any) -> list[str]:
    """'where: `personaloom.X` does not exist' for each backticked reference in the docstrings of `module` and
    of the objects its `__all__` exports that does not resolve."""
    problems = []
    seen = [(module.__name__, inspect.getdoc(module) or "")]
    for name in getattr(module, "__all__", []):
        seen.extend(_documented(getattr(module, name), f"{module.__name__}.{name}"))
    for where, doc in seen:
        for dotted in REFERENCE.findall(doc):
            if not _resolves(dotted):
                problems.append(f"{where}: `{dotted}` does not exist")
    return problems


def build(out: Path) -> list[str]:
    """Write the reference into `out`; the problems found (empty when all is well)."""
    import pdoc
    import pdoc.render

    import personaloom

    pdoc.render.configure(docformat="markdown", show_source=False, footer_text=f"personaloom {personaloom.__version__}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc("personaloom", output_directory=out)
    problems = [f"pdoc: {w.message}" for w in caught if "pdoc" in Path(w.filename).parts]
    return problems + broken_references(personaloom)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/docs")
    problems = build(out)
    for line in problems:
        print(f"api docs: {line}", file=sys.stderr)
    if not problems:
        print(f"api docs: wrote {out / 'personaloom.html'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
