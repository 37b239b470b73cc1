#!/usr/bin/env python3
"""Build llama-cpp-python once, portably, into a project-local wheel folder; print the wheel's path.

In:  the llama-cpp-python version to build (argv[1], default below) and this machine's architecture.
Out: ``.wheels/llama-cpp-python-<version>-<profile>/llama_cpp_python-*.whl`` (built only if absent) and its
     path on stdout, for ``pip install --no-index --no-deps``.

Why: llama.cpp's default ``GGML_NATIVE=ON`` compiles for the building CPU (AVX-512, AMX, SVE...), so a wheel
built on one machine can crash on another, and its AMX kernels crash on some quantised weights even on the
machine that built them. pip's wheel cache does not key on CMAKE_ARGS, so a native wheel cached earlier
would be reused silently; this folder's name carries the flags' profile, and pip's cache is bypassed.
The profile is a fixed, documented baseline per architecture, never the host's full feature set: x86-64-v3
(AVX2/FMA/F16C, every x86-64 CPU since 2013-2015) where the host has it, plain x86-64 otherwise; armv8-a.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import types
from pathlib import Path

VERSION = "0.3.36"
_OFF_X86 = ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_TILE", "AMX_INT8", "AMX_BF16"]
_V3 = ["SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"]


ROOT = Path(__file__).resolve().parent.parent
# personaloom and its dependencies are not installed yet when this runs. Its native module needs only the
# standard library, but the package's __init__ imports the public API (pydantic...): register the package
# without running __init__ so that only native and what it imports load.
_package = types.ModuleType("personaloom")
_package.__path__ = [str(ROOT / "src" / "personaloom")]
sys.modules.setdefault("personaloom", _package)
from personaloom.native import cpu_flags  # noqa: E402


def profile() -> tuple[str, list[str]]:
    """(profile name, CMake flags) for this machine's architecture; never CPU-specific beyond the profile."""
    machine = platform.machine().lower()
    flags = ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF", "-DGGML_BACKEND_DL=OFF"]
    if machine in ("x86_64", "amd64"):
        have = cpu_flags()
        v3 = not have or {"avx2", "fma", "f16c", "bmi2"} <= have
        flags += [f"-DGGML_{f}={'ON' if v3 else 'OFF'}" for f in _V3]
        flags += [f"-DGGML_{f}=OFF" for f in _OFF_X86]
        return ("x86-64-v3" if v3 else "x86-64"), flags
    if machine in ("aarch64", "arm64"):
        return "armv8-a", [*flags, "-DGGML_CPU_ARM_ARCH=armv8-a"]
    return machine, flags


def main() -> int:
    version = sys.argv[1] if len(sys.argv) > 1 else VERSION
    name, flags = profile()
    folder = ROOT / ".wheels" / f"llama-cpp-python-{version}-{name}"
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CMAKE_ARGS": " ".join(flags), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        print(f"building llama-cpp-python {version} ({name}: {env['CMAKE_ARGS']})", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-cache-dir", "--no-deps",
             "--no-binary", "llama-cpp-python", "-w", str(folder), f"llama-cpp-python=={version}"],
            check=True, env=env,
        )
        (folder / "CMAKE_ARGS").write_text(env["CMAKE_ARGS"] + "\n")
        wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    print(wheels[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
