"""Every way users authenticate, end to end: `personaloom run` with one pair against loopback servers that require
basic auth (from the URL's user info, or from backend.basic_auth_env), a bearer key, Azure's classic api-key +
api-version, and a gateway's custom header; then a scan of the whole run directory (cache.sqlite included), stdout
and stderr finds no secret. A misconfigured URL fails at once, naming the setting, with no request sent."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from personaloom.backends.openai_compat import OpenAIBackend
from personaloom.chat import ChatRequest, Message, SamplingParams
from personaloom.config import BackendConfig
from personaloom.errors import BackendError
from personaloom.redact import redact, redact_data, redact_url, remember
from pipeline_server import cli_env, demo_server

ONE_PAIR = ("--pairs", "1", "--iterations", "1", "--candidates", "2", "--set", "expand.new_attributes=2",
            "--set", "expand.bootstrap_steps=0", "--set", "expand.max_clusters_for_questions=2",
            "--set", "profiles.profiles=4")
Require = Callable[[str, dict[str, str]], str | None]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def header_is(name: str, value: str, absent: tuple[str, ...] = ()) -> Require:
    def require(target: str, headers: dict[str, str]) -> str | None:
        if headers.get(name) != value:
            return f"missing or wrong {name}"
        for other in absent:
            if other in headers:
                return f"unexpected {other}"
        return None

    return require


def run_against(tmp_path: Path, require: Require, url_of: Callable[[str], str], *extra: str,
                env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], Path, Any]:
    out = tmp_path / "out"
    with demo_server(require=require) as server:
        command = [sys.executable, "-m", "personaloom.cli", "run", "--backend", "openai", "--base-url",
                   url_of(server.url), "--model", "m", "--out", str(out), *ONE_PAIR, *extra]
        result = subprocess.run(command, capture_output=True, text=True, env=cli_env(**(env or {})), timeout=300,
                                cwd=tmp_path, check=False)
        return result, out, server.stats()


def assert_no_secret(result: subprocess.CompletedProcess[str], out: Path, *secrets: str) -> None:
    places = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}
    places.update({str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert "cache.sqlite" in places and "config.yaml" in places and "stats.json" in places
    leaks = [(where, secret) for secret in secrets for where, data in places.items() if secret.encode() in data]
    assert not leaks, leaks


def assert_kept(result: subprocess.CompletedProcess[str], out: Path, stats: dict[str, Any]) -> None:
    assert result.returncode == 0, result.stderr
    assert "unauthorized" not in stats["faults"], stats
    assert (out / "conversations.jsonl").read_text().strip(), "no conversation kept"


def test_basic_auth_from_the_urls_user_info_with_a_bearer_key_also_set(tmp_path: Path) -> None:
    """The reported case: http://user:sk-secret123@host/v1 with OPENAI_API_KEY set."""
    result, out, stats = run_against(tmp_path, header_is("authorization", basic("user", "sk-secret123")),
                                     lambda url: url.replace("http://", "http://user:sk-secret123@"),
                                     env={"OPENAI_API_KEY": "sk-envkey456"})
    assert_kept(result, out, stats)
    assert_no_secret(result, out, "sk-secret123", basic("user", "sk-secret123").split()[1], "sk-envkey456")
    assert "http://***@127.0.0.1" in (out / "config.yaml").read_text()


def test_basic_auth_from_an_environment_variable(tmp_path: Path) -> None:
    result, out, stats = run_against(tmp_path, header_is("authorization", basic("proxy", "pw-secret789")),
                                     lambda url: url, "--set", "backend.basic_auth_env=PROXY_AUTH",
                                     env={"PROXY_AUTH": "proxy:pw-secret789"})
    assert_kept(result, out, stats)
    assert_no_secret(result, out, "pw-secret789", basic("proxy", "pw-secret789").split()[1])
    assert "basic_auth_env: PROXY_AUTH" in (out / "config.yaml").read_text()


def test_a_bearer_key(tmp_path: Path) -> None:
    result, out, stats = run_against(tmp_path, header_is("authorization", "Bearer sk-bearer-secret"),
                                     lambda url: url, env={"OPENAI_API_KEY": "sk-bearer-secret"})
    assert_kept(result, out, stats)
    assert_no_secret(result, out, "sk-bearer-secret")


