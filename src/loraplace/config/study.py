"""Study configs: a YAML file (or mapping) validated completely before anything runs.

Every problem (unknown keys with a did-you-mean, bad values, bad or colliding strategy names,
layers out of range for the model, a reference that is not a strategy) is collected and raised
once as a :class:`~loraplace.errors.ConfigError`: the checks of the raw mapping append what
they find to one list. Validation compiles every strategy against the model's config (no
weights) and keeps the compiled plans on the config, so nothing downstream parses or plans
again: not the executors, not a Ray task, not the report. The keys are documented in
docs/STUDIES.md.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from loraplace.config.templates import (
    PILOT_KEY,
    Resolved,
    is_marker,
    pilot_problems,
    resolve_eval_examples,
    resolve_strategies,
)
from loraplace.config.yamlio import load_yaml
from loraplace.config.yamlio import read_yaml as _read
from loraplace.errors import ConfigError, LoraplaceError, one_line, short_repr
from loraplace.placement.grammar import parse_strategy
from loraplace.settings import (
    MAX_LIST,
    MAX_PARAMS,
    MAX_RANK,
    NO_RUN,
    SCOPE,
    STUDY_ONLY,
    AutoSpec,
    DataConfig,
    EvalSettings,
    LoraSettings,
    ReportSettings,
    TrainingSettings,
    check_fields,
    is_int,
    is_number,
)
from loraplace.store import CHECKPOINTS_DIR, RunKey, read_result, safe_name
from loraplace.tracking.core import check_backends

__all__ = [
    "MAX_NAME",
    "RayOptions",
    "StudyConfig",
    "auto_entry",
    "build_section",
    "check_top_level",
    "clip",
    "load_study_config",
    "named_strategies",
    "parse_yaml",
    "preset_names",
    "preset_path",
    "read_study_mapping",
    "read_yaml",
    "study_mapping",
    "unknown_keys",
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

    name: str = field(default="study", metadata={SCOPE: STUDY_ONLY})
    """Study name: a plain name (letters, digits, ._-); the default output is runs/<name>."""
    model: str = "smollm2-135m"
    """Built-in alias, local directory or hub id."""
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    report: ReportSettings = field(default_factory=ReportSettings, metadata={SCOPE: NO_RUN})
    strategies: dict[str, str | dict] = field(
        default_factory=lambda: {"baseline": "all"}, metadata={SCOPE: STUDY_ONLY}
    )
    """Strategy name -> strategy string, or ``{auto: {...}}`` for an automatic strategy
    (see :class:`loraplace.settings.AutoSpec`)."""
    ranks: list[int] | None = field(default=None, metadata={SCOPE: STUDY_ONLY})
    """A rank sweep: every strategy runs at every rank (a part's own :rN still wins)."""
    reference: str | None = field(default=None, metadata={SCOPE: STUDY_ONLY})
    """The strategy every other one is compared against (default: the first)."""
    match_params: int | str | None = field(default=None, metadata={SCOPE: STUDY_ONLY})
    """Parameter budget: an integer, or a strategy name whose count is the budget."""
    device: str | None = None
    """cpu or cuda (default: CUDA when available)."""
    ray: RayOptions = field(default_factory=RayOptions, metadata={SCOPE: NO_RUN})
    tracking: list[str] = field(default_factory=list, metadata={SCOPE: NO_RUN})
    """Experiment trackers to log to: mlflow, tensorboard (see docs/TRACKING.md)."""
    trust_remote_code: bool = False
    """Allow the model directory's own Python code to run (see the README's warning)."""
    reuse: list[str] = field(default_factory=list, metadata={SCOPE: NO_RUN})
    """Other study directories whose identical runs are copied instead of trained again
    (:mod:`loraplace.reuse`)."""
    plans: dict | None = field(default=None, repr=False, compare=False)
    """``{(name, rank): Plan}`` compiled once at validation, plus ``{(name, rank, seed): Plan}``
    for automatic strategies resolved per seed (not part of the saved config)."""
    autos: dict = field(default_factory=dict, repr=False, compare=False)
    """Resolved automatic strategies: the same keys as ``plans`` -> their record."""
    resolved: dict[str, Resolved] = field(default_factory=dict, repr=False, compare=False)
    """Strategies written as markers (``{match: ...}``, ``{upper_half: ...}``) -> what they
    resolved to for the model (:mod:`loraplace.config.templates`); ``strategies`` holds the
    resolved strings, and so does ``study.yaml``."""

    def to_dict(self) -> dict:
        """The config as saved in ``study.yaml`` (everything but the compiled plans)."""
        out = asdict(self)
        out.pop("plans")
        out.pop("autos")
        out.pop("resolved")
        if not out["reuse"]:
            out.pop("reuse")  # study.yaml files from before reuse existed stay the same
        if out["training"]["precision"] == "fp32":
            # Studies saved before precision existed ran in fp32: their study.yaml, without
            # the key, stays the same study.
            out["training"].pop("precision")
        return out

    @property
    def auto_strategies(self) -> dict:
        """``{name: AutoSpec}`` of the automatic strategies."""

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
        for p in resources.files("loraplace.config.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def preset_path(name: str) -> Path:
    names = preset_names()
    if name not in names:
        raise LoraplaceError(f"unknown preset {short_repr(name)}; presets: {', '.join(names)}")
    return Path(str(resources.files("loraplace.config.presets").joinpath(f"{name}.yaml")))


def parse_yaml(text: str, where: str):
    """Parse a study YAML strictly: no anchors or aliases, no duplicate keys, bounded size."""

    return load_yaml(text, where)


def read_yaml(path: Path):
    """Read and parse a study YAML file strictly (its size is checked before it is read)."""

    return _read(Path(path))


def _read_source(source) -> tuple[object, str]:
    if isinstance(source, dict):
        return source, "config"
    path = Path(source)
    if not path.is_file():
        hint = f"; presets: {', '.join(preset_names())}"
        raise LoraplaceError(f"study config '{short_repr(str(source), 200)}' not found{hint}")
    return read_yaml(path), str(path)


def study_mapping(raw, where) -> dict:
    """``raw`` if it is a mapping of study keys; otherwise the one error every reader raises.

    Raises:
        ConfigError: ``raw`` (read from ``where``) is not a mapping.
    """
    if not isinstance(raw, dict):
        raise ConfigError([f"{where} must be a mapping of study keys, got {type(raw).__name__}"])
    return raw


def read_study_mapping(path: Path) -> dict:
    """A study config file read strictly (:func:`read_yaml`) and checked to be a mapping."""
    return study_mapping(read_yaml(Path(path)), path)


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
    study_mapping(raw, where)
    keys = [f.name for f in fields(StudyConfig) if f.compare]
    # A preset's pilot is what --pilot changes (config.templates), not part of the study.
    problems = unknown_keys(raw, [*keys, PILOT_KEY], "") + pilot_problems(raw, keys)
    if "data" in raw:
        raw = {**raw, "data": resolve_eval_examples(raw["data"], problems)}
    sections = {
        key: build_section(cls, raw.get(key), key, problems) for key, cls in _SECTIONS.items()
    }
    planner, written, resolved = _resolve_markers(raw, sections["lora"], problems)
    strategies = named_strategies(written, problems)
    check_top_level(raw, strategies, problems)
    if sections["report"] is not None and strategies:
        problems += sections["report"].planned_problems(strategies, raw.get("ranks") is not None)
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
                planner,
                match=not problems and raw.get("match_params") is not None,
                match_params=raw.get("match_params"),
            )
        except ConfigError as exc:
            problems += exc.problems
        else:
            problems += context_problems(probe, sections["data"], sections["eval"])
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
        resolved=resolved,
        **sections,
    )
    if config.training.precision == "auto":
        # Deferred: importing it loads torch.
        from loraplace.training.precision import resolve_precision

        # Resolved once, here: study.yaml saves what auto chose on this machine, so a study
        # resumed elsewhere never mixes precisions.
        config.training.precision = resolve_precision("auto", config.device)
    if check_model:
        config.plans = plans
    return config


