"""Resume fingerprints: what a pipeline stage's output depends on, declared once per stage.

In: a stage's `StageInputs` (declared in the stage's own module: the RunConfig sections it reads, the
prompt templates it renders, which LLM roles it calls), the resolved RunConfig, the upstream stage's
fingerprint and the stage's own data inputs. Out: a 16-hex-digit fingerprint for state.json.

A stage is skipped on resume only when its fingerprint matches, so everything that can change its output
is in it: its settings, the identity of every backend it calls (kind, model — for a GGUF its file name
and size —, server URL, structured-output mode, extra body fields; not keys, timeouts or concurrency),
the text of its prompt templates, and its inputs. Changing the model and re-running a one-stage command
therefore recomputes that stage; the response cache still saves every call that is the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from personaloom.config import BackendConfig, RunConfig
from personaloom.errors import PersonaloomError
from personaloom.redact import redact_url


@dataclass(frozen=True)
class StageInputs:
    """What one stage reads: `settings` (RunConfig field names), `templates` (file-name globs in
    personaloom/prompts), `llm` ("none", "main": the run's backend, "critic": the run's backend and
    every enabled expert's own backend)."""

    name: str
    settings: tuple[str, ...]
    templates: tuple[str, ...] = ()
    llm: Literal["none", "main", "critic"] = "none"


# The backend fields that can change a reply (not the key's variable, timeouts, retries, concurrency).
_IDENTITY = ("kind", "model", "base_url", "structured_output", "extra_body", "n_ctx", "context_window")


def backend_identity(cfg: BackendConfig) -> dict[str, Any]:
    """The fields of `cfg` that decide what its model answers; the default GGUF as file name + size."""
    ident = cfg.model_dump(include=set(_IDENTITY), mode="json")
    if ident.get("context_window") is None:  # unset: run directories made before the setting keep their fingerprints
        ident.pop("context_window", None)
    if ident.get("base_url"):  # credentials in the URL decide nothing the model answers
        ident["base_url"] = redact_url(ident["base_url"])
    if cfg.kind == "embedded" and cfg.model is None:
        from personaloom.backends.models import default_gguf_path

        try:
            path = default_gguf_path()
            ident["model"] = f"{path.name}:{path.stat().st_size}"
        except (PersonaloomError, OSError):
            ident["model"] = "default"
    return ident


def backends_of(spec: StageInputs, config: RunConfig) -> list[dict[str, Any]]:
    if spec.llm == "none":
        return []
    found = [backend_identity(config.backend)]
    if spec.llm == "critic":
        for name, expert in sorted(config.critic.experts.items()):
            if expert.enabled and expert.backend is not None:
                found.append({"expert": name, **backend_identity(expert.backend)})
    return found


def registered_experts(spec: StageInputs) -> list[dict[str, str]]:
    """For a stage the Critic judges: the experts registered beyond the built-in ones (a notebook's, a plugin's),
    by name, kind, class and the source of the methods that decide their verdicts, so that adding or changing
    one recomputes the stage."""
    if spec.llm != "critic":
        return []
    import inspect

    from personaloom.records import ALL_EXPERTS
    from personaloom.stages.critic import registry

    found = []
    for name in registry.names():
        if name in ALL_EXPERTS:
            continue
        cls = type(registry.get(name))
        source = []
        for method in ("request", "parse", "applies"):
            try:
                source.append(inspect.getsource(getattr(cls, method)))
            except (OSError, TypeError):  # no source at hand (compiled, or gone): the class's name stands for it
                source.append(method)
        digest = hashlib.sha256("\n".join(source).encode("utf-8")).hexdigest()[:16]
        found.append({"name": name, "kind": cls.kind, "class": f"{cls.__module__}.{cls.__qualname__}",
                      "source": digest})
    return found


def template_texts(globs: tuple[str, ...]) -> dict[str, str]:
    """The text in effect (a `prompts.dir` replacement, else the shipped one) of each template matching `globs`."""
    from personaloom import prompts

    return {n: prompts.source(n) for n in prompts.names() if any(_match(n, g) for g in globs)}


def _match(name: str, glob: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, glob)


def fingerprint(spec: StageInputs, config: RunConfig, upstream: str | None, *inputs: Any) -> str:
    """The fingerprint of `spec`'s output for this config, upstream fingerprint and data inputs."""
    payload = {
        "stage": spec.name,
        "upstream": upstream,
        "settings": {name: _dump(getattr(config, name)) for name in spec.settings},
        "backends": backends_of(spec, config),
        "templates": template_texts(spec.templates),
        "inputs": [_dump(x) for x in inputs],
    }
    experts = registered_experts(spec)
    if experts:  # only then: run directories made before this field existed keep their fingerprints
        payload["experts"] = experts
    blob = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _dump(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value
