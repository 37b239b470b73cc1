"""`personaloom calibrate` (and `--calibrate` on run / evaluate): measure every configured judge, write
calibration.json, print the table; the warnings `run` and `evaluate` print; calibrated vote weights.

In: a RunConfig (its backend and each enabled expert's own), the output folder, optionally `data`
(conversations with personas: the probes' source; default the shipped seed set) and `reference` (for the
Turing judge: machine-written conversations of the same user pairs as `data`'s human ones), a probe limit. Out:
DIR/calibration.json keyed by judge name (depth, coherency, consistency, diversity, likeability: in the
critic's mode, with both modes under "pairwise"/"listwise"; faithfulness, toxicity, nli; traits with
--big-five, cross_session with --sessions; scenario when `data` has conversations with scenarios; turing with a
reference), each {accuracy, ci_low, ci_high, chance, position_bias, length_bias, kappa, n, weight, ...}. Every
probe call goes through the run's cache: re-running is free.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from personaloom.calibrate import measure, probes
from personaloom.chat import Router
from personaloom.config import ExpertConfig, RunConfig
from personaloom.console import console, make_console
from personaloom.errors import ConfigError
from personaloom.evaluate.turing import pair_conversations
from personaloom.executors.clients import Clients
from personaloom.fsutil import atomic_write_text, ensure_dir
from personaloom.io import read_conversations
from personaloom.records import Conversation
from personaloom.seeds import seed_conversations
from personaloom.stages.critic.experts import FILTER_EXPERTS, QUALITY_EXPERTS
from personaloom.stats import Stats

FILE = "calibration.json"
# Probes per judge when --calibrate runs calibration inside run/evaluate.
DEFAULT_LIMIT = 10


def usable(convs: list[Conversation]) -> list[Conversation]:
    """The conversations probes can be built from: both personas, 6 utterances at least."""
    return [c for c in convs if c.user1_persona and c.user2_persona and len(c.turns) >= 6]


def _read(path: str) -> list[Conversation]:
    """A conversations file, or a run directory's conversations.jsonl."""
    return read_conversations(Path(path) / "conversations.jsonl" if Path(path).is_dir() else path)


def _conversations(data: str | None) -> list[Conversation]:
    found = usable(_read(data) if data else seed_conversations())
    if not found:
        raise ConfigError(f"--data {data}: no conversation with both personas and 6 utterances to build probes from")
    return found


def _enabled(config: RunConfig, name: str) -> bool:
    return (config.critic.experts.get(name) or ExpertConfig()).enabled


async def measure_all(config: RunConfig, route: Router, stats: Stats, convs: list[Conversation],
                      reference: str | None = None, limit: int = DEFAULT_LIMIT) -> dict[str, dict[str, Any]]:
    """Every configured judge measured on its probes (see the module docstring)."""
    results: dict[str, dict[str, Any]] = {}
    for expert in [e for e in QUALITY_EXPERTS if _enabled(config, e)]:
        found = {}
        for mode in ("pairwise", "listwise"):
            score = await measure.comparisons(expert, probes.comparisons(convs, expert, config.seed, limit), route,
                                              measure.expert_context(config, mode), stats)
            found[mode] = score.summary()
        results[expert] = {**found[config.critic.mode], **found}
    ctx = measure.expert_context(config, config.critic.mode)
    features = {"traits": config.big_five.active, "cross_session": config.sessions.count > 1}
    for expert, checks in (("faithfulness", probes.faithfulness_checks(convs, limit)),
                           ("toxicity", probes.toxicity_checks(limit)),
                           ("traits", probes.traits_checks(convs, limit)),
                           ("cross_session", probes.cross_session_checks(convs, limit)),
                           ("scenario", probes.scenario_checks(convs, limit))):
        if features.get(expert, True) and _enabled(config, expert) and checks:
            results[expert] = (await measure.checks(expert, checks, route, ctx, stats)).summary()
    if config.profiles.nli in ("llm", "llm-pairwise"):
        results["nli"] = (await measure.nli(probes.contradictions(limit), route, config, stats)).summary()
    if reference is not None:
        # `data` is human-written (e.g. Persona-Chat), `reference` machine-written for the same user pairs (SPC).
        machine = _read(reference)
        pairs = [p for p in pair_conversations(machine, convs, config.seed) if p.matched][:limit]
        if pairs:
            results["turing"] = (await measure.turing(pairs, route, config.seed, stats)).summary()
    return results


async def acalibrate(config: RunConfig, out: Path, data: str | list[Conversation] | None = None,
                     reference: str | None = None, limit: int = DEFAULT_LIMIT,
                     clients: Clients | None = None) -> dict[str, dict[str, Any]]:
    """Measure, write out/calibration.json, print the table and the warnings; the results. `data`: a file
    of conversations, the conversations themselves, or None (the shipped seed set)."""
    ensure_dir(out)
    convs = usable(data) if isinstance(data, list) else []
    convs = convs or _conversations(data if isinstance(data, str) else None)
    own = clients is None
    used = clients if clients is not None else Clients(config, out, Stats())
    try:
        results = await measure_all(config, used.role, used.stats, convs, reference, limit)
    finally:
        if own:
            await used.aclose()
    atomic_write_text(out / FILE, json.dumps(results, indent=2, sort_keys=True) + "\n")
    print_table(results)
    for line in warnings(results):
        console.print(f"[yellow]{line}[/yellow]")
    return results


