"""Credentials out of everything personaloom shows or stores: the one place that redacts.

In: text (a message, an error, a URL) or JSON-like data (a config, stats.json, failures). Out: the same with
`***` for: the userinfo of any URL (`http://user:pass@host` -> `http://***@host`), the values of URL query
parameters named like credentials (api-key, token, sig, ...), header values named like credentials, and every
secret value personaloom has read (`remember`: API keys, basic-auth passwords, header values taken from the
environment) wherever it appears. Used by the config, stats, failures and card writers, the backends' reprs and
messages, doctor, and PersonaloomError's message (so the CLI's error line and Python's exceptions alike).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"
# Names of query parameters and headers whose values are credentials.
SECRET_NAME = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential|session|cookie", re.IGNORECASE)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
# Shorter values are not worth hiding and would mask ordinary words.
_MIN_SECRET = 8

_secrets: set[str] = set()
_lock = threading.Lock()


def remember(secret: str | None) -> None:
    """Redact `secret` (a key, a password, a header value) wherever it appears from now on, in this process."""
    if secret and len(secret) >= _MIN_SECRET:
        with _lock:
            _secrets.add(secret)


def redact_url(url: str) -> str:
    """`url` with its userinfo and credential-like query values masked; other text unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_NAME.search(k) for k, _ in pairs):
            query = "&".join(f"{quote(k)}={MASK if SECRET_NAME.search(k) else quote(v)}" for k, v in pairs)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """`text` with every URL's credentials and every remembered secret masked."""
    if not text:
        return text
    out = _URL.sub(lambda m: redact_url(m.group(0)), text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def redact_data(value: Any, headers: bool = False) -> Any:
    """JSON-like `value` with every string redacted (`redact`), and in a `headers` mapping the plain values of
    headers named like credentials (`X-Api-Key: abc`) masked; `{env: NAME}` references are kept (no secret)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: MASK if headers and isinstance(v, str) and SECRET_NAME.search(str(k))
                else redact_data(v, headers=k == "headers") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


__all__ = ["MASK", "redact", "redact_data", "redact_url", "remember"]
