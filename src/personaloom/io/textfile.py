"""Read an input file as text, turning every way it can be unusable into one InputError.

In: a path. Out: its content as str (UTF-8, a leading BOM dropped). Missing file, a directory, an
unreadable file, non-UTF-8 bytes (with the line they are on) and an empty file each raise InputError
naming the file (and line).
"""

from __future__ import annotations

from pathlib import Path

from personaloom.errors import InputError

BOM = "\ufeff"


def read_bytes(path: str | Path) -> bytes:
    p = Path(path)
    if p.is_dir():
        raise InputError("is a directory, expected a file", p)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", p) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", p) from None


def decode(data: bytes, path: str | Path) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})", path, line
        ) from None
    return text.removeprefix(BOM)


def read_text(path: str | Path) -> str:
    """The file's text; InputError if it is missing, a directory, not UTF-8, or empty."""
    text = decode(read_bytes(path), path)
    if not text.strip():
        raise InputError("empty file", path)
    return text


def lines_of(text: str) -> list[str]:
    """Physical lines. Only "\\n" ends a line (str.splitlines would also split on U+2028 etc.)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]
