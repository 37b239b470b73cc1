"""The `openai` backend: any OpenAI-compatible chat server (vLLM, SGLang, Ollama, llama.cpp, OpenAI).

In: `BackendConfig` (base_url, model, api_key_env, concurrency, timeout_s, max_retries, retry_base_s,
retry_max_s, structured_output, reask) and `ChatRequest`s. Out: one `ChatResult` per request.

Transport faults (429, 408/409, 5xx, timeouts, dropped connections, truncated or invalid JSON bodies)
are retried here with exponential backoff and jitter, honouring Retry-After up to 120 s (a longer one is a
quota window: the request fails at once, saying so); the `openai` client's own retries are off so there is
one retry policy. A request that still fails becomes `ChatResult.error`, and so does one whose retry was
due after the user asked the run to stop. A server that refuses connections after all retries, or a 429
saying the account's quota or credit is used up, raises `BackendError` naming the URL and the cause:
nothing else can succeed, so the run stops (finished work is already in the cache).

Structured output: response_format json_schema (OpenAI, vLLM, SGLang, Ollama), then json_object + schema
(llama-cpp-python's server), then the schema in the prompt; a server's 4xx on one form moves to the
next, and the form that worked is remembered. Replies that are not valid JSON of the schema are re-asked
a bounded number of times.

What to send is learnt from the server's behaviour, never from its host name: a 4xx whose message names
a request field we sent (top_k, seed, stop, top_p, temperature; max_tokens, which OpenAI's reasoning
models want as max_completion_tokens) gets the request again without it, and the backend remembers that
for the rest of the run and says so once on stderr (`adaptations` lists what it learnt). Errors carry the
server's own words: the HTTP status and the first line of its error message.

Authentication (bearer, basic, Azure's api-key, gateway headers) is decided by backends/auth.py from the
environment; no credential appears in reprs, messages or errors (personaloom.redact). A client-side error (TLS
set-up, a request the HTTP client refuses) is a BackendError at once, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import random
import re
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import openai

from personaloom.aio import gather_all
from personaloom.backends import serverinfo
from personaloom.backends.auth import resolve_auth
from personaloom.backends.base import MAX_RETRY_AFTER_S, STOP_POLL_S, Backend
from personaloom.chat import ChatRequest, ChatResult, Message, Usage
from personaloom.config import BackendConfig
from personaloom.errors import BackendError, ConfigError
from personaloom.prompts import render
from personaloom.redact import redact

Mode = Literal["json_schema", "json_object", "prompt"]
_MODES: tuple[Mode, ...] = ("json_schema", "json_object", "prompt")
_RETRY_STATUS = {408, 409, 425, 429}
# A 429 (or 402/403) with one of these error types or codes is not a rate limit: the account's quota, credit or
# spend limit is used up, and retrying will not bring access back (OpenAI's error-code guide).
# How long a server that says it is still loading its model is waited for (seconds, over the whole run), and
# how often it is asked again meanwhile.
LOADING_WAIT_S = 600.0
_LOADING_POLL_S = 2.0
_QUOTA_CODES = {"insufficient_quota", "credit_balance_exhausted", "organization_spend_limit_exceeded",
                "project_spend_limit_exceeded", "billing_hard_limit_reached", "billing_not_active"}
# Request fields a strict server may refuse and that can be left out (the server's default applies).
_DROPPABLE = ("top_k", "seed", "stop", "top_p", "temperature", "max_tokens")
_REFUSAL = re.compile(r"unrecogni[sz]ed|unsupported|not supported|unknown|not permitted|extra|not allowed|"
                      r"cannot find|remove|invalid (?:param|arg|field|key)|does not support")


class _Retryable(Exception):
    """A transport-level failure worth another try (the message is key-free)."""

    def __init__(self, message: str, retry_after: float | None = None, refused: str | None = None,
                 overload: bool = False, loading: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # Nothing reachable at the URL: how ("connection refused", "ClientConnectorDNSError", ...).
        self.refused = refused
        # 429, 503 or a timeout: the server has more than it can take (the executor lowers its bound).
        self.overload = overload
        # llama.cpp's server answers 503 "Loading model" until its model is loaded: not up yet, not overloaded.
        self.loading = loading


class _Rejected(Exception):
    """A 4xx answer: retrying the same request will not help (unless it names a field we can drop)."""

    def __init__(self, message: str, status: int, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def server_message(exc: openai.APIStatusError) -> tuple[str, str | None]:
    """(the server's own error message on one line, at most 300 characters; the request field it names).

    Servers put it in `{"error": {"message", "param"}}` (OpenAI, vLLM, Azure), `{"error": "..."}`
    (Ollama), `{"message": ...}` / `{"detail": ...}` (gateways, FastAPI), or plain text."""
    body: Any = exc.body
    param: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            param = inner.get("param")
            body = inner.get("message") or inner.get("detail") or inner.get("msg") or json.dumps(inner)
        else:
            body = inner
    text = str(body) if body else ""
    if not text:
        with contextlib.suppress(Exception):
            text = exc.response.text
    # One line: a validation error's first line ("1 validation error:") says nothing by itself.
    line = " ".join(text.split()) or exc.message
    return line[:300], (str(param) if isinstance(param, str) and param else None)


def quota_exhausted(exc: openai.APIStatusError) -> bool:
    """Whether an error answer says the account's quota, credit or spend limit is used up (OpenAI's
    `{"error": {"type": "insufficient_quota", "code": ...}}`), which no retry can fix."""
    body: Any = exc.body
    inner = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        return False
    return bool({str(inner.get("type") or ""), str(inner.get("code") or "")} & _QUOTA_CODES)


def _content_text(content: Any) -> str:
    """`message.content` as text: a string, null, or (some gateways) a list of {"type": "text", "text"} parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def rejected_field(message: str, param: str | None, sent: dict[str, Any]) -> str | None:
    """The droppable field of `sent` that a 4xx message objects to, if it names one."""
    candidates = [k for k in (*_DROPPABLE, "max_completion_tokens") if k in sent]
    lowered = message.lower()
    # Only a refusal of the field itself ("'max_tokens' is too large" is about its value).
    if not _REFUSAL.search(lowered):
        return None
    if param in candidates:
        return param
    for name in candidates:
        if re.search(rf"(?<![a-z_]){re.escape(name)}(?![a-z_])", lowered):
            return name
    return None


