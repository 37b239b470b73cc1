"""llama.cpp as built on this machine: its compiled CPU features, and a crash-safe test run of a model.

In: the installed llama-cpp-python and a GGUF path. Out: `compiled_features()` (the CPU features
llama.cpp was compiled with, from `llama_print_system_info()`), `non_portable()` (those beyond the
portable baseline of the architecture: a build that has them was made for the building CPU), `missing()`
(those this CPU lacks: such a build crashes here with an illegal instruction), and `probe()`, which loads
the model and answers two tiny requests **in a child process**, so that a crash inside the C library
(SIGSEGV in AMX kernels, SIGILL from a foreign build) is reported as a `ProbeResult` instead of ending
the caller. `ensure_safe()` runs the probe once per llama.cpp build + model + CPU (remembered in the
user's cache folder) before the embedded backend loads a model in-process.

`python -m personaloom.native MODEL THREADS` is the child's side: it prints one JSON object.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personaloom.errors import BackendError

# Compiled features a portable build may have: x86-64-v3 (tools/llama_wheel.py) and armv8-a, plus
# features that are no instruction set (threading, the llamafile sgemm, weight repacking, BLAS).
PORTABLE = {
    "x86_64": {"SSE3", "SSSE3", "SSE42", "AVX", "AVX2", "F16C", "FMA", "BMI2"},
    "aarch64": {"NEON", "ARM_FMA"},
}
NOT_ISA = {"LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE", "BLAS", "KLEIDIAI", "METAL", "CUDA", "VULKAN"}
# /proc/cpuinfo flag of each x86 feature llama.cpp reports (to tell a build this CPU cannot run).
_X86_FLAG = {
    "SSE3": "pni", "SSSE3": "ssse3", "SSE42": "sse4_2", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c",
    "FMA": "fma", "BMI2": "bmi2", "AVX_VNNI": "avx_vnni", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8",
}
REBUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir --no-deps '
    "--no-binary llama-cpp-python llama-cpp-python==0.3.36"
)


def arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def system_info() -> str:
    """llama.cpp's own one-line description of its build ("CPU : SSE3 = 1 | AVX = 1 | ...")."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return (info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)).strip()


def compiled_features(info: str | None = None) -> list[str]:
    """The features `info` (default: this build's system info) reports as on, e.g. ["AVX", "AVX2"]."""
    text = system_info() if info is None else info
    found: list[str] = []
    for part in text.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip().upper()
        if sep and name and value.strip() not in ("", "0") and name not in found:
            found.append(name)
    return found


def non_portable(features: list[str], machine: str | None = None) -> list[str]:
    """Instruction-set features beyond the portable baseline of `machine` (default: this one)."""
    base = PORTABLE.get(machine or arch(), set())
    return [f for f in features if f not in base and f not in NOT_ISA]


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def missing(features: list[str], flags: set[str] | None = None) -> list[str]:
    """Compiled x86 features this CPU does not have (empty when the CPU's flags are unknown)."""
    have = cpu_flags() if flags is None else flags
    if not have:
        return []
    return [f for f in features if f in _X86_FLAG and _X86_FLAG[f] not in have]


@dataclass
class ProbeResult:
    """What a child process saw when it loaded the model and answered two tiny requests."""

    ok: bool
    message: str
    features: list[str] = field(default_factory=list)
    tokens_per_s: float | None = None
    deterministic: bool | None = None
    structured: bool | None = None
    signal: str | None = None


def probe(model: Path, threads: int, timeout_s: float = 300.0) -> ProbeResult:
    """Load `model` and answer two seeded requests and one JSON-schema request in a child process."""
    cmd = [sys.executable, "-m", "personaloom.native", str(model), str(threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"a test run of {model.name} took over {timeout_s:.0f} s")
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return ProbeResult(False, name, signal=name)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), "no output")
        return ProbeResult(False, f"the test run failed (exit {done.returncode}): {tail[:300]}")
    return ProbeResult(
        ok=bool(data.get("ok")), message=str(data.get("message", "")), features=list(data.get("features", [])),
        tokens_per_s=data.get("tokens_per_s"), deterministic=data.get("deterministic"),
        structured=data.get("structured"),
    )


def crash_message(result: ProbeResult, model: Path) -> str:
    """One line: what crashed, the likely cause from the build's features, and the fix."""
    features = result.features
    try:
        features = features or compiled_features()
    except Exception:
        features = []
    risky = non_portable(features)
    lacking = missing(features)
    if lacking:
        cause = f"llama-cpp-python was built for CPU features this CPU lacks ({', '.join(lacking)})"
    elif risky:
        kernels = ", ".join(risky)
        cause = f"llama-cpp-python was built with CPU-specific kernels ({kernels}; AMX crashes on some weights)"
    else:
        cause = "llama.cpp failed on this model"
    return (
        f"the embedded model {model.name} crashed inside llama.cpp ({result.message}) in a test run: {cause}. "
        f"Rebuild it portably: {REBUILD} (README, Troubleshooting), or use a server (--backend openai)"
    )


def _build_key(model: Path, threads: int) -> str:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    parts = [sys.version, str(model.name), str(model.stat().st_size), str(threads), platform.machine()]
    for path in sorted(lib.glob("*")) if lib.is_dir() else []:
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}")
    parts.append(" ".join(sorted(cpu_flags())))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _marker_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "personaloom"


def ensure_safe(model: Path, threads: int) -> None:
    """Raise BackendError, naming the cause and the fix, when loading `model` in this process would
    crash it. The probe runs once per llama.cpp build, model and CPU; PERSONALOOM_NATIVE_PROBE=0 skips it."""
    if os.environ.get("PERSONALOOM_NATIVE_PROBE", "1") == "0":
        return
    try:
        marker = _marker_folder() / f"native-ok-{_build_key(model, threads)}"
    except (ImportError, OSError):
        return  # the loader reports a missing llama_cpp or model file itself
    if marker.exists():
        return
    result = probe(model, threads)
    if result.signal is not None:
        raise BackendError(crash_message(result, model))
    if result.ok:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"features": result.features, "at": time.time()}) + "\n")
        except OSError:
            pass  # only the probe's memo: it runs again next time


def _child(model: str, threads: int) -> dict[str, Any]:
    """The probe's own work (in the child process)."""
    from llama_cpp import Llama

    features = compiled_features()
    llama: Any = Llama(model_path=model, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    messages = [{"role": "user", "content": "Say hello in five words."}]
    texts, tokens, start = [], 0, time.perf_counter()
    for _ in range(2):
        llama.reset()
        out = llama.create_chat_completion(messages=messages, seed=7, temperature=0.7, max_tokens=16)
        texts.append(out["choices"][0]["message"].get("content") or "")
        tokens += int((out.get("usage") or {}).get("completion_tokens", 0))
    elapsed = time.perf_counter() - start
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    llama.reset()
    out = llama.create_chat_completion(
        messages=[{"role": "user", "content": "Answer in JSON: is water wet?"}], seed=7, max_tokens=24,
        response_format={"type": "json_object", "schema": schema},
    )
    try:
        structured = isinstance(json.loads(out["choices"][0]["message"].get("content") or ""), dict)
    except ValueError:
        structured = False
    return {
        "ok": True, "message": "ok", "features": features, "deterministic": texts[0] == texts[1],
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None, "structured": structured,
    }


if __name__ == "__main__":
    try:
        print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))), flush=True)
    except Exception as exc:
        print(json.dumps({"ok": False, "message": f"{type(exc).__name__}: {exc}"}), flush=True)
