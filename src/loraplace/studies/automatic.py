"""A study's automatic strategies, resolved once before any run and kept in ``auto/``."""

from __future__ import annotations

from pathlib import Path

from loraplace import store
from loraplace.config.study import StudyConfig

__all__ = ["config_planner", "resolve_automatic"]


def resolve_automatic(config: StudyConfig, out: Path, workbench, *, probe: bool = True) -> None:
    """Resolve every automatic strategy of the study once, before any run, and compile it.

    Each resolution (strategy string, budget, probe cost) is kept in ``OUT/auto/<stem>.json``
    with its importance files, so a resumed study never probes again; a probe interrupted by a
    kill leaves no file and is simply redone (it is deterministic). The probe reads the
    training split only.

    Args:
        workbench: a callable returning the loaded :class:`~loraplace.workbench.Workbench`
            (called only when something must be probed).
        probe: ``False`` compiles only the placements already recorded in ``out`` and leaves
            the others unresolved, checking and probing nothing (``study --estimate``).
    """
    # Deferred: importing it loads numpy, torch, transformers.
    from loraplace.autoplace.choose import check_budget
    from loraplace.autoplace.probe import auto_place, resolve_budget

    planner = config_planner(config)
    fixed = {n: s for n, s in config.strategies.items() if isinstance(s, str)}
    placements = []  # (name, spec, sweep rank, placing rank, seed, record path, record)
    for name, spec in config.auto_strategies.items():
        for rank in config.ranks or [None]:
            at = spec.rank or rank or config.lora.rank
            for seed in config.training.seeds if spec.probe_per_seed else [spec.seed]:
                path = out / store.AUTO_DIR / f"{store.auto_stem(name, rank, seed)}.json"
                record = store.read_json(path)
                if probe or record is not None:
                    placements.append((name, spec, rank, at, seed, path, record))
    budgets: dict[tuple, int] = {}  # every budget still to place, checked before any probe
    for name, spec, rank, at, _, _, record in placements:
        if record is None and (name, rank) not in budgets:
            budgets[name, rank] = resolve_budget(spec.budget, planner, at, fixed)
            check_budget(planner.arch, budgets[name, rank], rank=at)
    for name, spec, rank, at, seed, path, record in placements:
        if record is None:
            budget = budgets[name, rank]
            label = name + (f" r{rank}" if rank is not None else "")
            print(
                f"placing {label} automatically ({spec.method}, budget {budget:,}, "
                f"seed {seed}) ...",
                flush=True,
            )
            result = auto_place(
                workbench(),
                spec,
                rank=at,
                budget=budget,
                seed=seed,
                batch_size=config.training.batch_size,
                out_dir=path.with_suffix(""),
            )
            record = {"name": name, "rank": rank, **result.to_json()}
            store.write_json_atomic(path, record)
            print(
                f"  {label}: {record['strategy']} ({record['trainable_params']:,} "
                f"parameters, probe {record['probe']['time_s']:.1f} s)",
                flush=True,
            )
        plan = planner.plan({name: record["strategy"]}, at)[0]
        key = (name, rank, seed) if spec.probe_per_seed else (name, rank)
        config.plans[key] = plan
        config.autos[key] = {
            k: record[k]
            for k in ("method", "strategy", "budget", "trainable_params", "seed", "probe")
        }


def config_planner(config: StudyConfig, planner=None):
    """The study model's planner (built from its config alone unless one is given)."""
    # Deferred: importing it loads torch.
    from loraplace.placement.planner import ModelPlanner

    return planner or ModelPlanner.for_model(
        config.model, trust_remote_code=config.trust_remote_code
    )
