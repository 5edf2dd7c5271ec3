"""Executors: where a study's pending runs execute.

The local executor loads the base model and data once in this process and runs each job in
turn. The Ray executor submits each job as a Ray task to an existing cluster (``RAY_ADDRESS``)
or a local one; a worker process loads the workbench once and reuses it for every task of the
same study. Both write the same run-directory layout through :mod:`loraplace.store`, and a
failure of one run (an exception, out of memory) is recorded as that run's ``result.json``
while the others go on. A full disk stops the study with a one-line error instead: the runs
that follow would fail the same way. Finished runs are logged to the study's experiment
trackers by the process that owns the study directory.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import deque
from pathlib import Path

from loraplace import progress, store
from loraplace.config.study import StudyConfig
from loraplace.errors import LoraplaceError
from loraplace.studies.lock import check_lock_token
from loraplace.studies.status import format_duration, run_states, wall_time_left
from loraplace.tracking.backends import open_tracking
from loraplace.training.records import RunSpec, plan_record, run_record, summary_line
from loraplace.training.run import adopt_selection_run, train_one
from loraplace.training.workbench import Workbench

__all__ = ["make_executor", "execute_job", "error_reason"]


def error_reason(exc: BaseException) -> str:
    """A failure's one-line reason as ``result.json`` records it."""
    import torch

    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return f"out_of_memory: {first or type(exc).__name__}"
    if isinstance(exc, store.DiskFullError) or (
        isinstance(exc, OSError) and store.is_disk_full(exc)
    ):
        return f"disk_full: {first}"
    return f"{type(exc).__name__}: {first}".strip()


def load_bench(config: StudyConfig) -> Workbench:
    return Workbench.for_config(config)


def _check_identity(bench: Workbench, out: Path) -> None:
    """A worker's data must be the data the study was started with (same content)."""
    identity = store.read_json(out / store.IDENTITY_FILE) or {}
    expected = (identity.get("data") or {}).get("sha256")
    if expected is not None and bench.data.get("sha256") not in (None, expected):
        raise LoraplaceError(
            f"this process reads data with sha256 {bench.data.get('sha256')}, but the study was "
            f"started with {expected}"
        )


def execute_job(
    bench: Workbench,
    config: StudyConfig,
    job,
    out: Path,
    *,
    base: dict | None,
    show_progress: bool = True,
    token: str | None = None,
) -> dict:
    """Run one job; any exception becomes a failed ``result.json`` with its reason.

    Raises:
        DiskFullError: the disk is full (the failure is recorded first where it still fits).
        KeyboardInterrupt: passed through; the run stays incomplete and is redone on resume.
    """
    key = job.key
    run_dir = key.run_dir(out)
    check_lock_token(out, token)
    spec = RunSpec(
        config.lora,
        config.training,
        config.eval,
        job.learning_rate,
        selected_from=job.selected_from,
        base=base,
        auto=job.auto,
    )
    try:
        if job.adopt_from is not None:
            try:
                return adopt_selection_run(
                    bench,
                    job.plan,
                    key,
                    run_dir,
                    job.adopt_from.run_dir(out),
                    spec=spec,
                    show_progress=show_progress,
                )
            except FileNotFoundError:
                store.clear_run_dir(run_dir)  # no saved weights: train it like any run
        return train_one(
            bench,
            job.plan,
            key,
            run_dir,
            spec=spec,
            keep_checkpoints=job.keep_checkpoints,
            show_progress=show_progress,
        )
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - one run's failure must not stop the study
        reason = error_reason(exc)
        record = run_record(job.plan, key, bench, config.lora, config.training, config.eval)
        record.update({"learning_rate": job.learning_rate, "auto": job.auto})
        result = store.failed_result(record, reason)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
            store.write_result(run_dir, result)
        except OSError as write_error:
            if not store.is_disk_full(write_error) and not reason.startswith("disk_full"):
                raise
            reason = reason if reason.startswith("disk_full") else error_reason(write_error)
        except store.DiskFullError:
            reason = "disk_full: " + str(run_dir)
        if reason.startswith("disk_full"):
            raise store.DiskFullError(
                f"disk full while running {key.label()} in '{out}': free space, then run the "
                "same command again (finished runs are kept, this one is redone)"
            ) from None
        return result