# ---------------------------------------------------------------- JSON schema checking (a small subset)

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def schema_problem(value: Any, schema: dict[str, Any], where: str = "$") -> str | None:
    """First way `value` breaks `schema` (type, enum, properties, required, items, sizes, anyOf) or None."""
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if isinstance(s, dict)]
            if options and all(schema_problem(value, s, where) for s in options):
                return f"{where} matches none of the allowed forms"
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        ok = False
        for name in names:
            types = _TYPES.get(str(name))
            if types is None:
                ok = True  # a type we do not check
            elif isinstance(value, types) and not (isinstance(value, bool) and name in ("integer", "number")):
                ok = True
        if not ok:
            return f"{where} should be of type {expected}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} should be one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{where} should be {schema['const']!r}"
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                return f"{where} misses the field {name!r}"
        for name, sub in props.items():
            if name in value and isinstance(sub, dict):
                problem = schema_problem(value[name], sub, f"{where}.{name}")
                if problem:
                    return problem
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"{where} has unexpected fields {extra}"
    if isinstance(value, list):
        if "minItems" in schema and len(value) < int(schema["minItems"]):
            return f"{where} needs at least {schema['minItems']} items"
        if "maxItems" in schema and len(value) > int(schema["maxItems"]):
            return f"{where} allows at most {schema['maxItems']} items"
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                problem = schema_problem(item, items, f"{where}[{i}]")
                if problem:
                    return problem
    return None


