"""Stage order, checkpoints, resume and iterations for `personaloom run` and the one-stage commands.

In: a resolved RunConfig. Out: the run directory of DESIGN.md §3 (config.yaml, cache.sqlite,
attributes.jsonl, profiles.jsonl, pairs.jsonl, iterations/<k>/..., conversations.jsonl, spc.csv,
dataset/, README.md, stats.json, report.html).

Resume: every stage writes its output file atomically and records a fingerprint of its inputs and
settings in state.json (computed from the `INPUTS` its module declares: personaloom/fingerprint.py); a
re-run skips a stage whose fingerprint matches and recomputes one whose settings, models or prompts
changed. Work inside an unfinished stage is not lost either: every LLM result is committed
to the response cache when it arrives, so redoing the stage pays only for calls that were in flight.

A stage none of whose LLM calls succeeded stops the run (BackendError, exit 2) with the server's own message;
every failed call is listed in failures.jsonl. Ctrl-C writes what was kept so far (stop.py).
"""

from __future__ import annotations

import gc
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from personaloom import stagenames as names
from personaloom.calibrate.command import prepare
from personaloom.collector import quiet_collector
from personaloom.config import RunConfig, dump_config
from personaloom.console import console
from personaloom.decontaminate import check_sources
from personaloom.errors import InputError
from personaloom.executors.clients import Clients
from personaloom.fingerprint import fingerprint
from personaloom.fsutil import atomic_write_text, ensure_dir
from personaloom.io import write_jsonl
from personaloom.prompts import catalog
from personaloom.records import Attribute, Conversation, Pair, Profile, Question, Scenario
from personaloom.rundir import (
    Attempt,
    RunState,
    earlier_usage,
    files_fingerprint,
    print_table1,
    print_totals,
    read_json,
    read_stage_output,
    remove_stale_temp,
    write_dataset,
    write_stats,
    write_stopped_stats,
)
from personaloom.seed_data import SeedSet, load_seed_set
from personaloom.stages.iteration import (
    FEWSHOT_POOL_MAX,
    KeptConversations,
    dataset_summary,
    in_flight_window,
    next_pool,
    next_round,
    read_selected,
    split_rounds,
)
from personaloom.stats import Stats
from personaloom.stop import RunStopped, StopSignal
from personaloom.traits import assign_to_pair, assign_to_profiles

STAGES = (names.EXPAND, names.PROFILES, names.PAIR, names.GENERATE)


