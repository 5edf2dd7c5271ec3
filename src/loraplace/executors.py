"""Executors: where a study's pending runs execute.

``run_local`` loads the base model and data once in this process and runs each (strategy,
seed) in turn. ``run_ray`` submits each (strategy, seed) as a Ray task to an existing cluster
(``RAY_ADDRESS``) or a local one; a worker process loads the workbench once and reuses it for
every task it is given. Both write the same ``runs/<name>--seed<k>/`` layout, and a failure of
one run (an exception, out of memory) is recorded as that run's ``result.json`` while the
others go on.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from loraplace.config import StudyConfig
from loraplace.run import (
    base_record,
    failed_result,
    plan_record,
    run_dir_name,
    summary_line,
    train_one,
    write_json_atomic,
)
from loraplace.workbench import Workbench

__all__ = ["run_local", "run_ray", "execute_run", "BASE_FILE"]

BASE_FILE = "base.json"
"""The study directory's record of the base model's eval metrics, reused on resume and by Ray workers."""


def _error_reason(exc: BaseException) -> str:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return f"out_of_memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def execute_run(
    bench: Workbench,
    config: StudyConfig,
    plans: dict,
    name: str,
    seed: int,
    out: Path,
    show_progress: bool = True,
) -> dict:
    """Run one (strategy, seed); any exception becomes a failed ``result.json`` with its reason."""
    run_dir = out / "runs" / run_dir_name(name, seed)
    plan = plans[name]
    try:
        return train_one(
            bench,
            plan,
            seed,
            run_dir,
            lora=config.lora,
            training=config.training,
            evaluation=config.eval,
            show_progress=show_progress,
        )
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - one run's failure must not stop the study
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        result = failed_result(
            base_record(plan, seed, bench, config.lora, config.training, config.eval),
            _error_reason(exc),
        )
        write_json_atomic(run_dir / "result.json", result)
        return result


def _plans(bench: Workbench, config: StudyConfig) -> dict:
    plans = bench.planner.plan(config.strategies, config.lora.rank, config.match_params)
    return {plan.name: plan for plan in plans}


def run_local(config: StudyConfig, out: Path, pending: list, *, show_progress: bool = True) -> None:
    """Run ``pending`` in this process, loading the model and data once."""
    start = time.perf_counter()
    print(
        f"loading model '{config.model}' and data '{config.data.dataset}' (once for the whole study) ...",
        flush=True,
    )
    bench = Workbench.load(config.model, config.data, config.device)
    plans = _plans(bench, config)
    print(f"loaded in {time.perf_counter() - start:.1f} s; base model metrics ...", flush=True)
    base = bench.base_metrics(config.eval, out / BASE_FILE)
    acc = "" if base["accuracy"] is None else f", accuracy {100 * base['accuracy']:.1f}%"
    how = (
        f"read from {out / BASE_FILE}"
        if base["stored"]
        else f"evaluated in {base['eval_time_s']:.1f} s"
    )
    print(
        f"base model: eval loss {base['eval_loss']:.4f} on {base['eval_tokens']:,} tokens{acc} "
        f"({how}; shared by every run)",
        flush=True,
    )
    bar = tqdm(
        total=len(pending), desc="study", unit="run", disable=not show_progress, dynamic_ncols=True
    )
    try:
        for spec in pending:
            bar.set_postfix_str(f"{spec.name} seed {spec.seed}")
            result = execute_run(bench, config, plans, spec.name, spec.seed, out, show_progress)
            bar.write(summary_line(result))
            bar.update(1)
    finally:
        bar.close()


# --- Ray -----------------------------------------------------------------------------------

_WORKER_BENCH: dict = {}


def _ray_task(config_dict: dict, out: str, name: str, seed: int) -> dict:
    """Body of one Ray task: reuse this worker's workbench when the study is the same."""
    from loraplace.config import load_study_config

    config = load_study_config(config_dict, check_model=False)
    key = repr(
        sorted((k, repr(v)) for k, v in config_dict.items() if k in ("model", "data", "device"))
    )
    if key not in _WORKER_BENCH:
        _WORKER_BENCH.clear()
        bench = Workbench.load(config.model, config.data, config.device)
        _WORKER_BENCH[key] = (bench, _plans(bench, config))
    bench, plans = _WORKER_BENCH[key]
    bench.base_metrics(
        config.eval, Path(out) / BASE_FILE
    )  # computed by the first worker, read by the rest
    return execute_run(bench, config, plans, name, seed, Path(out), show_progress=False)


def run_ray(config: StudyConfig, out: Path, pending: list, *, show_progress: bool = True) -> None:
    """Run each pending (strategy, seed) as a Ray task, on ``RAY_ADDRESS`` or a local instance.

    Every worker must see ``out`` at the same path (a shared filesystem on a real cluster).
    """
    try:
        import ray
    except ImportError:
        from loraplace.errors import LoraplaceError

        raise LoraplaceError("--executor ray needs Ray: pip install 'loraplace[ray]'") from None
    import os

    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")
        ray.init(
            address=address or None,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
    task = ray.remote(num_cpus=config.ray.cpus_per_run, num_gpus=config.ray.gpus_per_run)(_ray_task)
    config_dict = config.to_dict()
    refs = {
        task.remote(config_dict, str(out.resolve()), spec.name, spec.seed): spec for spec in pending
    }
    bar = tqdm(
        total=len(refs),
        desc="study (ray)",
        unit="run",
        disable=not show_progress,
        dynamic_ncols=True,
    )
    try:
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            for ref in done:
                spec = refs[ref]
                try:
                    result = ray.get(ref)
                    bar.write(summary_line(result))
                except Exception as exc:  # noqa: BLE001 - a lost worker fails only its run
                    bar.write(f"{spec.name} seed {spec.seed}: FAILED in Ray ({_error_reason(exc)})")
                    _record_ray_failure(config, out, spec, exc)
                bar.update(1)
    finally:
        bar.close()
        if started_here:
            ray.shutdown()


def _record_ray_failure(config: StudyConfig, out: Path, spec, exc: BaseException) -> None:
    """A failed ``result.json`` for a run whose Ray worker died before it could write one."""
    from loraplace.placement import ModelPlanner

    plan = {
        p.name: p
        for p in ModelPlanner.for_model(config.model).plan(
            config.strategies, config.lora.rank, config.match_params
        )
    }[spec.name]
    write_json_atomic(
        out / "runs" / spec.dirname / "result.json",
        failed_result(plan_record(plan, spec.seed), _error_reason(exc)),
    )
