"""The package's shape (CONTRIBUTING.md): no import cycles, counting imports inside functions; only the
executor calls an LLM client; backends hold no concurrency bound of their own; pipeline.py stays
orchestration, within 400 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "personaloom"


def test_no_import_cycles() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "import_cycles.py"), str(SRC)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "no import cycles" in result.stdout, result.stdout


def test_cycle_checker_finds_a_lazy_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n    return a\n")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "import_cycles.py"), str(pkg)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "pkg.a <-> pkg.b" in result.stdout


def _calls(path: Path, method: str) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method]


def test_only_the_executor_calls_an_llm_client() -> None:
    found = {str(p.relative_to(SRC)): lines for p in SRC.rglob("*.py")
             if "executors" not in p.parts and (lines := _calls(p, "complete"))}
    assert found == {}, f"stages call the LLM client outside run_step: {found}"


def test_backends_hold_no_semaphore() -> None:
    for path in (SRC / "backends").glob("*.py"):
        assert "Semaphore" not in path.read_text(encoding="utf-8"), path.name


def test_the_pipeline_is_orchestration_within_400_lines() -> None:
    # Issue 30: stage order, checkpoints and resume only; helpers live in rundir.py, stages/, collector.py.
    lines = (SRC / "pipeline.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 400, f"pipeline.py is {lines} lines: move what is not orchestration out"