def _resolve_markers(raw: dict, lora: LoraSettings | None, problems: list[str]):
    """``(planner, strategies, resolved)``: the strategies as written with their markers
    resolved for the model (:mod:`loraplace.config.templates`); the planner is ``None`` when
    there is no marker (the strategies' plans then build their own)."""
    written = raw.get("strategies")
    if not (isinstance(written, dict) and any(is_marker(v) for v in written.values())):
        return None, written, {}
    planner = _planner(raw)
    written, resolved = resolve_strategies(
        written,
        planner,
        lora.rank if lora is not None else LoraSettings().rank,
        problems,
        sweep=raw.get("ranks") is not None,
    )
    return planner, written, resolved


def _planner(raw: dict):
    """The planner of the config's model, for resolving markers; a model that cannot be
    planned is the one problem reported, as nothing that depends on it can be checked."""
    # Deferred: importing it loads torch.
    from loraplace.placement.planner import ModelPlanner

    model = raw.get("model", "smollm2-135m")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError([f"'model' must be a non-empty string, got {short_repr(model)}"])
    try:
        return ModelPlanner.for_model(model, trust_remote_code=raw.get("trust_remote_code") is True)
    except LoraplaceError as exc:
        raise ConfigError([f"model: {exc}"]) from None


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
    # Deferred: importing it loads torch.
    from loraplace.placement.planner import ModelPlanner

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


