"""`personaloom doctor`: can each backend the configuration uses answer? One line per backend.

In: a resolved RunConfig. Out: one `Check` per distinct backend — the run's own and each critic expert's
`backend` — printed as one line each: OK with the model's identity, tokens/s and what it supports
(structured output, seeds, what the server refused and personaloom adapted to), or what is wrong and the
setting or command that fixes it. `doctor()` returns the exit code: 0 when every backend is usable, 2
otherwise. The embedded model is tried in a child process (personaloom.native), so a crash inside
llama.cpp becomes a line here; its compiled CPU features are reported too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from personaloom.chat import ChatRequest, Message, SamplingParams
from personaloom.config import BackendConfig, RunConfig
from personaloom.console import make_console
from personaloom.errors import PersonaloomError


@dataclass
class Check:
    roles: list[str]
    ok: bool
    line: str


def backends_in_use(config: RunConfig) -> list[tuple[list[str], BackendConfig]]:
    """Distinct backend configurations with the roles that use them (main first)."""
    found: dict[str, tuple[list[str], BackendConfig]] = {}
    entries = [("main", config.backend)] + [
        (f"expert {name}", e.backend) for name, e in sorted(config.critic.experts.items())
        if e.enabled and e.backend is not None
    ]
    for role, bcfg in entries:
        assert bcfg is not None
        key = bcfg.model_dump_json()
        found.setdefault(key, ([], bcfg))[0].append(role)
    return list(found.values())


def check_embedded(bcfg: BackendConfig) -> tuple[bool, str]:
    from pathlib import Path

    from personaloom.backends.llamacpp import default_threads
    from personaloom.backends.models import default_gguf_path
    from personaloom.native import compiled_features, crash_message, missing, non_portable, probe

    try:
        path = Path(bcfg.model).expanduser() if bcfg.model else default_gguf_path()
        if not path.is_file():
            return False, f"{path}: GGUF model file not found (setting backend.model / --model)"
        features = compiled_features()
    except PersonaloomError as exc:
        return False, str(exc)
    except ImportError as exc:
        return False, f"llama-cpp-python is not installed ({exc}): see README, Set-up"
    built = "llama.cpp CPU features: " + (", ".join(features) or "none reported")
    result = probe(path, bcfg.n_threads or default_threads())
    if result.signal is not None:
        return False, f"{crash_message(result, path)} [{built}]"
    if not result.ok:
        return False, f"{path.name}: {result.message} [{built}]"
    warn = ""
    if missing(features):
        warn = f"; WARNING built for features this CPU lacks: {', '.join(missing(features))}"
    elif non_portable(features):
        warn = f"; note: CPU-specific build ({', '.join(non_portable(features))}), not portable"
    yes = {True: "yes", False: "no", None: "?"}
    supports = f"structured output {yes[result.structured]}, seed {yes[result.deterministic]}"
    return True, (f"{path.name}:{path.stat().st_size}, {result.tokens_per_s} tok/s, {supports}, context window "
                  f"{bcfg.n_ctx} (backend.n_ctx) [{built}]{warn}")


async def _server_check(bcfg: BackendConfig) -> tuple[bool, str]:
    from personaloom.backends import create_backend
    from personaloom.backends.openai_compat import OpenAIBackend
    from personaloom.replies import normalize

    backend = create_backend(bcfg)
    assert isinstance(backend, OpenAIBackend)
    try:
        plain = ChatRequest(
            messages=[Message(role="user", content="Say hello in five words.")],
            params=SamplingParams(max_tokens=32, seed=7), metadata={"stage": "doctor"},
        )
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        structured = plain.model_copy(update={
            "messages": [Message(role="user", content="Answer in JSON: is water wet?")], "json_schema": schema,
        })
        start = time.perf_counter()
        first = normalize((await backend.agenerate([plain]))[0], plain)
        elapsed = time.perf_counter() - start
        if not first.ok:
            return False, f"{first.error} (auth: {backend.auth_form})"
        second = normalize((await backend.agenerate([structured]))[0], structured)
        stated = await backend.context_window()
    finally:
        await backend.aclose()
    if bcfg.context_window is not None:
        window = f"context window {bcfg.context_window} (backend.context_window)"
    elif stated is not None:
        window = f"context window {stated[0]} ({stated[1]})"
    else:
        window = "context window not stated (learned from the first refusal, or set backend.context_window)"
    json_ok = "yes" if second.ok else f"no ({second.error})"
    tokens = f"{first.usage.completion_tokens / elapsed:.1f} tok/s" if first.usage.reported and elapsed > 0 else (
        "tok/s unknown (no usage reported)")
    adapted = backend.adaptations
    seed = "no (refused)" if any(" seed " in a for a in adapted) else "sent"
    notes = f"; adapted: {'; '.join(adapted)}" if adapted else ""
    return True, (f"{bcfg.model} at {backend.base_url} (auth: {backend.auth_form}), {tokens}, structured output "
                  f"{json_ok} via {backend.structured_mode}, seed {seed}, {window}{notes}")


def check(bcfg: BackendConfig) -> tuple[bool, str]:
    """(usable, one line) for one backend configuration."""
    if bcfg.kind == "embedded":
        return check_embedded(bcfg)
    if bcfg.kind == "fake":
        return True, f"scripted fake backend ({bcfg.model or 'fake-model'}): for tests and demos, not a model"
    try:
        return asyncio.run(_server_check(bcfg))
    except PersonaloomError as exc:
        return False, str(exc)


def doctor(config: RunConfig) -> int:
    """Check every backend in use; print one line each; 0 when all are usable, else 2."""
    console = make_console(stderr=False, soft_wrap=True)
    worst = 0
    for roles, bcfg in backends_in_use(config):
        ok, line = check(bcfg)
        label = f"{bcfg.kind} ({', '.join(roles)})"
        console.print(f"{'OK ' if ok else 'FAIL'} {label}: {line}", markup=False)
        worst = worst if ok else 2
    return worst
