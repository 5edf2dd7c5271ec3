"""Study configs: a YAML file (or mapping) validated completely before anything runs.

Every problem (unknown keys with a did-you-mean, bad values, bad or colliding strategy names,
layers out of range for the model, a reference that is not a strategy) is collected and raised
once as a :class:`~loraplace.errors.ConfigError`. Validation compiles every strategy against
the model's config (no weights) and keeps the compiled plans on the config, so nothing
downstream parses or plans again: not the executors, not a Ray task, not the report.
The keys are documented in docs/STUDIES.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from loraplace.config_checks import build_section, check_top_level, named_strategies, unknown_keys
from loraplace.errors import ConfigError, LoraplaceError, short_repr
from loraplace.settings import (
    DataConfig,
    EvalSettings,
    LoraSettings,
    ReportSettings,
    TrainingSettings,
    check_fields,
    is_number,
)
from loraplace.store import CHECKPOINTS_DIR, RunKey, read_result

__all__ = [
    "StudyConfig",
    "RayOptions",
    "load_study_config",
    "parse_yaml",
    "read_yaml",
    "preset_names",
    "preset_path",
]


@dataclass
class RayOptions:
    """Resources of each run when the study runs on Ray (``--executor ray``)."""

    cpus_per_run: float = 1.0
    """CPUs reserved for each run's task."""
    gpus_per_run: float = 0.0
    """GPUs reserved for each run's task (fractions allowed)."""

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "ray",
            {
                "cpus_per_run": (lambda v: is_number(v) and 0 < v <= 4096, "a number in (0, 4096]"),
                "gpus_per_run": (lambda v: is_number(v) and 0 <= v <= 64, "a number in [0, 64]"),
            },
        )
        if problems:
            raise ConfigError(problems)


_SECTIONS = {
    "data": DataConfig,
    "lora": LoraSettings,
    "training": TrainingSettings,
    "eval": EvalSettings,
    "report": ReportSettings,
    "ray": RayOptions,
}