def context_problems(config: StudyConfig, data, evaluation) -> list[str]:
    """Token counts that the model's context cannot hold: ``data.max_length`` (a training
    sequence) and ``eval.max_new_tokens`` (a generated answer). Reads the model's config only.

    Args:
        config: names the model (its ``model`` and ``trust_remote_code``).
        data, evaluation: the validated sections, or ``None`` when they had problems.
    """
    # Deferred: importing it loads torch.
    from loraplace.models import context_length, load_config, resolve_model

    try:
        source = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
        found = context_length(load_config(source))
    except LoraplaceError:
        return []  # compile_plans read the same config; a failure there is reported already
    if found is None:
        return []
    context, key = found
    checked = [
        ("data.max_length", data.max_length if data is not None else None),
        ("eval.max_new_tokens", evaluation.max_new_tokens if evaluation is not None else None),
    ]
    return [
        f"{name} must be at most the model's context of {context} tokens ({key} in the "
        f"config of {clip(config.model)}), got {value}"
        for name, value in checked
        if value is not None and value > context
    ]


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: The longest study or strategy name (characters, and bytes as UTF-8): a name is part of a
#: directory name (``runs/<name>``, ``<strategy>--r8--lr3e-04--seed0``), and most file systems
#: refuse a name of more than 255 bytes.
MAX_NAME = 100


def name_problem(where: str, name: str) -> str | None:
    """Why ``name`` cannot be part of a directory name, or ``None`` when it can."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if len(name) <= MAX_NAME and size <= MAX_NAME:
        return None
    return (
        f"{where} {short_repr(name, 40)} is too long ({len(name)} characters, {size} bytes as "
        f"UTF-8); at most {MAX_NAME} of each, as it becomes part of a directory name"
    )


def clip(text: str, limit: int = 40) -> str:
    """A user's key or name for an error message: one line, at most ``limit`` characters."""
    text = one_line(text, limit)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unknown_keys(keys, valid, where: str) -> list[str]:
    problems = []
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
            problems.append(f"unknown key '{where}{clip(str(key))}'{hint}")
    return problems


def build_section(cls, raw, key: str, problems: list[str]):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(f"'{key}' must be a mapping, got {short_repr(raw)}")
        return None
    valid = [f.name for f in fields(cls)]
    problems += unknown_keys(raw, valid, f"{key}.")
    try:
        return cls(**{k: v for k, v in raw.items() if k in valid})
    except ConfigError as exc:
        problems += exc.problems
    except TypeError as exc:
        problems.append(f"'{key}': {short_repr(str(exc), 200)}")
    return None


def named_strategies(raw, problems: list[str]) -> dict[str, str]:  # noqa: C901 (one check per way a strategy entry can be wrong; all are gathered)
    """Named strategies from a mapping (or a list of specs); duplicates and names that would
    share a run directory are refused, never silently merged."""
    if raw is None:
        return {"baseline": "all"}
    if isinstance(raw, list):
        named: dict[str, str] = {}
        for item in raw:
            if not isinstance(item, str):
                problems.append(f"strategies: list entries must be strings, got {short_repr(item)}")
                continue
            if item in named:
                problems.append(f"strategies: {short_repr(item)} is listed twice")
            named[item] = item
        raw = named
    if not isinstance(raw, dict) or not raw:
        problems.append(
            f"'strategies' must be a non-empty mapping of name: strategy, got {short_repr(raw)}"
        )
        return {}
    out: dict[str, str] = {}
    dirs: dict[str, str] = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(
                f"strategies: a name must be a non-empty string, got {short_repr(name)}"
            )
            continue
        if isinstance(spec, dict):
            spec = auto_entry(spec, f"strategies.{clip(name)}", raw, problems)
            if spec is None:
                continue
        elif not isinstance(spec, str):
            problems.append(
                f"strategies.{clip(name)}: expected a strategy string or {{auto: ...}}, got "
                f"{short_repr(spec)}"
            )
            continue
        else:
            try:
                parse_strategy(spec)
            except LoraplaceError as exc:
                problems.append(f"strategies.{clip(name)}: {exc}")
                continue
        too_long = name_problem("strategies: the name", name)
        if too_long:  # reported, and kept so that a reference to it is not reported too
            listed = (
                " (a strategy given without a name is named by its spec: name it in a mapping, "
                "or with --name for loraplace run)"
            )
            problems.append(too_long + (listed if name == spec else ""))
        other = dirs.get(safe_name(name))
        if other is not None:
            problems.append(
                f"strategies: names {short_repr(other, 40)} and {short_repr(name, 40)} map to the "
                f"same run directory '{safe_name(name)}'; rename one"
            )
            continue
        dirs[safe_name(name)] = name
        out[name] = spec
    return out


