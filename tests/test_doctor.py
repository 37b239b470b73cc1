"""`personaloom doctor` and the portable llama.cpp build (issue 14 items 4 and 5).

In: the CLI as a subprocess against the default config (the embedded model, tried in a child process),
the REAL llama_cpp.server on 127.0.0.1, and an unreachable URL; the installed llama.cpp's system info.
Out: one line per backend with the right verdict and exit code, and a failure when llama.cpp was built
with CPU-specific kernels (AVX-512, AMX, SVE, ...) on any machine, not only on one whose CPU has them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from personaloom import native
from personaloom.native import ProbeResult, compiled_features, crash_message, missing, non_portable
from pipeline_server import cli_env
from servers import LlamaServer, llama_server_fixture, unreachable_url  # noqa: F401 (fixture)


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "personaloom.cli", "doctor", *args], capture_output=True,
                          text=True, timeout=600, check=False, env=cli_env())


def test_installed_llama_cpp_is_built_portably() -> None:
    """Fails wherever the installed llama.cpp has CPU-specific kernels (a GGML_NATIVE=ON build, for
    instance), so the AMX crash class shows up in CI even on CPUs without AMX."""
    features = compiled_features()
    assert features, native.system_info()
    assert non_portable(features) == [], f"llama.cpp built for the building CPU: {native.system_info()}"
    assert missing(features) == [], f"llama.cpp needs features this CPU lacks: {native.system_info()}"


def test_the_wheel_builder_runs_before_anything_is_installed() -> None:
    """`make install` runs tools/llama_wheel.py with the bare venv's Python: it must import nothing but the
    standard library (it once imported the package's API, failed, and a native llama-cpp-python came from PyPI)."""
    tool = Path(__file__).resolve().parent.parent / "tools" / "llama_wheel.py"
    code = f"import runpy; print(runpy.run_path({str(tool)!r}, run_name='tool')['profile']())"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "-DGGML_NATIVE=OFF" in done.stdout, done.stdout


def test_feature_parsing_and_portability_rules() -> None:
    amx = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | " \
          "AVX512_VNNI = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
    feats = compiled_features(amx)
    assert feats[:2] == ["SSE3", "SSSE3"] and "AMX_INT8" in feats
    assert non_portable(feats, "x86_64") == ["AVX512", "AVX512_VNNI", "AMX_INT8"]
    arm = compiled_features("CPU : NEON = 1 | ARM_FMA = 1 | SVE = 1 | OPENMP = 1 |")
    assert non_portable(arm, "aarch64") == ["SVE"]
    assert compiled_features("CPU : AVX = 0 | AVX2 = 1 |") == ["AVX2"]
    assert missing(["AVX2", "AMX_INT8"], {"avx", "avx2"}) == ["AMX_INT8"]
    msg = crash_message(ProbeResult(False, "SIGSEGV", features=feats, signal="SIGSEGV"),
                        native.Path("m.gguf"))
    assert "SIGSEGV" in msg and "AMX_INT8" in msg and "GGML_NATIVE=OFF" in msg


@pytest.mark.slow
def test_doctor_default_config_is_ok() -> None:
    done = doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("OK  embedded (main): ") and ".gguf:" in line and "tok/s" in line, line
    assert "structured output yes" in line and "seed yes" in line and "llama.cpp CPU features: " in line
    assert "context window 4096 (backend.n_ctx)" in line, line


@pytest.mark.slow
def test_doctor_against_llama_cpp_server(llama_server: LlamaServer) -> None:
    done = doctor("--backend", "openai", "--base-url", llama_server.url, "--model", llama_server.model)
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert line.startswith("OK  openai (main): ") and llama_server.url in line and "tok/s" in line, line
    assert "structured output yes" in line and "context window " in line, line


def test_doctor_unreachable_url_and_expert_backends() -> None:
    url = unreachable_url()
    done = doctor("--backend", "openai", "--base-url", url, "--model", "m", "--set", "backend.max_retries=0",
                  "--set", "critic.experts.faithfulness.backend.kind=fake")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("FAIL openai (main): ") and "cannot reach" in lines[0] and url in lines[0]
    assert "--base-url" in lines[0]
    assert lines[1].startswith("OK  fake (expert faithfulness): ")
    assert "Traceback" not in done.stderr


def test_a_crashing_native_library_is_a_message_not_a_segfault(tmp_path: native.Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's child dies of SIGSEGV (a fake llama_cpp that crashes on load): the parent gets a
    BackendError naming the crash and the rebuild command, and the doctor a FAIL line."""
    fake = tmp_path / "llama_cpp"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import ctypes\n"
        "def llama_print_system_info():\n    return b'CPU : AVX2 = 1 | AMX_INT8 = 1 |'\n"
        "class Llama:\n    def __init__(self, **kw):\n        ctypes.string_at(0)\n"
    )
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = native.probe(model, 1, timeout_s=60)
    assert not result.ok and result.signal == "SIGSEGV", result
    done = doctor("--model", str(model))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "FAIL embedded (main)" in done.stdout and "crashed inside llama.cpp (SIGSEGV)" in done.stdout
    assert "AMX_INT8" in done.stdout and "GGML_NATIVE=OFF" in done.stdout
    run = subprocess.run([sys.executable, "-m", "personaloom.cli", "run", "--model", str(model), "--out",
                          str(tmp_path / "out"), "--pairs", "1"], capture_output=True, text=True, timeout=300,
                         check=False, env={**cli_env(), "PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}",
                                           "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Segmentation fault" not in run.stderr and "crashed inside llama.cpp" in run.stderr, run.stderr[-2000:]