class Pipeline:
    def __init__(self, config: RunConfig, stop: StopSignal | None = None, progress: bool | None = None) -> None:
        self.config = config
        self.out = ensure_dir(config.out)
        remove_stale_temp(self.out)
        self.stats = Stats()
        self.state = RunState.load(self.out / "state.json")
        # The usage of the earlier invocations on this run directory (stats.json's `total` grows with each).
        self.earlier = earlier_usage(self.out)
        self.stop = stop if stop is not None else StopSignal()
        self.clients = Clients(config, self.out, self.stats, self.stop, progress)
        # True when the user stopped the run: `generate` returned what was kept so far.
        self.partial = False
        self._embedder: Any = None
        self._seed_set: SeedSet | None = None

    # -- shared inputs -------------------------------------------------------------------------
    @property
    def seed_set(self) -> SeedSet:
        if self._seed_set is None:
            cfg = self.config
            self._seed_set = load_seed_set(cfg.seed_data, cfg.seed_format, cfg.expand.personas, cfg.seed)
        return self._seed_set

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from personaloom.embed import Embedder

            emb = self.config.embed
            self._embedder = Embedder(emb.model, cache_path=self.out / "embeddings.sqlite", batch_size=emb.batch_size)
        return self._embedder

    def _path(self, name: str) -> Path:
        return self.out / name

    def _read(self, name: str, model: type[Any]) -> list[Any]:
        return read_stage_output(self.out, name, model)

    # -- stages --------------------------------------------------------------------------------
    async def expand(self) -> list[Attribute]:
        cfg = self.config
        from personaloom.stages.expansion import INPUTS

        fp = fingerprint(INPUTS, cfg, None, self.seed_set.identity())
        target = self._path("attributes.jsonl")
        if self.state.is_done("expand", fp, target, self._path("expansion.json")):
            attributes: list[Attribute] = self._read("attributes.jsonl", Attribute)
            table = read_json(self._path("expansion.json")).get("table1", {})
            self.stats.extra["expansion"] = table
            console.print(f"[dim]expand: up to date ({len(attributes)} attributes)[/dim]")
            return attributes
        from personaloom.stages.expansion import expand

        attempt = Attempt(self.stats, self.state, "expand")
        with self.stats.stage("expand") as st:
            seeds = self.seed_set.attributes
            if self.seed_set.personas:
                seeds = await self._describe_personas(st)
            result = await expand(seeds, self.embedder, self.clients.main, cfg.expand, cfg.sampling, cfg.seed)
            write_jsonl(self._path("attributes.jsonl"), result.attributes)
            write_jsonl(self._path("questions.jsonl"), [Question(text=q) for q in result.questions])
            summary = {"table1": result.table, "rejections": dict(result.rejections)}
            atomic_write_text(self._path("expansion.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
            new = sum(a.source == "generated" for a in result.attributes)
            st.update(summary, attributes=len(result.attributes), seed_attributes=len(result.attributes) - new,
                      new_attributes=new, questions=len(result.questions), bootstrap_attempts=result.attempts)
        attempt.check_alive("expand")
        self.stats.extra["expansion"] = result.table
        attempt.mark("expand", fp)
        print_table1(result.table)
        return list(result.attributes)

    async def _describe_personas(self, st: dict[str, Any]) -> list[Attribute]:
        """A persona collection's personas -> seed attributes, and personas.jsonl (one profile each)."""
        from personaloom.stages.describe import describe_personas

        cfg = self.config
        described = await describe_personas(self.seed_set.personas, self.embedder, self.clients.main, cfg.expand,
                                            cfg.sampling, cfg.seed)
        write_jsonl(self._path("personas.jsonl"), described.profiles)
        st["personas"] = len(described.profiles)
        st["persona_rejections"] = described.rejections
        console.print(f"personas: {len(described.profiles)} of {len(self.seed_set.personas)} sampled personas give "
                      f"{len(described.attributes)} seed attributes")
        if not described.attributes:
            raise InputError("no persona gave a usable first-person statement", path=self.config.seed_data)
        return described.attributes

    async def profiles(self, attributes: list[Attribute]) -> list[Profile]:
        cfg = self.config
        from personaloom.stages.profiles import INPUTS

        fp = fingerprint(INPUTS, cfg, self.state.done.get("expand"),
                         files_fingerprint(self._path("attributes.jsonl"), self._path("personas.jsonl")))
        target = self._path("profiles.jsonl")
        if self.state.is_done("profiles", fp, target):
            profiles: list[Profile] = self._read("profiles.jsonl", Profile)
            console.print(f"[dim]profiles: up to date ({len(profiles)} profiles)[/dim]")
            return profiles
        from personaloom.stages.profiles import build_profiles

        attempt = Attempt(self.stats, self.state, "profiles")
        with self.stats.stage("profiles") as st:
            # A persona collection's personas are the first profiles; random ones make up the rest.
            personas = [p.model_copy(update={"attributes": p.attributes[: cfg.profiles.size],
                                             "attribute_ids": p.attribute_ids[: cfg.profiles.size]})
                        for p in self._personas()][: cfg.profiles.profiles]
            rest = cfg.profiles.model_copy(update={"profiles": cfg.profiles.profiles - len(personas)})
            result = await build_profiles(attributes, self.embedder, self.clients.main, rest, cfg.sampling, cfg.seed,
                                          in_flight_window(cfg))
            result.profiles = assign_to_profiles([*personas, *result.profiles], cfg.big_five, cfg.seed)
            write_jsonl(self._path("profiles.jsonl"), result.profiles)
            st["profiles"] = len(result.profiles)
            st["rejections"] = dict(result.rejections)
        attempt.check_alive("profiles")
        attempt.mark("profiles", fp)
        rej = ", ".join(f"{k} {v}" for k, v in sorted(result.rejections.items())) or "none"
        console.print(f"profiles: {len(result.profiles)} profiles (rejected candidates: {rej})")
        return list(result.profiles)

    def pair(self, profiles: list[Profile], attributes: list[Attribute]) -> list[Pair]:
        cfg = self.config
        from personaloom.stages.pairing import INPUTS

        fp = fingerprint(INPUTS, cfg, self.state.done.get("profiles"), files_fingerprint(self._path("profiles.jsonl")))
        target = self._path("pairs.jsonl")
        if self.state.is_done("pair", fp, target):
            pairs: list[Pair] = self._read("pairs.jsonl", Pair)
            console.print(f"[dim]pair: up to date ({len(pairs)} pairs)[/dim]")
            return pairs
        from personaloom.stages.pairing import pair_profiles

        with self.stats.stage("pair") as st:
            pairs = []
            if cfg.pair.keep_seed_pairs:
                pairs.extend(self.seed_set.pairs[: cfg.pair.max_pairs])
            room = cfg.pair.max_pairs - len(pairs)
            if room > 0:
                pair_cfg = cfg.pair.model_copy(update={"max_pairs": room})
                pairs.extend(pair_profiles(profiles, attributes, pair_cfg, cfg.seed))
            by_id = {p.id: p for p in profiles}
            pairs = [assign_to_pair(p, cfg.big_five, cfg.seed, by_id) for p in pairs]
            write_jsonl(self._path("pairs.jsonl"), pairs)
            st["pairs"] = len(pairs)
        self.state.mark("pair", fp)
        console.print(f"pair: {len(pairs)} pairs")
        return pairs

    async def generate(self, pairs: list[Pair]) -> KeptConversations:
        """K rounds over the first generate.pairs pairs; with generate.target_kept, rounds over pairs.jsonl
        until that many are kept (see `next_round`). The kept conversations, in round order, on disk
        (memory holds the few-shot pool: the seeds and the last FEWSHOT_POOL_MAX winners)."""
        cfg = self.config
        gen = cfg.generate
        # Pairs made before --big-five was asked for (or written by hand) get their levels here, from
        # profiles.jsonl where it has them.
        has_profiles = cfg.big_five.active and self._path("profiles.jsonl").exists()
        profiles = {p.id: p for p in self._read("profiles.jsonl", Profile)} if has_profiles else {}
        usable = pairs if gen.target_kept is not None else pairs[: gen.pairs]
        chosen = [assign_to_pair(p, cfg.big_five, cfg.seed, profiles) for p in usable]
        if not chosen:
            raise InputError("no pairs to generate for: pairs.jsonl is empty", path=self._path("pairs.jsonl"))
        if gen.scenarios is not None:
            from personaloom.stages.scenarios import assign

            chosen = assign(chosen, await self.scenarios(), cfg.seed)
        planned = split_rounds(chosen, gen.iterations) if gen.target_kept is None else []
        seeds = list(self.seed_set.conversations)
        pool = seeds
        winners: deque[Conversation] = deque(maxlen=FEWSHOT_POOL_MAX)
        paths: list[Path] = []
        kept = 0
        summaries: list[dict[str, Any]] = []
        upstream, used = self.state.done.get("pair"), 0
        while (round_pairs := planned.pop(0) if planned else next_round(chosen, used, kept, gen.target_kept)):
            used += len(round_pairs)
            k = len(summaries) + 1
            folder = self.out / "iterations" / str(k)
            try:
                selected, upstream = await self._iteration(k, round_pairs, pool, upstream)
            except RunStopped:  # the round wrote what it finished (selected.jsonl, summary.json "partial")
                self.partial, selected = True, []
            summaries.append(read_json(folder / "summary.json"))
            paths.append(folder / "selected.jsonl")
            kept += int(summaries[-1].get("kept", 0))
            if self.partial:
                break
            winners.extend(selected)
            pool = next_pool(seeds, winners, cfg.language)
        if gen.target_kept is not None and not self.partial:
            if kept < gen.target_kept:
                console.print(f"[yellow]kept {kept} of the {gen.target_kept} asked for: all {len(chosen)} pairs "
                              f"of pairs.jsonl are used; raise --max-pairs (and profiles.profiles)[/yellow]")
            kept = min(kept, gen.target_kept)
        self.stats.extra["dataset"] = dataset_summary(summaries, kept, cfg.critic.mode)
        return KeptConversations(tuple(paths), kept)

    async def scenarios(self) -> list[Scenario]:
        """scenarios.jsonl: generate.scenarios as records, expanded from the topics for "auto" (stages/scenarios.py)."""
        from personaloom.stages import scenarios as sc

        gen = self.config.generate
        fp = fingerprint(sc.INPUTS, self.config, None, gen.model_dump(mode="json", include=set(sc.SETTINGS)),
                         files_fingerprint(*sc.sources(gen)))
        if self.state.is_done(sc.STAGE, fp, self._path("scenarios.jsonl")):
            return self._read("scenarios.jsonl", Scenario)
        attempt = Attempt(self.stats, self.state)
        with self.stats.stage(sc.STAGE) as st:
            built = await sc.build_scenarios(gen, self.clients.role, self.embedder, self.config.sampling,
                                             self.config.seed)
            st.update(built.counts)
        write_jsonl(self._path("scenarios.jsonl"), built.scenarios)
        attempt.mark(sc.STAGE, fp)
        console.print(f"scenarios: {len(built.scenarios)} ({', '.join(f'{k} {v}' for k, v in built.counts.items())})")
        return built.scenarios

    async def _iteration(self, k: int, round_pairs: list[Pair], pool: list[Conversation],
                         upstream: str | None) -> tuple[list[Conversation], str]:
        """Round k (from its files when its fingerprint matches): (its last FEWSHOT_POOL_MAX kept
        conversations, its fingerprint)."""
        from personaloom.stages.sessions import INPUTS

        fp = fingerprint(INPUTS, self.config, upstream, k, [p.model_dump(mode="json") for p in round_pairs],
                         [c.id for c in pool])
        folder = self.out / "iterations" / str(k)
        selected_path = folder / "selected.jsonl"
        if self.state.is_done(f"generate.{k}", fp, selected_path, folder / "summary.json"):
            selected, n = read_selected(selected_path)
            console.print(f"[dim]iteration {k}: up to date ({n} kept)[/dim]")
            return selected, fp
        from personaloom.stages.iteration import run_iteration

        attempt = Attempt(self.stats, self.state, "generate", "critic")
        with self.stats.stage(f"iteration.{k}") as st:
            selected, summary = await run_iteration(k, round_pairs, pool, self.clients.role, self.config, self.stats,
                                                    folder)
            st.update(summary)
        console.print(f"iteration {k}: {summary['pairs']} pairs, {summary['candidates']} candidates, kept "
                      f"{summary['kept']}, failures {summary['failures']}")
        attempt.check_alive(f"iteration {k}")
        attempt.mark(f"generate.{k}", fp)
        return selected, fp

    def _personas(self) -> list[Profile]:
        """personas.jsonl (a persona collection's profiles), when the seed data is one."""
        path = self._path("personas.jsonl")
        return self._read("personas.jsonl", Profile) if self.seed_set.personas and path.exists() else []




async def _run_async(pipe: Pipeline, until: str, only: str | None) -> KeptConversations | None:
    """Stages in order up to `until`; with `only`, the stages before it are read from their files."""

    def skip(stage: str) -> bool:
        return only is not None and STAGES.index(stage) < STAGES.index(only)

    try:
        attributes = pipe._read("attributes.jsonl", Attribute) if skip("expand") else await pipe.expand()
        if until == "expand":
            return None
        gc.freeze()  # see personaloom.collector
        profiles = pipe._read("profiles.jsonl", Profile) if skip("profiles") else await pipe.profiles(attributes)
        if until == "profiles":
            return None
        pairs = pipe._read("pairs.jsonl", Pair) if skip("pair") else pipe.pair(profiles, attributes)
        if until == "pair":
            return None
        del profiles, attributes
        gc.freeze()
        return await pipe.generate(pairs)
    finally:
        await pipe.clients.aclose()


async def execute(config: RunConfig, until: str = "all", only: str | None = None, calibrate: bool = False,
                  stop: StopSignal | None = None, progress: bool | None = None) -> None:
    """Run the pipeline up to and including `until` ("expand", "profiles", "pair", "generate"/"all");
    `only="<stage>"` runs that one stage on the previous stages' files (the one-stage commands); with
    `calibrate`, the judges are measured first (calibrate/command.py: warnings, calibrated weights). `stop`:
    the run's StopSignal (its `request()` stops it gracefully; RunStopped is raised once what was kept is
    written); `progress`: the display (None auto, True shown, False none). Raises PersonaloomError subclasses."""
    with quiet_collector(), catalog.applied(config.prompts.dir):  # checked first: a broken template costs no call
        await _execute(config, until, only, calibrate, stop, progress)


def run(config: RunConfig, until: str = "all", only: str | None = None, calibrate: bool = False) -> None:
    """`execute` from synchronous code, wherever it is called (personaloom.runner)."""
    from personaloom.runner import run_sync

    stop = StopSignal()
    run_sync(lambda: execute(config, until, only, calibrate, stop), stop)


async def _execute(config: RunConfig, until: str, only: str | None, calibrate: bool, stop: StopSignal | None,
                   progress: bool | None) -> None:
    started, cfg = time.perf_counter(), config
    check_sources(cfg.decontaminate.paths)
    seeds = load_seed_set(cfg.seed_data, cfg.seed_format, cfg.expand.personas, cfg.seed) if calibrate else None
    pipe = Pipeline(await prepare(config, seeds.conversations if seeds is not None else None), stop, progress)
    config = pipe.config
    atomic_write_text(pipe.out / "config.yaml", dump_config(config))
    try:
        conversations = await _run_async(pipe, until, only)
        pipe.stats.extra["partial"] = pipe.partial
        if conversations is not None:
            with pipe.stats.stage("write"):
                write_dataset(pipe.out, conversations, config, pipe.stats, pipe.seed_set.name)
                # The report shows this invocation's usage: stats.json first (written again at the end).
                write_stats(pipe.out, pipe.stats, time.perf_counter() - started, pipe.earlier, config.prices)
            from personaloom.evaluate.suite import evaluate

            with pipe.stats.stage("report"):
                await evaluate(pipe.out, None, pipe.out, judge=None, seed=config.seed)
            console.print(
                f"[bold]wrote {pipe.stats.conversations} conversations[/bold] to {pipe.out / 'conversations.jsonl'} "
                f"(also spc.csv, dataset/, README.md, stats.json, report.html)"
            )
    except BaseException as exc:
        write_stopped_stats(pipe.out, pipe.stats, exc, time.perf_counter() - started, pipe.earlier, config.prices)
        raise
    write_stats(pipe.out, pipe.stats, time.perf_counter() - started, pipe.earlier, config.prices)
    print_totals(pipe.stats, time.perf_counter() - started)
    if pipe.partial:
        raise RunStopped(f"stopped by the user: the {pipe.stats.conversations} conversations kept so far are written "
                         f"(partial); re-run the same command to resume")


__all__ = ["STAGES", "Pipeline", "execute", "run"]