@dataclass
class StudyConfig:
    """A placement study: which strategies, on which model and data, trained how."""

    name: str = "study"
    """Study name: a plain name (letters, digits, ._-); the default output is runs/<name>."""
    model: str = "smollm2-135m"
    """Built-in alias, local directory or hub id."""
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    strategies: dict[str, str | dict] = field(default_factory=lambda: {"baseline": "all"})
    """Strategy name -> strategy string, or ``{auto: {...}}`` for an automatic strategy
    (see :class:`loraplace.probe.AutoSpec`)."""
    ranks: list[int] | None = None
    """A rank sweep: every strategy runs at every rank (a part's own :rN still wins)."""
    reference: str | None = None
    """The strategy every other one is compared against (default: the first)."""
    match_params: int | str | None = None
    """Parameter budget: an integer, or a strategy name whose count is the budget."""
    device: str | None = None
    """cpu or cuda (default: CUDA when available)."""
    ray: RayOptions = field(default_factory=RayOptions)
    tracking: list[str] = field(default_factory=list)
    """Experiment trackers to log to: mlflow, tensorboard (see docs/TRACKING.md)."""
    trust_remote_code: bool = False
    """Allow the model directory's own Python code to run (see the README's warning)."""
    reuse: list[str] = field(default_factory=list)
    """Other study directories whose identical runs are copied instead of trained again
    (:mod:`loraplace.reuse`)."""
    plans: dict | None = field(default=None, repr=False, compare=False)
    """``{(name, rank): Plan}`` compiled once at validation, plus ``{(name, rank, seed): Plan}``
    for automatic strategies resolved per seed (not part of the saved config)."""
    autos: dict = field(default_factory=dict, repr=False, compare=False)
    """Resolved automatic strategies: the same keys as ``plans`` -> their record."""

    def to_dict(self) -> dict:
        """The config as saved in ``study.yaml`` (everything but the compiled plans)."""
        out = asdict(self)
        out.pop("plans")
        out.pop("autos")
        if not out["reuse"]:
            out.pop("reuse")  # study.yaml files from before reuse existed stay the same
        return out

    @property
    def auto_strategies(self) -> dict:
        """``{name: AutoSpec}`` of the automatic strategies."""
        from loraplace.probe import AutoSpec

        return {
            name: AutoSpec(**spec["auto"])
            for name, spec in self.strategies.items()
            if isinstance(spec, dict)
        }

    @property
    def conditions(self) -> list[tuple[str, int | None]]:
        """``(name, rank)`` pairs: each strategy at each sweep rank (rank ``None`` without one)."""
        ranks = self.ranks or [None]
        return [(name, rank) for rank in ranks for name in self.strategies]

    def run_keys(self) -> list[RunKey]:
        """Every run of the study: selection runs first, then final runs, seed-major, so an
        interrupted study already compares every condition on its first seeds."""
        selection = [
            RunKey(name, seed, rank, "selection", lr)
            for seed in self.training.selection
            for lr in self.training.learning_rates or []
            for name, rank in self.conditions
        ]
        final = [
            RunKey(name, seed, rank)
            for seed in self.training.seeds
            for name, rank in self.conditions
        ]
        return selection + final

    def adopts(self, key: RunKey, out: Path | None = None) -> bool:
        """Whether the final run ``key`` is adopted from its selection run (evaluated from that
        run's checkpoints, not trained again): a final run of a selection seed.

        Args:
            out: the study directory. With it, also whether the weights are still there to
                adopt: once every selection run of the seed is complete and none kept its
                checkpoints (a study restored from ``loraplace export``, which leaves weights
                out), the final run is trained instead.
        """
        if key.stage != "final" or key.seed not in self.training.selection:
            return False
        if out is None:
            return True
        sources = [
            RunKey(key.name, key.seed, key.rank, "selection", lr).run_dir(Path(out))
            for lr in self.training.learning_rates or []
        ]
        complete = all(read_result(d) is not None for d in sources)
        return not complete or any((d / CHECKPOINTS_DIR).is_dir() for d in sources)

    def plan_for(self, key: RunKey):
        """The compiled plan of a run (requires a config loaded with ``check_model=True``)."""
        plan = self.compiled_plan(key)
        if plan is None:
            raise KeyError(key.condition)
        return plan

    def compiled_plan(self, key: RunKey):
        """The compiled plan of a run (its seed's own where the strategy placed per seed), or
        ``None`` for an automatic strategy not resolved yet."""
        if self.plans is None:
            raise RuntimeError("this config was loaded without compiling its plans")
        return self.plans.get((*key.condition, key.seed), self.plans.get(key.condition))

    def auto_for(self, key: RunKey) -> dict | None:
        """The resolved automatic strategy behind a run, or ``None`` for a fixed strategy."""
        per_seed = (*key.condition, key.seed)
        return self.autos.get(per_seed, self.autos.get(key.condition))


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("loraplace.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def preset_path(name: str) -> Path:
    names = preset_names()
    if name not in names:
        raise LoraplaceError(f"unknown preset {short_repr(name)}; presets: {', '.join(names)}")
    return Path(str(resources.files("loraplace.presets").joinpath(f"{name}.yaml")))


def parse_yaml(text: str, where: str):
    """Parse a study YAML strictly: no anchors or aliases, no duplicate keys, bounded size."""
    from loraplace.yamlio import load_yaml

    return load_yaml(text, where)


def read_yaml(path: Path):
    """Read and parse a study YAML file strictly (its size is checked before it is read)."""
    from loraplace.yamlio import read_yaml as _read

    return _read(Path(path))


def _read_source(source) -> tuple[object, str]:
    if isinstance(source, dict):
        return source, "config"
    path = Path(source)
    if not path.is_file():
        hint = f"; presets: {', '.join(preset_names())}"
        raise LoraplaceError(f"study config '{short_repr(str(source), 200)}' not found{hint}")
    return read_yaml(path), str(path)


def load_study_config(source: str | Path | dict, *, check_model: bool = True) -> StudyConfig:
    """Read and fully validate a study config (a YAML path or an already-parsed mapping).

    Args:
        source: a YAML file or a mapping.
        check_model: also compile every strategy against the model's config (layer ranges,
            fused roles, parameter matching, rank sweeps), which reads the model's config but no
            weights, and keep the plans on the returned config.

    Raises:
        ConfigError: with every problem found.
        LoraplaceError: when the file cannot be found or read.
    """
    raw, where = _read_source(source)
    if not isinstance(raw, dict):
        raise ConfigError([f"{where} must be a mapping of study keys, got {type(raw).__name__}"])
    problems = unknown_keys(
        raw, [f.name for f in fields(StudyConfig) if f.name not in ("plans", "autos")], ""
    )
    sections = {
        key: build_section(cls, raw.get(key), key, problems) for key, cls in _SECTIONS.items()
    }
    strategies = named_strategies(raw.get("strategies"), problems)
    check_top_level(raw, strategies, problems)
    training, data = sections["training"], sections["data"]
    if (
        training is not None
        and data is not None
        and training.learning_rates
        and not data.validation_examples
    ):
        problems.append(
            "training.learning_rates needs a validation split to select on: set "
            "data.validation_examples (the eval split is never used for any choice)"
        )
    if (
        check_model
        and strategies
        and sections["lora"] is not None
        and isinstance(raw.get("model", "smollm2-135m"), str)
    ):
        # Compile what parsed, even when other keys have problems: all are reported at once.
        probe = StudyConfig(
            model=raw.get("model", "smollm2-135m"),
            strategies=strategies,
            ranks=raw.get("ranks") if not any(p.startswith("ranks") for p in problems) else None,
            lora=sections["lora"],
            trust_remote_code=raw.get("trust_remote_code") is True,
        )
        try:
            plans = compile_plans(
                probe,
                match=not problems and raw.get("match_params") is not None,
                match_params=raw.get("match_params"),
            )
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    config = StudyConfig(
        name=raw.get("name", "study"),
        model=raw.get("model", "smollm2-135m"),
        strategies=strategies,
        ranks=raw.get("ranks"),
        reference=raw.get("reference") or next(iter(strategies)),
        match_params=raw.get("match_params"),
        device=raw.get("device"),
        tracking=list(raw.get("tracking", [])),
        trust_remote_code=bool(raw.get("trust_remote_code", False)),
        reuse=list(raw.get("reuse", [])),
        **sections,
    )
    if check_model:
        config.plans = plans
    return config


def compile_plans(
    config: StudyConfig, planner=None, *, match: bool = True, match_params=None
) -> dict:
    """Compile every condition of ``config`` for its model: ``{(name, rank): Plan}``.

    Args:
        planner: a :class:`~loraplace.placement.ModelPlanner` (default: from the config's model).
        match: apply parameter matching (``match_params``, default the config's).

    Raises:
        ConfigError: listing every strategy that does not fit the model.
    """
    from loraplace.placement import ModelPlanner

    if planner is None:
        try:
            planner = ModelPlanner.for_model(
                config.model, trust_remote_code=config.trust_remote_code
            )
        except LoraplaceError as exc:
            raise ConfigError([f"model: {exc}"]) from None
    budget = match_params if match_params is not None else config.match_params
    problems, plans = [], {}
    for rank in config.ranks or [None]:
        for name, spec in config.strategies.items():
            if not isinstance(spec, str):
                continue  # automatic: compiled once its placement is resolved (probe.py)
            try:
                plans[(name, rank)] = planner.plan({name: spec}, rank or config.lora.rank)[0]
            except LoraplaceError as exc:
                at = f" at rank {rank}" if rank is not None else ""
                problems.append(f"strategies.{name}{at}: {exc}")
    if not problems and match and budget is not None:
        try:
            matched = planner.plan(config.strategies, config.lora.rank, budget)
            plans = {(plan.name, None): plan for plan in matched}
        except LoraplaceError as exc:
            problems.append(f"match_params: {exc}")
    if problems:
        raise ConfigError(problems)
    return plans