def extract_json(text: str) -> Any:
    """The first JSON value in `text` (bare, or inside prose or a ``` fence); ValueError if none."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for i, ch in enumerate(stripped):
        if ch in "{[":
            try:
                value, _ = decoder.raw_decode(stripped, i)
            except ValueError:
                continue
            return value
    raise ValueError("no JSON value found")


def check_structured(text: str, schema: dict[str, Any]) -> tuple[str | None, str | None]:
    """(normalized JSON text, None) when `text` holds JSON valid for `schema`, else (None, problem)."""
    try:
        value = extract_json(text)
    except ValueError:
        return None, "not JSON"
    problem = schema_problem(value, schema)
    if problem:
        return None, problem
    return json.dumps(value, ensure_ascii=False), None


# ---------------------------------------------------------------- the backend


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def connection_failure(exc: BaseException) -> tuple[str, str]:
    """What a failed connection was: ("refused" | "timeout" | "client" | "other", a short detail).

    "refused": nothing could be reached there (refused, unknown host); "timeout": the server took too long;
    "client": the client cannot make the request at all (TLS certificate or set-up, a URL it refuses).
    The official client's aiohttp transport maps every aiohttp connection error onto httpx's ConnectTimeout
    (so openai raises APITimeoutError for a refused or dropped connection too): when an aiohttp error is in
    the chain, it decides. With httpx, a ConnectError means unreachable (refused or DNS), APITimeoutError a
    timeout.
    """
    chain = _causes(exc)
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None:  # certificate or TLS set-up: the same on every try
        return "client", f"TLS: {getattr(tls, 'verify_message', None) or tls.reason or tls}"
    if any(type(e).__name__ in ("UnsupportedProtocol", "InvalidURL", "LocalProtocolError") for e in chain):
        return "client", next(f"{type(e).__name__}: {e}" for e in chain
                              if type(e).__name__ in ("UnsupportedProtocol", "InvalidURL", "LocalProtocolError"))
    native = [e for e in chain if type(e).__module__.split(".")[0] == "aiohttp"]
    if native:
        root = native[-1]
        names = {c.__name__ for c in type(root).__mro__}
        if isinstance(root, TimeoutError):
            return "timeout", type(root).__name__
        if "ClientConnectorError" in names:
            refused = any(isinstance(e, ConnectionRefusedError) for e in [*chain, getattr(root, "os_error", None)])
            return "refused", "connection refused" if refused else type(root).__name__
        return "other", type(root).__name__
    if any(isinstance(e, ConnectionRefusedError) or type(e).__name__ == "ConnectError" for e in chain):
        return "refused", "connection refused"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", "timeout"
    cause = exc.__cause__
    return "other", type(cause).__name__ if cause is not None else "connection error"


def _finite(text: Any) -> float | None:
    """A header's value as a finite number, or None (absent, not a number, inf or nan)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000.0)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend(Backend):
    kind = "openai"
    silent_cut = "maybe"

    def __init__(self, cfg: BackendConfig) -> None:
        if not cfg.model:
            raise ConfigError(
                "setting backend.model: the openai backend needs the server's model name (--model)"
            )
        self.cfg = cfg
        self.__auth = resolve_auth(cfg)
        # Shown in every message, repr and endpoint name: credentials redacted (personaloom.redact).
        self.base_url = self.__auth.shown
        self.max_concurrency = cfg.concurrency
        # Learnt from the server's 4xx answers (see the module docstring), for this run.
        self._dropped: set[str] = set()
        self._max_tokens_field = "max_tokens"
        self.adaptations: list[str] = []
        self._mode: Mode = "prompt" if cfg.structured_output == "prompt" else "json_schema"
        self._client: openai.AsyncOpenAI | None = None
        self._tokenizer = serverinfo.Tokenizer(str(cfg.model), serverinfo.root_of(self.__auth.url))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jitter = random.Random()
        self._loading_since: float | None = None  # when the server first said it was loading its model
        # How the backend waits between retries (a test injects a recorder instead of the clock).
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @property
    def model_id(self) -> str:
        return str(self.cfg.model)

    @property
    def structured_mode(self) -> str:
        """The structured-output form this server accepted last (json_schema, json_object or prompt)."""
        return self._mode

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.cfg.model!r})"

    # -- plumbing

    @property
    def auth_form(self) -> str:
        """How this backend authenticates (bearer, basic, azure api-key, none; + headers), never the secret."""
        return self.__auth.form

    @staticmethod
    def _scrub(text: str) -> str:
        return redact(text)

    def _ensure_client(self) -> openai.AsyncOpenAI:
        # The HTTP connection pool belongs to one event loop; `generate()` makes a new loop per call, so
        # rebuild it when the loop changes.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            auth = self.__auth
            self._client = openai.AsyncOpenAI(
                base_url=auth.url, api_key=auth.key, max_retries=0, timeout=self.cfg.timeout_s,
                http_client=self._transport(), default_headers=auth.headers or None,
                default_query=auth.query or None,
            )
            self._loop = loop
        return self._client

    async def context_window(self) -> tuple[int, str] | None:
        """The model's context window where the server says it (backends/serverinfo.py: a num_ctx in
        extra_body, vLLM's /v1/models, llama.cpp's /props, Ollama's /api/ps and /api/show); None where it does
        not. Azure's classic deployments have none of these: not asked."""
        if self.__auth.omit_bearer:
            return None
        found, ollama = await serverinfo.window(self._ensure_client(), str(self.cfg.model),
                                                serverinfo.root_of(self.__auth.url), self.cfg.extra_body)
        if ollama:
            self.silent_cut = "ollama"
        return found

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """The server's own count of `request`'s prompt tokens (its /tokenize: backends/serverinfo.py), or None."""
        if self.__auth.omit_bearer:
            return None
        return await self._tokenizer.count(self._ensure_client(), request)

    def _transport(self) -> Any:
        """The official client's aiohttp transport (backend.transport), or None for its httpx default (also
        when aiohttp is not installed: the client raises RuntimeError then)."""
        make = getattr(openai, "DefaultAioHttpClient", None)  # openai >= 1.84
        if self.cfg.transport != "aiohttp" or make is None:
            return None
        try:
            return make(timeout=self.cfg.timeout_s)
        except RuntimeError:
            return None

    def _backoff(self, attempt: int) -> float:
        cap = min(self.cfg.retry_max_s, self.cfg.retry_base_s * 2.0 ** (attempt - 1))
        return cap * (0.5 + 0.5 * self._jitter.random())

    def _body(self, request: ChatRequest, messages: list[Message], mode: Mode | None) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {"model": self.cfg.model, "messages": [m.model_dump() for m in messages]}
        optional: dict[str, Any] = {
            "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k, "seed": p.seed,
            "stop": list(p.stop) or None, "max_tokens": p.max_tokens,
        }
        for name, value in optional.items():
            if value is None or name in self._dropped:
                continue
            if name == "max_tokens" and self._max_tokens_field != "max_tokens":
                name = self._max_tokens_field
            body[name] = value
        if request.json_schema is not None and mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": request.json_schema, "strict": False},
            }
        elif request.json_schema is not None and mode == "json_object":
            body["response_format"] = {"type": "json_object", "schema": request.json_schema}
        for key, value in self.cfg.extra_body.items():
            body.setdefault(key, value)
        return body

    def _adapt(self, rejected: _Rejected, body: dict[str, Any]) -> bool:
        """Learn from a 4xx that names a field we sent: leave it out from now on. True if learnt."""
        field = rejected.field
        learnt = field in self._dropped or (field == "max_tokens" and self._max_tokens_field != "max_tokens")
        if field is None or field not in body or learnt:
            return False
        if field == "max_tokens":
            self._max_tokens_field = "max_completion_tokens"
            what = "max_tokens (sending max_completion_tokens instead)"
        elif field in _DROPPABLE and field != "max_completion_tokens":
            self._dropped.add(field)
            what = f"{field} (leaving it out)"
        else:
            return False
        note = f"{self.base_url} rejects {what}: {rejected}"
        self.adaptations.append(note)
        print(f"personaloom: {note}; sending every later request this way for this run", file=sys.stderr,
              flush=True)
        return True

    async def _post(self, body: dict[str, Any]) -> tuple[list[str], list[str], Usage, list[str]]:
        """One HTTP call. Raises _Retryable / _Rejected; returns (texts, finish reasons, usage, reasoning).

        Uses the client's generic `post` with the JSON body as built here (as `extra_body` would send
        it) and parses the reply itself: the typed `chat.completions.create` spends ~1.5 ms of CPU per
        call transforming parameters and building response models, which caps a 2-core machine at a
        few hundred requests/s. `content` may be null or empty (reasoning models): replies.normalize
        decides what that means; reasoning fields are passed on for it.
        """
        client = self._ensure_client()
        options: dict[str, Any] = {"timeout": self.cfg.timeout_s}
        if self.__auth.omit_bearer:  # Azure's api-key form: the client's bearer header would be taken for Entra ID
            options["headers"] = {"Authorization": openai.Omit()}
        try:
            raw = await client.post("/chat/completions", cast_to=str, body=body, options=options)  # type: ignore[call-overload]
        except openai.APIConnectionError as exc:  # and its subclass APITimeoutError
            kind, detail = connection_failure(exc)
            if kind == "client":
                raise BackendError(self._client_side(detail)) from None
            if kind == "timeout":
                raise _Retryable(f"timed out after {self.cfg.timeout_s:g} s", overload=True) from None
            raise _Retryable(f"connection failed ({detail})", refused=detail if kind == "refused" else None) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            said, param = server_message(exc)
            message = self._scrub(f"HTTP {status} from {self.base_url}: {said}")
            if "response_format" in body and "response_format" in said:
                # Some servers (llama-cpp-python's) answer an unsupported response_format with a 500.
                raise _Rejected(message, status) from None
            if status in (402, 403, 429) and quota_exhausted(exc):
                raise BackendError(
                    f"{message}: the account's quota or credit is used up, and retrying will not help; add "
                    "credit or raise the limit, then re-run the same command (finished calls are cached)"
                ) from None
            if status == 503 and "loading model" in said.lower():
                raise _Retryable(message, loading=True) from None
            if status in _RETRY_STATUS or status >= 500:
                after = _retry_after(exc.response.headers)
                raise _Retryable(message, after, overload=status in (429, 503)) from None
            raise _Rejected(message, status, rejected_field(said, param, body)) from None
        except openai.APIResponseValidationError as exc:
            raise _Retryable(f"invalid response body ({type(exc).__name__})") from None
        except (ValueError, TypeError) as exc:
            # Raised before anything was sent: the HTTP client refuses the request as configured (aiohttp: "Cannot
            # combine AUTHORIZATION header with AUTH argument or credentials encoded in URL"). No retry can help.
            raise BackendError(self._client_side(f"{type(exc).__name__}: {exc}")) from None
        try:
            data = json.loads(raw)
        except ValueError as exc:  # a 200 whose body is cut short or is not JSON
            raise _Retryable(f"invalid response body ({type(exc).__name__})") from None
        try:
            choices = sorted(data["choices"], key=lambda c: int(c.get("index") or 0))
            messages = [c.get("message") or {} for c in choices]
            texts = [_content_text(m.get("content")) for m in messages]
            reasoning = [str(m.get("reasoning_content") or m.get("reasoning") or "") for m in messages]
            finishes = [str(c.get("finish_reason") or "stop") for c in choices]
            usage = data.get("usage")
            tokens = (
                Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0))
                if isinstance(usage, dict) and usage.get("prompt_tokens") is not None
                else Usage(reported=False)
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise _Retryable(f"malformed response ({type(exc).__name__})") from None
        if not texts:
            raise _Retryable("response has no choices")
        return texts, finishes, tokens, reasoning

    def _client_side(self, detail: str) -> str:
        return self._scrub(f"the HTTP client cannot send requests to {self.base_url} as configured ({detail}): "
                           "check backend.base_url, backend.headers and backend.transport; nothing was sent")

    async def _post_with_retries(
        self, request: ChatRequest, messages: list[Message], mode: Mode | None
    ) -> tuple[list[str], list[str], Usage, list[str], int]:
        """One request, retried on transport faults; a 4xx naming a droppable field is re-sent once
        without it (`_adapt`). Raises _Failed, _Rejected or BackendError (server unreachable)."""
        attempt = 0
        while True:
            body = self._body(request, messages, mode)
            try:
                texts, finishes, usage, reasoning = await self._post(body)
                return texts, finishes, usage, reasoning, attempt
            except _Rejected as exc:
                # Another request may have learnt this already: then the body is different now.
                if exc.field is not None and (self._adapt(exc, body) or self._body(request, messages, mode) != body):
                    continue
                raise
            except _Retryable as exc:
                if exc.loading and await self._wait_for_model():
                    continue  # not a retry: the server was not up yet
                too_long = exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER_S
                if exc.overload and self.on_overload is not None:
                    self.on_overload(None if too_long else exc.retry_after)
                attempt += 1
                if too_long:
                    raise _Failed(
                        f"{exc}: the server asks to wait {exc.retry_after:.0f} s before another try (Retry-After), "
                        f"longer than personaloom waits ({MAX_RETRY_AFTER_S:.0f} s): a quota or rate window; "
                        "re-run the same command later (finished calls are cached)", attempt - 1
                    ) from None
                if attempt > self.cfg.max_retries:
                    if exc.refused:
                        raise BackendError(
                            f"cannot reach the OpenAI-compatible server at {self.base_url} "
                            f"({exc.refused}, {attempt} tries): is it running? "
                            "Check --base-url (setting backend.base_url)"
                        ) from None
                    raise _Failed(f"{exc} (after {attempt} tries)", attempt - 1) from None
                delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
                if not await self._pause(delay):
                    raise _Failed(f"{exc} (not retried: the run is stopping)", attempt - 1) from None

    async def _wait_for_model(self) -> bool:
        """The server says it is loading its model: wait a poll interval and say so once; False once
        LOADING_WAIT_S have passed since it first said so (then it is a failure like any other) or the user
        asked to stop."""
        now = time.monotonic()
        if self._loading_since is None:
            self._loading_since = now
            print(f"personaloom: {self.base_url} is still loading its model; waiting for it "
                  f"(up to {LOADING_WAIT_S:.0f} s)", file=sys.stderr, flush=True)
        if now - self._loading_since >= LOADING_WAIT_S:
            return False
        return await self._pause(_LOADING_POLL_S)

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds` before a retry; False as soon as the user asks the run to stop (checked every
        0.25 s), so that a graceful stop never waits out a backoff or a Retry-After."""
        if self.stopping is None:
            await self.sleep(seconds)
            return True
        while seconds > 0:
            if self.stopping():
                return False
            step = min(seconds, STOP_POLL_S)
            await self.sleep(step)
            seconds -= step
        return not self.stopping()

    # -- one request

    def _modes(self, request: ChatRequest) -> list[Mode | None]:
        if request.json_schema is None:
            return [None]
        if self.cfg.structured_output == "response_format":
            return ["json_schema"]
        if self.cfg.structured_output == "prompt":
            return ["prompt"]
        return list(_MODES[_MODES.index(self._mode) :])

    @staticmethod
    def _with_prompt_schema(request: ChatRequest) -> list[Message]:
        schema = json.dumps(request.json_schema, ensure_ascii=False)
        messages = list(request.messages)
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].role == "user":
                content = render("backend_json.j2", prompt=messages[i].content, schema=schema)
                messages[i] = Message(role="user", content=content)
                return messages
        return [*messages, Message(role="user", content=render("backend_json.j2", prompt="", schema=schema))]

    async def _complete(self, request: ChatRequest) -> ChatResult:
        start = time.perf_counter()
        rejected: _Rejected | None = None
        for mode in self._modes(request):
            messages = self._with_prompt_schema(request) if mode == "prompt" else list(request.messages)
            try:
                texts, finishes, usage, reasoning, retries = await self._post_with_retries(request, messages, mode)
            except _Rejected as exc:
                rejected = exc
                continue  # maybe the server refuses this structured-output form: try the next one
            except _Failed as exc:
                return ChatResult(error=str(exc), retries=exc.retries, latency_s=time.perf_counter() - start)
            if mode is not None and mode != self._mode and _MODES.index(mode) > _MODES.index(self._mode):
                self._mode = mode  # remember: the server rejected the stronger forms
            reasks = 0
            if request.json_schema is not None:
                try:
                    texts, finishes, usage, reasks, retries = await self._ensure_structured(
                        request, messages, mode, texts, finishes, usage, retries
                    )
                except _Failed as exc:
                    return ChatResult(error=str(exc), retries=exc.retries, latency_s=time.perf_counter() - start)
            finish = "length" if "length" in finishes else finishes[0]
            return ChatResult(
                texts=texts, usage=usage, finish_reason=finish, retries=retries, reasks=reasks, reasoning=reasoning,
                latency_s=time.perf_counter() - start,
            )
        assert rejected is not None
        return ChatResult(error=str(rejected), latency_s=time.perf_counter() - start)

    async def _ensure_structured(
        self,
        request: ChatRequest,
        messages: list[Message],
        mode: Mode | None,
        texts: list[str],
        finishes: list[str],
        usage: Usage,
        retries: int,
    ) -> tuple[list[str], list[str], Usage, int, int]:
        """Normalize each text to valid JSON of the schema, re-asking for those that are not.
        Returns (texts, finish reasons, usage of all the calls, re-asks, transport retries so far + theirs);
        raises _Failed when a re-ask fails in transport."""
        from personaloom.replies import split_reasoning

        assert request.json_schema is not None
        schema = request.json_schema
        schema_text = json.dumps(schema, ensure_ascii=False)
        reasks = 0
        prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        texts, finishes = list(texts), list(finishes)
        for i, text in enumerate(texts):
            # A reasoning model's draft JSON inside <think> is not its answer: judge what follows it.
            good, problem = check_structured(split_reasoning(text)[1], schema)
            history = list(messages)
            for _ in range(self.cfg.reask):
                if good is not None:
                    break
                reask = render("backend_json_reask.j2", problem=problem, schema=schema_text)
                history += [Message(role="assistant", content=text), Message(role="user", content=reask)]
                try:
                    new_texts, new_finishes, new_usage, _, tries = await self._post_with_retries(
                        request, history, mode
                    )
                except _Failed as exc:
                    # A transport failure (a 503, a timeout) says nothing about the reply: the request
                    # fails, uncached, so that a re-run asks again instead of keeping the invalid text.
                    raise _Failed(f"the reply was not valid JSON of the schema ({problem}) and asking again "
                                  f"failed: {exc}", retries + exc.retries) from None
                except _Rejected:
                    break  # the server refuses the re-ask itself (e.g. too long): keep the raw reply
                reasks += 1
                retries += tries
                prompt_tokens += new_usage.prompt_tokens
                completion_tokens += new_usage.completion_tokens
                text, finishes[i] = new_texts[0], new_finishes[0]
                good, problem = check_structured(split_reasoning(text)[1], schema)
            # Still not valid after the re-asks: keep the raw text; the stage records a parse Failure.
            texts[i] = good if good is not None else text
        total = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, reported=usage.reported)
        return texts, finishes, total, reasks, retries

    async def agenerate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """All at once: the executor bounds how many it hands over (backend.concurrency per endpoint)."""
        return await gather_all(self._complete(r) for r in requests)

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        async def go() -> list[ChatResult]:
            try:
                return await self.agenerate(requests)
            finally:
                await self.aclose()  # the connections belong to this loop, which ends here

        return asyncio.run(go())

    async def aclose(self) -> None:
        """Close the HTTP connections of the current event loop; the backend stays usable (a later call
        opens new ones)."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.close()


class _Failed(Exception):
    """All retries spent on one request (becomes ChatResult.error)."""

    def __init__(self, message: str, retries: int) -> None:
        super().__init__(message)
        self.retries = retries