def calibrate(config: RunConfig, out: Path, data: str | list[Conversation] | None = None, reference: str | None = None,
              limit: int = DEFAULT_LIMIT, clients: Clients | None = None) -> dict[str, dict[str, Any]]:
    """`acalibrate` from synchronous code, wherever it is called (personaloom.runner)."""
    from personaloom.runner import run_sync

    return run_sync(lambda: acalibrate(config, out, data, reference, limit, clients))


def load(out: Path) -> dict[str, dict[str, Any]] | None:
    """out/calibration.json, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((out / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def at_chance(row: dict[str, Any]) -> bool:
    return float(row.get("ci_low", 0.0)) <= float(row.get("chance", 0.5))


def warnings(results: dict[str, dict[str, Any]], in_use: set[str] | None = None) -> list[str]:
    """One line per judge in use that is at chance or whose verdict follows the order shown."""
    lines = []
    for name, row in sorted(results.items()):
        if in_use is not None and name not in in_use:
            continue
        setting = {"nli": "profiles.nli_model (a cross-encoder) or a bigger backend",
                   "turing": "evaluate --judge openai --model ..."}.get(name, f"critic.experts.{name}.backend")
        if at_chance(row):
            lines.append(f"the {name} judge is no better than chance with this model (accuracy {row['accuracy']:.2f}, "
                         f"95% CI {row['ci_low']:.2f}-{row['ci_high']:.2f} reaches chance {row['chance']:.2f} on "
                         f"{row['n']} probes): its verdicts filter or rank at random; configure {setting}")
        elif (row.get("position_bias") or 0.0) > 0.5:
            lines.append(f"the {name} judge picks the same position in {row['position_bias']:.0%} of probe pairs "
                         f"shown both ways: its verdicts follow the order; set critic.both_orders=true or {setting}")
    return lines


def judges_in_use(config: RunConfig) -> set[str]:
    used = {e for e in (*QUALITY_EXPERTS, *FILTER_EXPERTS) if _enabled(config, e)}
    return used | ({"nli"} if config.profiles.nli == "llm" else set())


def calibrated(config: RunConfig, results: dict[str, dict[str, Any]]) -> tuple[RunConfig, list[str]]:
    """critic.weights=calibrated: each quality expert weighs its measured skill above chance; a filter
    expert at chance is switched off (its verdicts would filter at random). (the config, the experts ignored)."""
    experts = dict(config.critic.experts)
    ignored: list[str] = []
    for name, row in results.items():
        if name not in (*QUALITY_EXPERTS, *FILTER_EXPERTS):
            continue
        current = experts.get(name) or ExpertConfig()
        weight = float(row.get("weight", 0.0))
        if name in FILTER_EXPERTS:
            experts[name] = current.model_copy(update={"enabled": current.enabled and weight > 0})
        else:
            experts[name] = current.model_copy(update={"weight": weight})
        if current.enabled and weight == 0:
            ignored.append(name)
    critic = config.critic.model_copy(update={"experts": experts})
    return config.model_copy(update={"critic": critic}), ignored


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """The table on stderr (wide enough for every column when stderr is not a terminal)."""
    out = console if sys.stderr.isatty() else make_console(width=150)
    t = Table(title="Judge calibration (accuracy on labelled probes; chance = always the commonest label)")
    for col in ("judge", "accuracy", "95% CI", "chance", "position bias", "length bias", "kappa", "n", "weight",
                "calls"):
        t.add_column(col, justify="left" if col == "judge" else "right")

    def fmt(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)

    for name, row in results.items():
        label = f"{name} ({row['mode']})" if "mode" in row else name
        t.add_row(label, fmt(row["accuracy"]), f"{row['ci_low']:.2f}-{row['ci_high']:.2f}", fmt(row["chance"]),
                  fmt(row.get("position_bias")), fmt(row.get("length_bias")), fmt(row.get("kappa")), str(row["n"]),
                  fmt(row["weight"]), str(row.get("calls", "")))
    out.print(t)


async def prepare(config: RunConfig, convs: list[Conversation] | None) -> RunConfig:
    """Before a run: calibrate when asked (`convs` not None: probes from them, else from the shipped seed
    set), print the warnings of the judges in use, and with critic.weights=calibrated apply the measured
    weights. ConfigError when calibrated weights are asked for and there is no calibration.json."""
    out = Path(config.out)
    run_calibration = convs is not None
    results = await acalibrate(config, out, convs) if convs is not None else load(out)
    if results is None:
        if config.critic.weights == "calibrated":
            raise ConfigError(f"critic.weights=calibrated needs {out / FILE}: run `personaloom calibrate --out {out}` "
                              "with this run's settings first, or add --calibrate")
        return config
    if not run_calibration:
        for line in warnings(results, judges_in_use(config)):
            console.print(f"[yellow]{line}[/yellow]")
    if config.critic.weights == "calibrated":
        config, ignored = calibrated(config, results)
        for name in ignored:
            console.print(f"critic.weights=calibrated: the {name} expert is ignored (at chance on its probes)")
    return config
