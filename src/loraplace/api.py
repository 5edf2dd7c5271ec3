"""The Python API: plan, run and study from a notebook, and load a study's results.

The command line is a thin layer over these functions (and the functions they call), so a
notebook gets exactly what ``loraplace plan``, ``run``, ``study`` and ``report`` do.

```python
import loraplace

plans = loraplace.plan("smollm2-135m", {"attn": "attn", "ffn": "mlp"}, rank=8)
plans[0].trainable_params, plans[0].lora_config(alpha=16, dropout=0.0)
loraplace.study("examples/budget-curves.yaml", out="runs/budget")
results = loraplace.load_study("runs/budget")
results.summary        # one row per condition (a pandas DataFrame when pandas is installed)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplace import store
from loraplace.config.study import StudyConfig, load_study_config, read_study_mapping
from loraplace.config.templates import is_marker
from loraplace.errors import LoraplaceError
from loraplace.placement.grammar import parse_strategy
from loraplace.settings import STUDY_ONLY, TrainingSettings, keys_of_scope
from loraplace.store import RunKey
from loraplace.studies.estimate import estimate_only

__all__ = ["plan", "run", "study", "load_study", "StudyResults"]


def plan(
    model: str,
    strategies: dict[str, str] | list[str] | str,
    rank: int = 8,
    match_params: int | str | None = None,
    *,
    trust_remote_code: bool = False,
) -> list:
    """Compile strategies for a model from its config alone (no weights are loaded).

    Args:
        model: a built-in alias, a local directory or a hub id.
        strategies: ``{name: strategy}``, a list of strategy strings, or one string.
        rank: the global LoRA rank.
        match_params: an integer budget or a strategy name: parameter-matched ranks.

    Returns:
        One :class:`~loraplace.planning.Plan` per strategy, in order; each has
        ``trainable_params``, ``targets`` and ``lora_config(alpha, dropout, scaling)``.
    """
    # Deferred: importing it loads torch.
    from loraplace.placement.planner import ModelPlanner

    if isinstance(strategies, str):
        strategies = [strategies]
    if isinstance(strategies, list):
        strategies = {s: s for s in strategies}
    planner = ModelPlanner.for_model(model, trust_remote_code=trust_remote_code)
    return planner.plan(dict(strategies), rank, match_params)


def _raw(config_or_path: Any) -> dict:
    """A study config as a mapping: from a ``StudyConfig``, a mapping or a YAML file."""

    if isinstance(config_or_path, StudyConfig):
        return config_or_path.to_dict()
    if isinstance(config_or_path, dict):
        return dict(config_or_path)
    return read_study_mapping(Path(config_or_path))


def _config(config_or_path: Any, overrides: dict | None = None):
    """The validated config: a ``StudyConfig`` as it is (validated once already), anything
    else read and validated here, with ``overrides`` applied first."""
    if isinstance(config_or_path, StudyConfig) and not overrides:
        return config_or_path
    raw = _raw(config_or_path)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return load_study_config(raw)


def run(
    strategy: str,
    seed: int = 0,
    *,
    config: Any = None,
    out: str | Path | None = None,
    force: bool = False,
    name: str | None = None,
    **overrides,
) -> dict:
    """Train and evaluate one strategy with one seed; return its ``result.json`` record.

    Args:
        strategy: a strategy string, or the name of a strategy in ``config``.
        seed: the run's seed.
        config: a study config (path, mapping or ``StudyConfig``) to take settings from;
            ``None`` uses the defaults.
        out: the run directory (default ``runs/single/<name>--seed<k>``).
        force: replace an existing finished run.
        name: the run's name (default: the strategy's name in ``config``, or its spec).
        **overrides: top-level config keys or sections, e.g. ``model="./m"``,
            ``training={"steps": 50}``.
    """
    # Deferred: importing it loads torch, transformers.
    from loraplace.training.run import run_single

    base = _raw(config) if config is not None else {}
    strategies = base.get("strategies") if isinstance(base.get("strategies"), dict) else {}
    if strategy in strategies:
        spec = strategies[strategy]
        name = name or strategy
    else:
        spec = strategy
        name = name or str(parse_strategy(strategy))
    if is_marker(spec):  # resolved for the model with the rest of its config
        spec = _config(base, overrides).strategies[strategy]
    if not isinstance(spec, str):
        raise LoraplaceError(
            f"'{strategy}' is an automatic strategy: a study resolves it before its runs; for a "
            "single run, resolve it with `loraplace place` and run the strategy it prints"
        )
    base.update(
        {"strategies": {name: spec}, "reference": name, "ranks": None, "match_params": None}
    )
    if isinstance(base.get("report"), dict):  # a single run plans no comparisons of the study's
        base["report"] = {k: v for k, v in base["report"].items() if k != "comparisons"}
    training = {
        k: v
        for k, v in (base.get("training") or {}).items()
        if k not in keys_of_scope(TrainingSettings, STUDY_ONLY)
    }
    training["seeds"] = [seed]
    base["training"] = training
    cfg = _config(base, overrides)
    key = RunKey(name, seed)
    return run_single(
        cfg, key, Path(out) if out else Path("runs/single") / key.dirname, force=force
    )


def study(
    config_or_path: Any,
    *,
    out: str | Path | None = None,
    executor: str = "local",
    retry_failed: bool = False,
    report: bool = True,
    show_progress: bool = True,
    estimate: bool = False,
    **overrides,
) -> int:
    """Run (or resume) a study, then write its report; returns 0 when every run finished, 1
    when any failed.

    Args:
        config_or_path: a study YAML path, a mapping or a ``StudyConfig``.
        out: the study directory (default ``runs/<name>``).
        executor: ``local`` or ``ray``.
        report: write the report (``OUT/report/``) after the runs.
        estimate: only print how long the study will take; run and write nothing.
        **overrides: top-level config keys or sections to change, e.g. ``training={"seeds":
            [0, 1, 2]}``.
    """
    # Deferred: importing it loads matplotlib, numpy, scipy, torch, transformers.
    from loraplace.report.build import write_report
    from loraplace.studies.runner import run_study

    cfg = _config(config_or_path, overrides)
    out = Path(out) if out else store.default_study_dir(cfg.name)
    if estimate:
        return estimate_only(cfg, out)
    status = run_study(
        cfg, out, executor=executor, retry_failed=retry_failed, show_progress=show_progress
    )
    if report:
        print(f"report: {write_report(out) / 'report.md'}", flush=True)
    return status


@dataclass
class StudyResults:
    """What :func:`load_study` returns.

    Attributes:
        config: the study's ``StudyConfig``.
        results: one record per complete run (``result.json`` plus ``run_dir``); a pandas
            DataFrame when pandas is installed, else a list of dicts.
        summary: the report's summary rows, one per condition (DataFrame or list of dicts).
        plans: ``{(name, rank): Plan}``, the compiled plan of each condition.
    """

    config: Any
    results: Any
    summary: Any
    plans: dict


def _frame(rows: list[dict]):
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)


def load_study(study_dir: str | Path) -> StudyResults:
    """Load a study directory's results, summary and plans (no weights are loaded).

    Raises:
        LoraplaceError: ``study_dir`` is not a study directory.
    """
    # Deferred: importing it loads matplotlib, numpy, scipy, torch.
    from loraplace.report.build import summarize
    from loraplace.studies.selection import collect_results

    root = Path(study_dir)
    if not store.has_study_config(root):
        raise LoraplaceError(f"'{root}' is not a study directory (no study.yaml)")
    config = load_study_config(root / store.STUDY_FILE)
    return StudyResults(
        config=config,
        results=_frame(collect_results(config, root)),
        summary=_frame(summarize(root)),
        plans=dict(config.plans or {}),
    )
