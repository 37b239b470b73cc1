"""How the `openai` backend authenticates, decided once from its settings, before any request.

In: a `BackendConfig` and the environment. Out: `Auth` — the URL to send to (user info taken out), the URL to
show (redacted), the headers and query parameters every request carries, whether the client's own bearer header
is left out, and the form's name for doctor. Every secret read is remembered by personaloom.redact, so it is
masked wherever it might appear. Forms, in order:

- HTTP basic: user info in `backend.base_url` (`http://user:password@host/v1`, percent-decoded) or
  `backend.basic_auth_env` (a variable holding `user:password`), sent as `Authorization: Basic ...` (a proxy in
  front of the server); it replaces the bearer header.
- Azure OpenAI classic deployments: with `backend.api_version`, the key of `backend.api_key_env` goes in the
  `api-key` header and `api-version` in the query (the URL is the deployment's, `.../openai/deployments/NAME`).
  Azure's v1 API (`https://NAME.openai.azure.com/openai/v1/`) takes the key as a bearer: the default form.
- Bearer: the key of `backend.api_key_env` (`OPENAI_API_KEY`), or a placeholder for a loopback server.
- `backend.headers` on top of any of these: plain values, or `{env: NAME}` read from the environment.

A URL that is not http(s)://host[:port]/... raises BackendError naming backend.base_url (exit 2), a variable that
is not set ConfigError naming its setting (exit 1): both before any stage pays.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from personaloom.config import BackendConfig, FromEnv
from personaloom.errors import BackendError, ConfigError
from personaloom.redact import redact_url, remember

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# A placeholder for loopback servers that need no key (llama.cpp, vLLM without --api-key).
LOCAL_PLACEHOLDER_KEY = "sk-local-no-key"


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in {"localhost", "::1"} or host.startswith("127.")


@dataclass(frozen=True)
class Auth:
    """See the module docstring. `key`: what the client sends as its bearer (unless `omit_bearer`)."""

    url: str
    shown: str
    key: str
    form: str
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    omit_bearer: bool = False


def _env(name: str, setting: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set (setting {setting})")
    remember(value)
    return value


def check_url(url: str) -> tuple[str, str | None]:
    """(`url` without its user info, the user info) ; BackendError naming backend.base_url when `url` is not
    http(s)://host[:port][/path] — checked statically, so a typo costs no request and no retry."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        raise BackendError(f"setting backend.base_url: {shown!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"setting backend.base_url: {shown!r} is not an http(s) URL with a host (expected "
                           "e.g. http://127.0.0.1:8000/v1)")
    if parts.query or parts.fragment:
        raise BackendError(f"setting backend.base_url: {shown!r} has a query or fragment; give the API's base "
                           "(e.g. .../v1), and Azure's api-version as backend.api_version")
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = host if port is None or f":{port}" in host else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/"), (userinfo or None)


def resolve_auth(cfg: BackendConfig) -> Auth:
    """The Auth for `cfg` (see the module docstring); BackendError names a bad setting."""
    url, userinfo = check_url(cfg.base_url or DEFAULT_BASE_URL)
    shown = redact_url(cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
    headers: dict[str, str] = {}
    for name, value in cfg.headers.items():
        headers[name] = _env(value.env, f"backend.headers.{name}") if isinstance(value, FromEnv) else value
    basic = None
    if userinfo is not None:
        user, _, password = userinfo.partition(":")
        basic, setting = f"{unquote(user)}:{unquote(password)}", "user info in backend.base_url"
        remember(unquote(password))
    elif cfg.basic_auth_env:
        basic, setting = _env(cfg.basic_auth_env, "backend.basic_auth_env"), "backend.basic_auth_env"
        if ":" not in basic:
            raise ConfigError(f"{setting}: {cfg.basic_auth_env} should hold user:password")
        remember(basic.partition(":")[2])
    key = os.environ.get(cfg.api_key_env) or ""
    remember(key)
    if basic is not None:
        token = base64.b64encode(basic.encode("utf-8")).decode("ascii")
        remember(token)
        headers.setdefault("Authorization", f"Basic {token}")
        return Auth(url, shown, key or LOCAL_PLACEHOLDER_KEY, "basic", headers)
    if cfg.api_version is not None:
        if not key:
            raise ConfigError(f"environment variable {cfg.api_key_env} is not set: export the Azure OpenAI key "
                               f"for {shown} (setting backend.api_key_env names the variable)")
        headers.setdefault("api-key", key)
        return Auth(url, shown, key, "azure api-key", headers, {"api-version": cfg.api_version}, omit_bearer=True)
    if not key:
        if not (is_loopback(url) or headers):
            raise ConfigError(f"environment variable {cfg.api_key_env} is not set: export the API key for {shown} "
                               "(setting backend.api_key_env names the variable)")
        key = LOCAL_PLACEHOLDER_KEY
    form = "bearer" if key != LOCAL_PLACEHOLDER_KEY else "none"
    if headers:
        form += f" + headers {', '.join(sorted(headers))}"
    return Auth(url, shown, key, form, headers)


__all__ = ["DEFAULT_BASE_URL", "LOCAL_PLACEHOLDER_KEY", "Auth", "check_url", "is_loopback", "resolve_auth"]
