"""The one exception hierarchy of personaloom.

Everything the library raises on purpose derives from PersonaloomError. The CLI (cli.py) is the one
place that turns these into a one-line message on stderr and an exit code; any other exception is a
bug and shows a traceback only with PERSONALOOM_DEBUG=1.
"""

from __future__ import annotations

from pathlib import Path

from personaloom.redact import redact


class PersonaloomError(Exception):
    """Base class. `exit_code` is what the CLI exits with. The message never shows a credential (redacted)."""

    exit_code = 1

    def __str__(self) -> str:
        return redact(super().__str__())


class InputError(PersonaloomError):
    """Bad input data: names the file and, where known, the line or row."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(f"{where}{message}")


class ConfigError(PersonaloomError):
    """A bad setting: names the key (and the config file when there is one)."""


class OutputError(PersonaloomError):
    """The output directory cannot be written (read-only, out of space, ...)."""


class BackendError(PersonaloomError):
    """An LLM backend cannot be used at all (unreachable server, missing model file, ...)."""

    exit_code = 2
