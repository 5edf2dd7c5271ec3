"""Studies: every (strategy, seed) of a config, run once, resumable, failures isolated.

A run is complete exactly when its ``result.json`` exists (written atomically, last). On start
the runner skips complete runs, clears the leftovers of interrupted ones and runs the rest, so
killing the process at any moment (``kill -9`` included) and running the same command again
finishes the study without redoing or duplicating anything. ``results.csv`` is regenerated
from the ``result.json`` records, never appended to.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from pathlib import Path

import yaml

from loraplace.config import StudyConfig, load_study_config, preset_path
from loraplace.errors import LoraplaceError
from loraplace.files import read_json
from loraplace.run import run_dir_name

__all__ = [
    "RunSpec",
    "pending_runs",
    "prepare_study_dir",
    "write_results_csv",
    "run_study",
    "study_command",
    "RESULT_COLUMNS",
]

RESULT_COLUMNS = [
    "name",
    "spec",
    "seed",
    "status",
    "error",
    "trainable_params",
    "total_params",
    "trainable_pct",
    "eval_loss",
    "perplexity",
    "base_eval_loss",
    "accuracy",
    "base_accuracy",
    "train_time_s",
    "train_tokens",
    "tokens_per_s",
    "peak_memory_mb",
    "steps",
    "run_dir",
]


class RunSpec(tuple):
    """``(strategy name, seed)``: one run of a study."""

    __slots__ = ()

    def __new__(cls, name: str, seed: int):
        return super().__new__(cls, (name, seed))

    @property
    def name(self) -> str:
        return self[0]

    @property
    def seed(self) -> int:
        return self[1]

    @property
    def dirname(self) -> str:
        return run_dir_name(self.name, self.seed)


def all_runs(config: StudyConfig) -> list[RunSpec]:
    """Seed-major order: every strategy's first seed before any second seed, so an interrupted
    study already compares all strategies."""
    return [RunSpec(name, seed) for seed in config.training.seeds for name in config.strategies]


def read_result(run_dir: Path) -> dict | None:
    """A run's result, or ``None`` when it is missing or unreadable (i.e. not complete)."""
    result = read_json(run_dir / "result.json")
    return result if result is not None and result.get("status") in ("finished", "failed") else None


def pending_runs(config: StudyConfig, out: Path, *, retry_failed: bool = False) -> list[RunSpec]:
    """Runs without a complete result; leftovers of interrupted runs are removed."""
    pending = []
    for spec in all_runs(config):
        run_dir = out / "runs" / spec.dirname
        result = read_result(run_dir)
        if result is not None and not (retry_failed and result["status"] == "failed"):
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)
        pending.append(spec)
    return pending


def _normalised(config_dict: dict) -> str:
    return yaml.safe_dump(config_dict, sort_keys=True)


def prepare_study_dir(config: StudyConfig, out: Path) -> None:
    """Create ``out`` with ``study.yaml``, or check that it belongs to this same config.

    Raises:
        LoraplaceError: when ``out`` holds a study with a different config (never overwritten).
    """
    resolved = config.to_dict()
    existing = out / "study.yaml"
    if existing.exists():
        try:
            previous = yaml.safe_load(existing.read_text()) or {}
        except yaml.YAMLError:
            previous = {}
        if _normalised(_without_seeds(previous)) != _normalised(_without_seeds(resolved)):
            changed = sorted(
                k for k in set(resolved) | set(previous) if previous.get(k) != resolved.get(k)
            )
            raise LoraplaceError(
                f"'{out}' holds a study with a different config (differs in: {', '.join(changed) or 'format'}); "
                f"nothing was changed there: choose another directory with --out"
            )
        if _normalised(previous) != _normalised(resolved):
            # Only the seed list changed: every run's own config is the same, so the study can
            # grow (or be reported on fewer seeds) in place; existing runs stay valid.
            _write_yaml_atomic(existing, resolved)
        return
    if out.exists() and any(out.iterdir()):
        raise LoraplaceError(
            f"'{out}' exists and is not a loraplace study directory; choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_yaml_atomic(existing, resolved)


def _without_seeds(config_dict: dict) -> dict:
    training = {k: v for k, v in (config_dict.get("training") or {}).items() if k != "seeds"}
    return {**config_dict, "training": training}


def _write_yaml_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def collect_results(config: StudyConfig, out: Path) -> list[dict]:
    results = []
    for spec in all_runs(config):
        result = read_result(out / "runs" / spec.dirname)
        if result is not None:
            results.append({**result, "run_dir": f"runs/{spec.dirname}"})
    return results


def write_results_csv(config: StudyConfig, out: Path) -> list[dict]:
    """Regenerate ``results.csv`` (one row per complete run) atomically; return the results."""
    results = collect_results(config, out)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for result in results:
        writer.writerow(
            {k: ("" if result.get(k) is None else result.get(k)) for k in RESULT_COLUMNS}
        )
    tmp = out / ".results.csv.tmp"
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, out / "results.csv")
    return results


def run_study(
    config: StudyConfig,
    out: Path,
    *,
    executor: str = "local",
    retry_failed: bool = False,
    show_progress: bool = True,
    report: bool = True,
) -> int:
    """Run every pending (strategy, seed) of ``config`` into ``out``; returns the exit status.

    Returns:
        0 when every run finished, 1 when any run failed (each failure is recorded with its
        reason and the other runs still ran).
    """
    prepare_study_dir(config, out)
    pending = pending_runs(config, out, retry_failed=retry_failed)
    total = len(all_runs(config))
    print(
        f"study '{config.name}' in {out}: {total} runs ({len(config.strategies)} strategies x "
        f"{len(config.training.seeds)} seeds), {total - len(pending)} already complete, {len(pending)} to run",
        flush=True,
    )
    start = time.perf_counter()
    if pending:
        if executor == "local":
            from loraplace.executors import run_local

            run_local(config, out, pending, show_progress=show_progress)
        elif executor == "ray":
            from loraplace.executors import run_ray

            run_ray(config, out, pending, show_progress=show_progress)
        else:
            raise LoraplaceError(f"unknown executor '{executor}'; valid: local, ray")
    results = write_results_csv(config, out)
    failed = [r for r in results if r["status"] == "failed"]
    print(
        f"study '{config.name}': {len(results) - len(failed)} finished, {len(failed)} failed, "
        f"{time.perf_counter() - start:.0f} s this session; results in {out / 'results.csv'}",
        flush=True,
    )
    for result in failed:
        print(f"  failed: {result['name']} seed {result['seed']}: {result['error']}", flush=True)
    if report:
        from loraplace.report import write_report

        print(f"report: {write_report(out) / 'report.md'}", flush=True)
    return 1 if failed else 0


def study_command(args) -> int:
    if args.config and args.preset:
        raise LoraplaceError("give a config file or --preset, not both")
    source = args.config or preset_path(args.preset or "default")
    if args.seeds:
        raw = yaml.safe_load(Path(source).read_text()) if Path(source).is_file() else None
        if not isinstance(raw, dict):
            config = load_study_config(source)  # raises the proper error
            raw = config.to_dict()
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise LoraplaceError(
                f"--seeds must be comma-separated integers, got '{args.seeds}'"
            ) from None
        raw.setdefault("training", {})["seeds"] = seeds
        config = load_study_config(raw)
    else:
        config = load_study_config(source)
    out = Path(args.out) if args.out else Path("runs") / config.name
    return run_study(
        config,
        out,
        executor=args.executor,
        retry_failed=args.retry_failed,
        report=not args.no_report,
    )
