"""Read-only and out-of-space output directories (issue 7 item 6): one clear error, nothing half-written.

In: atomic writes that hit ENOSPC (patched in-process: always runs), `personaloom run` into a tiny tmpfs
(real ENOSPC: needs root and `mount`, else skipped), and `personaloom run` into a read-only directory
that holds an earlier run's files (as `nobody` via setpriv when root, since root ignores mode bits).
Out: assertions on exit code 1, a one-line `personaloom: error:` naming the path, no traceback, the
earlier files byte-identical, no temp files left, and every JSONL file that exists parsing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from personaloom import fsutil
from personaloom.errors import OutputError
from personaloom.io import write_jsonl
from personaloom.records import Attribute
from pipeline_server import check_jsonl_files, cli_env

FAKE_RUN = ("--backend", "fake", "--pairs", "2", "--iterations", "1", "--candidates", "2",
            "--set", "expand.new_attributes=4", "--set", "profiles.profiles=4",
            "--set", "expand.bootstrap_steps=1", "--set", "expand.max_clusters_for_questions=4")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def _enospc(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_disk_full_during_atomic_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         where: str) -> None:
    target = tmp_path / "attributes.jsonl"
    old = [Attribute(id="a1", text="I have two dogs.", source="seed")]
    write_jsonl(target, old)
    before = target.read_bytes()
    new = [Attribute(id=f"a{i}", text=f"I collect {i} maps.", source="generated") for i in range(2000)]
    if where == "fsync":
        monkeypatch.setattr(fsutil.os, "fsync", _enospc)
    elif where == "replace":
        monkeypatch.setattr(fsutil.os, "replace", _enospc)
    else:
        real_fdopen = os.fdopen

        def fdopen(fd: int, *args: object, **kwargs: object) -> object:
            fh = real_fdopen(fd, *args, **kwargs)  # type: ignore[call-overload]

            class Full:
                def __getattr__(self, name: str) -> object:
                    return getattr(fh, name)

                def write(self, _text: str) -> int:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                def __enter__(self) -> object:
                    return self

                def __exit__(self, *exc: object) -> None:
                    fh.close()

            return Full()

        monkeypatch.setattr(fsutil.os, "fdopen", fdopen)
    with pytest.raises(OutputError) as info:
        write_jsonl(target, new)
    message = str(info.value)
    assert str(target) in message and "No space left on device" in message and "\n" not in message
    assert target.read_bytes() == before  # the previous complete file, not a half-written one
    assert [p.name for p in tmp_path.iterdir()] == ["attributes.jsonl"]  # no temp file left


@contextlib.contextmanager
def _tiny_tmpfs(size: str) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a tiny tmpfs needs root and mount")
    mount_point = Path(tempfile.mkdtemp(prefix="personaloom-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        mount_point.rmdir()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", ["96k"])
def test_run_into_a_full_disk_fails_cleanly(size: str) -> None:
    started = time.perf_counter()
    with _tiny_tmpfs(size) as disk:
        out = disk / "run"
        done = subprocess.run([sys.executable, "-m", "personaloom.cli", "run", "--out", str(out), *FAKE_RUN],
                              capture_output=True, text=True, env=cli_env(), timeout=280, check=False)
        files = sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))
        temps = [f for f in files if f.endswith(".tmp")]
        jsonl = check_jsonl_files(out) if out.exists() else 0
    errors = _error_lines(done.stderr)
    print("RELIABILITY disk full:", json.dumps({"size": size, "exit_code": done.returncode, "error": errors,
                                               "files_left": files, "wall_s": round(time.perf_counter() - started, 1)}))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and errors[0].startswith("personaloom: error: "), errors
    assert str(disk) in errors[0] and ("No space left" in errors[0] or "full" in errors[0]), errors
    assert temps == [], temps
    assert jsonl >= 0


def _read_only_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop privileges to test a read-only directory")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.mark.timeout(120)
def test_run_into_a_read_only_directory_fails_cleanly() -> None:
    prefix = _read_only_prefix()
    root = Path(tempfile.mkdtemp(prefix="personaloom-ro-"))  # not under pytest's 0700 tmp: nobody must reach it
    try:
        root.chmod(0o755)
        out = root / "run"
        out.mkdir()
        write_jsonl(out / "attributes.jsonl", [Attribute(id="a1", text="I have two dogs.", source="seed")])
        (out / "config.yaml").write_text("seed: 0\n")
        (out / "iterations").mkdir()
        before = _snapshot(out)
        for p in (out / "iterations", out):
            p.chmod(0o555)
        for argv in (["run", "--out", str(out), *FAKE_RUN], ["run", "--out", str(out / "sub"), *FAKE_RUN]):
            done = subprocess.run([*prefix, sys.executable, "-m", "personaloom.cli", *argv], capture_output=True,
                                  text=True, env=cli_env(HOME=str(root)), timeout=110, check=False)
            errors = _error_lines(done.stderr)
            assert done.returncode == 1, done.stderr[-3000:]
            assert "Traceback" not in done.stderr
            assert len(errors) == 1 and errors[0].startswith("personaloom: error: "), errors
            assert str(out) in errors[0] and ("not writable" in errors[0] or "ermission" in errors[0]), errors
            assert _snapshot(out) == before  # nothing written, nothing half-written
            print("RELIABILITY read-only:", errors[0])
    finally:
        for p in root.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
