"""Study configs: the YAML of SPEC 5, validated completely before anything runs.

Every problem (unknown keys with a did-you-mean, bad strategies, layers out of range for the
model, bad seeds, a reference that is not a strategy) is collected and raised once as a
:class:`~loraplace.errors.ConfigError`. Nothing is written until the config is valid.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from loraplace.data import DataConfig
from loraplace.errors import ConfigError, LoraplaceError
from loraplace.settings import EvalSettings, LoraSettings, TrainingSettings
from loraplace.strategy import parse_strategy

__all__ = ["StudyConfig", "RayOptions", "load_study_config", "preset_names", "preset_path"]


@dataclass
class RayOptions:
    """Resources of each run when the study runs on Ray (``--executor ray``)."""

    cpus_per_run: float = 1.0
    """CPUs reserved for each (strategy, seed) task."""
    gpus_per_run: float = 0.0
    """GPUs reserved for each task (fractions allowed)."""


_SECTIONS = {
    "data": DataConfig,
    "lora": LoraSettings,
    "training": TrainingSettings,
    "eval": EvalSettings,
    "ray": RayOptions,
}


@dataclass
class StudyConfig:
    """A placement study: which strategies, on which model and data, trained how."""

    name: str = "study"
    """Study name; the default output directory is ``runs/<name>``."""
    model: str = "smollm2-135m"
    """Built-in alias, local directory or hub id."""
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    strategies: dict[str, str] = field(default_factory=lambda: {"baseline": "all"})
    """Strategy name -> strategy string."""
    reference: str | None = None
    """The strategy every other one is compared against (default: the first)."""
    match_params: int | str | None = None
    """Parameter budget: an integer, or a strategy name whose count is the budget."""
    device: str | None = None
    """``cpu`` or ``cuda`` (default: CUDA when available)."""
    ray: RayOptions = field(default_factory=RayOptions)

    def to_dict(self) -> dict:
        return asdict(self)


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("loraplace.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def preset_path(name: str) -> Path:
    names = preset_names()
    if name not in names:
        raise LoraplaceError(f"unknown preset '{name}'; presets: {', '.join(names)}")
    return Path(str(resources.files("loraplace.presets").joinpath(f"{name}.yaml")))


def _unknown(keys, valid, where: str) -> list[str]:
    problems = []
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
            problems.append(f"unknown key '{where}{key}'{hint}")
    return problems


def _build_section(cls, raw, key: str, problems: list[str]):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(f"'{key}' must be a mapping, got {raw!r}")
        return None
    valid = [f.name for f in fields(cls)]
    problems += _unknown(raw, valid, f"{key}.")
    try:
        return cls(**{k: v for k, v in raw.items() if k in valid})
    except ConfigError as exc:
        problems += exc.problems
    except TypeError as exc:
        problems.append(f"'{key}': {exc}")
    return None


def load_study_config(source: str | Path | dict, *, check_model: bool = True) -> StudyConfig:
    """Read and fully validate a study config (a YAML path or a dict).

    Args:
        source: a YAML file or an already-parsed mapping.
        check_model: also compile every strategy against the model's config (layer ranges,
            fused roles, parameter matching), which reads the model's config but no weights.

    Raises:
        ConfigError: with every problem found.
    """
    if isinstance(source, dict):
        raw, where = source, "config"
    else:
        path = Path(source)
        if not path.is_file():
            raise LoraplaceError(
                f"study config '{source}' not found; presets: {', '.join(preset_names())}"
            )
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path} is not valid YAML: {str(exc).splitlines()[0]}"]) from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError([f"{where} must be a mapping of study keys, got {type(raw).__name__}"])
    problems = _unknown(raw, [f.name for f in fields(StudyConfig)], "")
    sections = {
        key: _build_section(cls, raw.get(key), key, problems) for key, cls in _SECTIONS.items()
    }

    strategies = raw.get("strategies", {"baseline": "all"})
    if isinstance(strategies, list):
        strategies = {str(s): str(s) for s in strategies}
    if not isinstance(strategies, dict) or not strategies:
        problems.append(
            f"'strategies' must be a non-empty mapping of name: strategy, got {strategies!r}"
        )
        strategies = {}
    for name, spec in strategies.items():
        try:
            parse_strategy(spec)
        except LoraplaceError as exc:
            problems.append(f"strategies.{name}: {exc}")
    reference = raw.get("reference")
    if reference is None and strategies:
        reference = next(iter(strategies))
    elif reference is not None and reference not in strategies:
        close = difflib.get_close_matches(str(reference), list(strategies), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(
            f"reference '{reference}' is not a strategy of this study ({hint}strategies: {', '.join(strategies)})"
        )
    match = raw.get("match_params")
    if (
        match is not None
        and not (isinstance(match, int) and not isinstance(match, bool) and match > 0)
        and not (isinstance(match, str) and match in strategies)
    ):
        problems.append(
            f"match_params must be a positive integer or a strategy name ({', '.join(strategies)}), got {match!r}"
        )
    for key in ("name", "model"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            problems.append(f"'{key}' must be a non-empty string, got {raw[key]!r}")
    device = raw.get("device")
    if device is not None and not (
        isinstance(device, str) and (device == "cpu" or device.startswith("cuda"))
    ):
        problems.append(f"device must be 'cpu' or 'cuda', got {device!r}")
    parsed_ok = {
        n: s
        for n, s in strategies.items()
        if not any(p.startswith(f"strategies.{n}:") for p in problems)
    }
    model = raw.get("model", "smollm2-135m")
    if check_model and isinstance(model, str) and model.strip() and parsed_ok:
        problems += _check_against_model(
            model, parsed_ok, sections["lora"], match if not problems else None
        )
    if problems:
        raise ConfigError(problems)
    return StudyConfig(
        name=raw.get("name", "study"),
        model=model,
        strategies={str(k): str(v) for k, v in strategies.items()},
        reference=reference,
        match_params=match,
        device=device,
        **sections,
    )


def _check_against_model(
    model: str, strategies: dict, lora: LoraSettings | None, match
) -> list[str]:
    """Compile each strategy for the model's config (no weights): layer ranges, fused roles."""
    from loraplace.placement import ModelPlanner

    try:
        planner = ModelPlanner.for_model(model)
    except LoraplaceError as exc:
        return [f"model: {exc}"]
    rank = lora.rank if lora is not None else LoraSettings().rank
    problems = []
    for name, spec in strategies.items():
        try:
            planner.plan({name: spec}, rank)
        except LoraplaceError as exc:
            problems.append(f"strategies.{name}: {exc}")
    if not problems and match is not None:
        try:
            planner.plan(strategies, rank, match)
        except LoraplaceError as exc:
            problems.append(f"match_params: {exc}")
    return problems
