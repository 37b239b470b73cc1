"""What a notebook user does, in a real Jupyter kernel (ipykernel, driven by nbclient and jupyter_client):
examples/quickstart.ipynb executed end to end (fake backend, own seeds, a Critic expert, the embedded model,
a loopback server, datasets and pandas), and a kernel interrupt during a run's cell that stops it gracefully,
leaving a partial run that the next cell resumes."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import personaloom as pl
from pipeline_server import demo_server

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
ANSI = "\x1b["


def _texts(output: Any) -> list[str]:
    if output.output_type == "stream":
        return [output.text]
    if output.output_type == "error":
        return ["\n".join(output.traceback)]
    return [str(v) for v in output.get("data", {}).values()]


def _printed(nb: Any, prefix: str) -> str:
    """The stdout line of the executed notebook that starts with `prefix`."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                for line in output.text.splitlines():
                    if line.startswith(prefix):
                        return line
    raise AssertionError(f"no output line starting {prefix!r}")


def _number(line: str, after: str) -> int:
    match = re.search(rf"(\d+) {after}", line)
    assert match is not None, (line, after)
    return int(match.group(1))


@pytest.mark.slow
def test_the_quickstart_notebook_runs_in_a_real_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    work = tmp_path / "nb"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    with demo_server() as server:
        monkeypatch.setenv("PERSONALOOM_BASE_URL", server.url)  # the kernel inherits the environment
        started = time.monotonic()
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
        print(f"quickstart.ipynb executed in {time.monotonic() - started:.0f} s")
        server_calls = server.stats()["total"]
    nbformat.write(nb, work / "executed.ipynb")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], "a cell raised"
    assert not [t for o in outputs for t in _texts(o) if ANSI in t], "raw ANSI codes in the saved notebook"

    runs = work / "runs"
    fake = pl.load(runs / "fake")
    line = _printed(nb, "fake run:")
    assert _number(line, "conversations") == fake.stats.conversations >= 1
    assert _number(line, "LLM calls") == fake.stats.total.calls > 50
    columns = _printed(nb, "dataset:")
    assert f"{fake.stats.conversations} rows" in columns
    assert all(c in columns for c in ("user1_persona", "user2_persona", "turns", "id"))
    frame = next(o for cell in nb.cells if "to_pandas" in cell.source for o in cell.outputs
                 if o.output_type == "execute_result")
    assert "<table" in frame.data["text/html"] and "user1_persona" in frame.data["text/html"]
    assert _number(_printed(nb, "own seeds:"), "seed attributes kept") == 6
    assert _number(_printed(nb, "brevity expert:"), "verdicts") >= 1
    embedded = _printed(nb, "embedded run:")
    assert _number(embedded, "candidates") >= 1  # the Generator wrote; what the 135M judge keeps varies
    assert _number(embedded, "LLM calls") == pl.load(runs / "embedded").stats.total.calls >= 5
    served = _printed(nb, "server run:")
    assert _number(served, "conversations") == pl.load(runs / "server").stats.conversations >= 1
    assert _number(served, "LLM calls") == server_calls
    assert _printed(nb, "evaluation:")
    # Progress: one display per run, updated in place (nbclient applies the updates to it), showing the stages.
    for cell in nb.cells:
        if cell.cell_type == "code" and "pl.run(" in cell.source and "if base_url" not in cell.source:
            shown = [o for o in cell.outputs if o.output_type == "display_data"
                     and "personaloom-progress" in o.data.get("text/html", "")]
            assert len(shown) == 1, cell.source[:60]
            assert "generate" in shown[0].data["text/plain"] and "done" in shown[0].data["text/plain"]


def _execute(client: Any, code: str, timeout: float = 300) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `code` in the kernel: its execute_reply's content and the iopub messages it caused."""
    msg_id = client.execute(code)
    messages: list[dict[str, Any]] = []
    end = time.monotonic() + timeout
    while True:
        msg = client.get_iopub_msg(timeout=max(1.0, end - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = client.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], messages


@pytest.mark.slow
def test_a_kernel_interrupt_during_a_run_stops_it_gracefully_and_the_next_cell_resumes(tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel

    with demo_server(latency_s=0.02) as server:
        manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
        try:
            cell = ("import personaloom as pl\n"
                    "SMALL = {'expand': {'new_attributes': 4, 'bootstrap_steps': 1}, 'profiles': {'profiles': 6}}\n"
                    f"run = pl.run(SMALL, out='out', backend='openai', base_url={server.url!r}, model='m', pairs=2, "
                    "iterations=1, candidates=2)\n"
                    "print('kept', run.stats.conversations, 'partial', run.stats.partial)")
            msg_id = client.execute(cell)
            while server.stats()["total"] < 40:
                time.sleep(0.01)
            manager.interrupt_kernel()
            messages: list[dict[str, Any]] = []
            while True:
                msg = client.get_iopub_msg(timeout=120)
                if msg["parent_header"].get("msg_id") == msg_id:
                    messages.append(msg)
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        break
            errors = [m["content"] for m in messages if m["msg_type"] == "error"]
            assert [e["ename"] for e in errors] == ["RunStopped"], errors
            assert "re-run the same command to resume" in errors[0]["evalue"]
            stopped = json.loads((tmp_path / "out" / "stats.json").read_text())
            assert stopped["partial"] is True and "user" in stopped["stopped_by"]
            paid = server.stats()["total"]
            # The cell again: it resumes, pays only for what was not cached, and completes.
            reply, messages = _execute(client, cell)
            assert reply["status"] == "ok", reply
            printed = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
            assert "partial False" in printed and "kept 0" not in printed
            assert server.stats()["repeated"] == 0 and server.stats()["total"] > paid
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
