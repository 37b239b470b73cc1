"""Configuration: defaults < YAML < --set < flags, derived sizes, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from personaloom.config import RunConfig, apply_overrides, build_config, dump_config
from personaloom.errors import ConfigError


def test_precedence(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("seed: 5\ngenerate: {candidates: 4, iterations: 2}\n", encoding="utf-8")
    cfg = build_config(path, ["generate.candidates=5"], {"generate.iterations": 1, "seed": None})
    assert (cfg.seed, cfg.generate.candidates, cfg.generate.iterations) == (5, 5, 1)


def test_pairs_scale_pairing_and_profiles() -> None:
    cfg = build_config(None, [], {"generate.pairs": 20})
    assert cfg.pair.max_pairs == 20 and cfg.profiles.profiles == 41
    pinned = build_config(None, ["pair.max_pairs=4", "profiles.profiles=9"], {"generate.pairs": 20})
    assert pinned.pair.max_pairs == 4 and pinned.profiles.profiles == 9
    assert RunConfig().generate.pairs == RunConfig().pair.max_pairs


def test_embedded_default_model_defaults() -> None:
    cfg = build_config()
    assert cfg.generate.temperature == 1.0 and cfg.profiles.nli == "none"
    assert build_config(None, ["generate.temperature=0.7"]).generate.temperature == 0.7
    assert build_config(None, ["profiles.nli=llm"]).profiles.nli == "llm"
    server = build_config(None, [], {"backend.kind": "openai"})
    assert server.generate.temperature is None and server.profiles.nli == "llm"
    other_gguf = build_config(None, [], {"backend.model": "/models/big.gguf"})
    assert other_gguf.generate.temperature is None and other_gguf.profiles.nli == "llm"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["generate.candidates=0"], "generate.candidates"),
        (["backend.kind=gpt"], "backend.kind"),
        (["nope"], "key=value"),
        (["critic.experts.humour.enabled=true"], "humour"),
        (["unknown_section.x=1"], "unknown_section"),
    ],
)
def test_bad_settings_name_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_config(None, overrides)


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\ngenerate: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+"):
        build_config(path)
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "missing.yaml")


def test_dump_has_no_secret_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-SENTINEL-123")
    cfg = build_config(None, [], {"backend.kind": "openai", "backend.model": "m"})
    text = dump_config(cfg)
    assert "sk-SENTINEL" not in text and "OPENAI_API_KEY" in text
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    assert build_config(path) == cfg


def test_apply_overrides_parses_yaml_values() -> None:
    data = apply_overrides({}, ["a.b=3", "a.c=[1, 2]", "d=hello"])
    assert data == {"a": {"b": 3, "c": [1, 2]}, "d": "hello"}