def auto_entry(entry: dict, where: str, named: dict, problems: list[str]) -> dict | None:
    """An automatic strategy ``{auto: {...}}``, normalised with every default, or ``None``."""

    if set(entry) != {"auto"}:
        problems.append(f"{where}: a mapping must be {{auto: {{method: ..., budget: ...}}}}")
        return None
    try:
        spec = AutoSpec.from_mapping(entry["auto"], where)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    budget = spec.budget
    if isinstance(budget, str) and not isinstance(named.get(budget, ""), str):
        problems.append(f"{where}.auto.budget names another automatic strategy ({budget!r})")
        return None
    if isinstance(budget, str) and budget not in named:
        try:
            parse_strategy(budget)
        except LoraplaceError as exc:
            problems.append(f"{where}.auto.budget is not a strategy of the study: {exc}")
            return None
    return {"auto": asdict(spec)}


def check_top_level(raw: dict, strategies: dict, problems: list[str]) -> None:  # noqa: C901 (one check per top-level key; all problems are gathered at once)
    name = raw.get("name", "study")
    if not isinstance(name, str) or not _PLAIN_NAME.match(name):
        problems.append(
            f"'name' must be a plain name (letters, digits, '.', '_', '-'; no path), got "
            f"{short_repr(name)}; use --out to choose where the study is written"
        )
    elif name_problem("'name'", name):
        problems.append(name_problem("'name'", name))
    model = raw.get("model", "smollm2-135m")
    if not isinstance(model, str) or not model.strip():
        problems.append(f"'model' must be a non-empty string, got {short_repr(model)}")
    reference = raw.get("reference")
    if reference is not None and not isinstance(reference, str):
        problems.append(f"reference must be a strategy name, got {short_repr(reference)}")
    elif reference is not None and reference not in strategies:
        close = difflib.get_close_matches(str(reference), [str(s) for s in strategies], n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(
            f"reference {short_repr(reference)} is not a strategy of this study "
            f"({hint}strategies: {', '.join(strategies)})"
        )
    match = raw.get("match_params")
    if isinstance(match, (list, dict)):
        problems.append(
            f"match_params must be an integer or a strategy name, got {short_repr(match)}"
        )
    elif (
        match is not None
        and not (is_int(match) and 0 < match <= MAX_PARAMS)
        and not (isinstance(match, str) and match in strategies)
    ):
        problems.append(
            f"match_params must be an integer in [1, {MAX_PARAMS}] or a strategy name "
            f"({', '.join(strategies)}), got {short_repr(match)}"
        )
    if match is not None and any(isinstance(s, dict) for s in strategies.values()):
        problems.append("match_params cannot be used with automatic strategies (they fit a budget)")
    ranks = raw.get("ranks")
    if ranks is not None:
        if (
            not isinstance(ranks, list)
            or not ranks
            or len(ranks) > MAX_LIST
            or not all(is_int(r) and 1 <= r <= MAX_RANK for r in ranks)
        ):
            problems.append(
                f"ranks must be a non-empty list of at most {MAX_LIST} integers in "
                f"[1, {MAX_RANK}], got {short_repr(ranks)}"
            )
        elif len(set(ranks)) != len(ranks):
            problems.append(f"ranks has duplicates: {short_repr(ranks)}")
        if match is not None:
            problems.append("ranks and match_params both choose ranks; use one of them")
    device = raw.get("device")
    if device is not None and not (
        isinstance(device, str) and (device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device))
    ):
        problems.append(f"device must be 'cpu' or 'cuda', got {short_repr(device)}")
    tracking = raw.get("tracking", [])
    if not isinstance(tracking, list) or not all(isinstance(t, str) for t in tracking):
        problems.append(f"tracking must be a list of backend names, got {short_repr(tracking)}")
    else:
        try:
            check_backends(tracking)
        except LoraplaceError as exc:
            problems.append(f"tracking: {exc}")
    trust = raw.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        problems.append(f"trust_remote_code must be true or false, got {short_repr(trust)}")
    reuse = raw.get("reuse", [])
    if not isinstance(reuse, list) or not all(isinstance(r, str) and r for r in reuse):
        problems.append(f"reuse must be a list of study directories, got {short_repr(reuse)}")