class _Executor:
    """Runs jobs and logs each finished run to the study's trackers (a context manager)."""

    def __init__(self, config: StudyConfig, out: Path, token: str, show_progress: bool):
        self.config, self.out, self.token, self.show = config, out, token, show_progress
        self.tracking = None

    def __enter__(self):
        if self.config.tracking:
            self.tracking = open_tracking(
                self.config.tracking, self.out, self.config.name, self.config.to_dict()
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.tracking is not None:
            self.tracking.close()

    def _done(self, job, result: dict, bar) -> None:

        states = run_states(self.out, self.config)
        done = sum(state in ("finished", "failed") for _, state, _ in states)
        _, left, unknown, _ = wall_time_left(states, self.config, self.out)
        eta = f"about {format_duration(left)} left" + (
            f", plus {unknown} run(s) not yet timed" if unknown else ""
        )
        bar.write(f"{summary_line(result)} [study: {done}/{len(states)} runs, {eta}]")
        if self.tracking is not None:
            self._track(job, result)

    def _track(self, job, result: dict) -> None:
        """Mirror a complete run to the trackers from its files (so tracking cannot change it)."""
        run_dir = job.key.run_dir(self.out)
        params = {
            **job.key.to_json(),
            "learning_rate": job.learning_rate,
            "spec": job.plan.spec,
            "trainable_params": job.plan.trainable_params,
            "ranks": job.plan.part_ranks,
        }
        with self.tracking.run(job.key.dirname, params) as tracked:
            for record in store.read_jsonl(run_dir / store.METRICS_FILE):
                tracked.log_metrics(record["step"], record)
            files = [
                run_dir / name
                for name in (store.RESULT_FILE, store.METRICS_FILE, store.GENERATIONS_FILE)
            ]
            adapter = run_dir / store.ADAPTER_DIR
            tracked.log_result(
                result, [f for f in files if f.is_file()], adapter if adapter.is_dir() else None
            )

    _bench: Workbench | None = None

    def workbench(self) -> Workbench:
        """The study's model and data in this process, loaded on first use."""
        if self._bench is None:
            self._bench = load_bench(self.config)
            _check_identity(self._bench, self.out)
        return self._bench

    def record_failure(self, job, error: str) -> None:
        """A failed ``result.json`` for a run that cannot start or whose worker died."""
        record = {
            **plan_record(job.plan, job.key),
            "learning_rate": job.learning_rate,
            "auto": job.auto,
        }
        store.write_result(job.key.run_dir(self.out), store.failed_result(record, error))

    def _bar(self, jobs, stage: str):
        return progress.bar(len(jobs), f"study ({stage})", unit="run", show=self.show, leave=True)


class LocalExecutor(_Executor):
    """Runs jobs in this process, loading the model and data once."""

    base: dict | None = None

    def workbench(self) -> Workbench:
        if self._bench is None:
            config = self.config
            start = time.perf_counter()
            print(
                f"loading model '{config.model}' and data '{config.data.dataset}' "
                "(once for the whole study) ...",
                flush=True,
            )
            super().workbench()
            print(f"loaded in {time.perf_counter() - start:.1f} s", flush=True)
        return self._bench

    def _ensure(self, need_base: bool) -> None:
        config = self.config
        self.bench = self.workbench()
        if need_base and self.base is None:
            identity = store.read_json(self.out / store.IDENTITY_FILE)
            print("base model: eval loss on the eval split ...", flush=True)
            base = self.bench.base_metrics(config.eval, self.out, identity, show_progress=self.show)
            how = (
                f"read from {self.out / store.BASE_FILE}"
                if base["stored"]
                else f"evaluated in {base['eval_time_s']:.1f} s"
            )
            acc = "" if base["accuracy"] is None else f", accuracy {100 * base['accuracy']:.1f}%"
            print(
                f"base model: eval loss {base['eval_loss']:.4f} on {base['eval_tokens']:,} tokens"
                f"{acc} ({how}; shared by every run)",
                flush=True,
            )
            self.base = base

    def __call__(self, jobs: list, stage: str, follow=None) -> None:
        queue = deque(jobs)
        bar = self._bar(jobs, stage)
        try:
            while queue:
                job = queue.popleft()
                self._ensure(need_base=job.key.stage == "final")
                bar.set_postfix_str(job.key.label())
                result = execute_job(
                    self.bench,
                    self.config,
                    job,
                    self.out,
                    base=self.base,
                    show_progress=self.show,
                    token=self.token,
                )
                self._done(job, result, bar)
                bar.update(1)
                _more(queue.extend, follow, job, bar)
        finally:
            bar.close()


def _more(add, follow, job, bar) -> None:
    """Queue the jobs that ``job`` finishing releases (``follow(job)``; e.g. a condition's final
    runs once its learning rate is chosen), counted in the progress bar."""
    new = follow(job) if follow is not None else []
    if new:
        add(new)
        bar.total += len(new)
        bar.refresh()


# --- Ray -----------------------------------------------------------------------------------

_WORKER: dict = {}


def _ray_task(config: StudyConfig, out: str, job, token: str) -> dict:
    """Body of one Ray task: reuse this worker's workbench when the study is the same."""
    key = repr((config.model, config.data, config.device, config.training.precision))
    if key not in _WORKER:
        _WORKER.clear()
        bench = load_bench(config)
        _check_identity(bench, Path(out))
        _WORKER[key] = bench
    bench = _WORKER[key]
    base = None
    if job.key.stage == "final":
        identity = store.read_json(Path(out) / store.IDENTITY_FILE)
        base = bench.base_metrics(config.eval, Path(out), identity)
    return execute_job(bench, config, job, Path(out), base=base, show_progress=False, token=token)


class RayExecutor(_Executor):
    """Runs each job as a Ray task, on ``RAY_ADDRESS`` or a local instance.

    Every worker must see the study directory at the same path (a shared filesystem on a
    real cluster).
    """

    def __enter__(self):
        try:
            import ray
        except ImportError:
            raise LoraplaceError("--executor ray needs Ray: pip install 'loraplace[ray]'") from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            ray.init(
                address=os.environ.get("RAY_ADDRESS") or None,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
            )
        resources = self.config.ray
        self.task = ray.remote(num_cpus=resources.cpus_per_run, num_gpus=resources.gpus_per_run)(
            _ray_task
        )
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if self.started_here:
            self.ray.shutdown()

    def __call__(self, jobs: list, stage: str, follow=None) -> None:
        ray = self.ray
        config_ref = ray.put(self.config)
        out = str(self.out.resolve())
        refs: dict = {}
        remaining: list = []

        def submit(new_jobs: list) -> None:
            for job in new_jobs:
                ref = self.task.remote(config_ref, out, job, self.token)
                refs[ref] = job
                remaining.append(ref)

        submit(jobs)
        bar = self._bar(jobs, f"{stage}, ray")
        disk_full = None
        try:
            while remaining:
                done, rest = ray.wait(remaining, num_returns=1)
                remaining[:] = rest
                for ref in done:
                    job = refs[ref]
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a lost worker fails only its run
                        cause = getattr(exc, "cause", None) or exc
                        if isinstance(cause, store.DiskFullError):
                            disk_full = cause
                        else:
                            reason = error_reason(cause)
                            bar.write(f"{job.key.label()}: FAILED in Ray ({reason})")
                            self.record_failure(job, reason)
                    else:
                        self._done(job, result, bar)
                    bar.update(1)
                    if disk_full is None:  # a full disk stops the study: nothing new starts
                        _more(submit, follow, job, bar)
        finally:
            bar.close()
        if disk_full is not None:
            raise store.DiskFullError(str(disk_full))


def make_executor(kind: str, config: StudyConfig, out: Path, token: str, show_progress: bool):
    """The executor for ``kind`` (``local`` or ``ray``), as a context manager.

    Raises:
        LoraplaceError: an unknown executor.
    """
    executors = {"local": LocalExecutor, "ray": RayExecutor}
    if kind not in executors:
        raise LoraplaceError(f"unknown executor '{kind}'; valid: {', '.join(executors)}")
    return executors[kind](config, Path(out), token, show_progress)