def test_azure_classic_deployment_with_api_key_and_api_version(tmp_path: Path) -> None:
    def require(target: str, headers: dict[str, str]) -> str | None:
        if "/openai/deployments/gpt4o/" not in target or "api-version=2024-10-21" not in target:
            return f"not a deployment URL with api-version: {target}"
        return header_is("api-key", "az-secret-key", absent=("authorization",))(target, headers)

    result, out, stats = run_against(tmp_path, require, lambda url: url.replace("/v1", "/openai/deployments/gpt4o"),
                                     "--set", "backend.api_version=2024-10-21",
                                     "--set", "backend.api_key_env=AZURE_OPENAI_API_KEY",
                                     env={"AZURE_OPENAI_API_KEY": "az-secret-key"})
    assert_kept(result, out, stats)
    assert_no_secret(result, out, "az-secret-key")


def test_a_gateway_header_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("backend:\n  headers:\n    X-Api-Key: {env: GATEWAY_KEY}\n    HTTP-Referer: https://example.org\n")

    def require(target: str, headers: dict[str, str]) -> str | None:
        if headers.get("http-referer") != "https://example.org":
            return "no attribution header"
        return header_is("x-api-key", "gw-secret-000")(target, headers)

    result, out, stats = run_against(tmp_path, require, lambda url: url, "--config", str(config),
                                     env={"GATEWAY_KEY": "gw-secret-000"})
    assert_kept(result, out, stats)
    assert_no_secret(result, out, "gw-secret-000")
    written = (out / "config.yaml").read_text()
    assert "env: GATEWAY_KEY" in written and "HTTP-Referer: https://example.org" in written


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "htp://127.0.0.1:8000/v1", "127.0.0.1:8000/v1",
                                 "http://user:sk-typo-secret@/v1"])
def test_a_misconfigured_url_fails_at_once_naming_the_setting(tmp_path: Path, url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "personaloom.cli", "run", "--backend", "openai", "--base-url", url,
                             "--model", "m", "--out", str(tmp_path / "out"), *ONE_PAIR], capture_output=True,
                            text=True, env=cli_env(), timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("personaloom: error: setting backend.base_url"), lines
    assert "sk-typo-secret" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "cache.sqlite").exists()  # no stage ran


def test_a_client_side_refusal_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transport that refuses the request before sending it (aiohttp's ValueError about credentials) is one
    BackendError naming the settings, after one try: it was not the server's answer."""
    backend = OpenAIBackend(BackendConfig(kind="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    calls = []

    async def refuse(*args: Any, **kwargs: Any) -> str:
        calls.append(1)
        raise ValueError("Cannot combine AUTHORIZATION header with AUTH argument or credentials encoded in URL")

    async def go() -> None:
        client = backend._ensure_client()
        monkeypatch.setattr(client, "post", refuse)
        request = ChatRequest(messages=[Message(role="user", content="hi")], params=SamplingParams(max_tokens=8))
        await backend.agenerate([request])

    with pytest.raises(BackendError, match=r"backend\.base_url.*nothing was sent"):
        asyncio.run(go())
    assert calls == [1]


def test_redaction_of_urls_data_and_remembered_secrets() -> None:
    remember("sk-remembered-1")
    assert redact_url("https://u:p@h.example/v1?api-key=abc&x=1") == "https://***@h.example/v1?api-key=***&x=1"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert redact("to OpenAIBackend(base_url='http://u:pw@h/v1') with sk-remembered-1") == (
        "to OpenAIBackend(base_url='http://***@h/v1') with ***")
    data = {"backend": {"base_url": "http://u:pw@h/v1", "api_key_env": "KEY", "max_tokens": 5,
                        "headers": {"X-Api-Key": "plain-secret", "X-Title": "demo", "Tenant-Token": {"env": "T"}}}}
    assert redact_data(data) == {"backend": {"base_url": "http://***@h/v1", "api_key_env": "KEY", "max_tokens": 5,
                                             "headers": {"X-Api-Key": "***", "X-Title": "demo",
                                                         "Tenant-Token": {"env": "T"}}}}
    assert str(BackendError("cannot reach http://u:sk-remembered-1@h/v1")) == "cannot reach http://***@h/v1"


def test_doctor_names_the_auth_form_not_the_secret(tmp_path: Path) -> None:
    with demo_server(require=header_is("authorization", basic("user", "doc-secret-42"))) as server:
        url = server.url.replace("http://", "http://user:doc-secret-42@")
        result = subprocess.run([sys.executable, "-m", "personaloom.cli", "doctor", "--backend", "openai",
                                 "--base-url", url, "--model", "m"], capture_output=True, text=True, env=cli_env(),
                                timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "auth: basic" in result.stdout and "doc-secret-42" not in result.stdout + result.stderr
