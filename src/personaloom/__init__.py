"""personaloom: faithful persona-based conversation datasets with LLMs (the Generator-Critic framework of
Synthetic-Persona-Chat, Jandaghi et al., 2023, arXiv 2312.10007).

The Python API (personaloom.api; every `personaloom` command is a thin caller of it):

    import personaloom as pl

    run = pl.run(out="runs/demo", backend="fake", pairs=3)        # or pl.run(pl.RunConfig(...)), await pl.arun(...)
    run.stats.conversations, run.stats.total.calls, run.stats.per_kept
    for conversation in run.conversations(): ...                   # personaloom.Conversation records, streamed
    dataset = run.to_hf()                                          # a datasets.Dataset; run.to_pandas() a DataFrame
    pl.evaluate(run, reference="persona-chat.txt", judge="none").metrics
    pl.load("runs/demo")                                           # the same Run, later

`run` works in a script, in a notebook cell, inside a running event loop and from a worker thread; a kernel
interrupt stops it gracefully (RunStopped, with the partial Run) and a second call resumes. Custom Critic
experts: subclass `CriticExpert` and `register_expert(...)` it; `run` uses it.
"""

# The subpackages named like API functions load first: importing a submodule later (personaloom.evaluate.suite)
# then leaves the package's `evaluate` and `calibrate` the functions below.
import personaloom.calibrate
import personaloom.evaluate  # noqa: F401
from personaloom.api import (
    Evaluation,
    arun,
    calibrate,
    configure,
    convert,
    dedup,
    evaluate,
    expand,
    generate,
    load,
    pair,
    profiles,
    read,
    run,
    write,
)
from personaloom.chat import ChatRequest, ChatResult, Message
from personaloom.config import (
    BackendConfig,
    BigFiveConfig,
    CriticConfig,
    DecontaminateConfig,
    DedupConfig,
    EmbedConfig,
    ExpandConfig,
    ExpertConfig,
    GenerateConfig,
    PairConfig,
    PricesConfig,
    ProfilesConfig,
    PromptsConfig,
    RayConfig,
    RunConfig,
    SamplingConfig,
    SessionsConfig,
)
from personaloom.errors import BackendError, ConfigError, InputError, OutputError, PersonaloomError
from personaloom.records import Attribute, Conversation, CriticSummary, Failure, Pair, Profile, Turn, Verdict
from personaloom.runs import LLMUsage, PerKept, Run, RunStats, TotalUsage
from personaloom.stages.critic.registry import CriticExpert, ExpertContext, abstain
from personaloom.stages.critic.registry import register as register_expert
from personaloom.stages.critic.registry import unregister as unregister_expert
from personaloom.stop import RunStopped, StopSignal

__version__ = "0.1.0"

__all__ = [
    "Attribute",
    "BackendConfig",
    "BackendError",
    "BigFiveConfig",
    "ChatRequest",
    "ChatResult",
    "ConfigError",
    "Conversation",
    "CriticConfig",
    "CriticExpert",
    "CriticSummary",
    "DecontaminateConfig",
    "DedupConfig",
    "EmbedConfig",
    "Evaluation",
    "ExpandConfig",
    "ExpertConfig",
    "ExpertContext",
    "Failure",
    "GenerateConfig",
    "InputError",
    "LLMUsage",
    "Message",
    "OutputError",
    "Pair",
    "PairConfig",
    "PerKept",
    "PersonaloomError",
    "PricesConfig",
    "Profile",
    "ProfilesConfig",
    "PromptsConfig",
    "RayConfig",
    "Run",
    "RunConfig",
    "RunStats",
    "RunStopped",
    "SamplingConfig",
    "SessionsConfig",
    "StopSignal",
    "TotalUsage",
    "Turn",
    "Verdict",
    "__version__",
    "abstain",
    "arun",
    "calibrate",
    "configure",
    "convert",
    "dedup",
    "evaluate",
    "expand",
    "generate",
    "load",
    "pair",
    "profiles",
    "read",
    "register_expert",
    "run",
    "unregister_expert",
    "write",
]
