"""The tracking backends: a study's runs written to MLflow and to TensorBoard.

Each backend opens once per study and starts one run handle per (strategy, seed) run; handles
log params, metrics, a run's result and its artifacts, then end with the run's status. Nothing
here guards its calls or decides which backends open: :mod:`loraplace.tracking` does both, and
is the interface to use. See ``docs/TRACKING.md``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loraplace.tracking.core import (
    FINAL_METRICS,
    Backend,
    Guard,
    Tracking,
    check_backends,
    flatten_params,
    metric_values,
    require_extra,
)

__all__ = ["MLFLOW_HTTP_DEFAULTS", "MlflowBackend", "TensorBoardBackend", "open_tracking"]

# What identifies a run in result.json besides its name (logged as "strategy") and its config.
_RESULT_PARAMS = ("seed", "spec", "trainable_params", "total_params", "matched_to", "ranks")
_MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
_STUDY_DIR_TAG = "loraplace.study_dir"
_ROLE_TAG = "loraplace.role"
_RUN_TAG = "loraplace.runner"
_PARENT_TAG = "mlflow.parentRunId"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BATCH = 100  # MLflow's limit on params or tags per log_batch call
#: MLflow's HTTP settings for a tracking server, set for the process where the user has not:
#: its defaults (7 retries, doubling waits, 120 s timeouts) let an unreachable server stall
#: one call for over four minutes; these fail it in a few seconds.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def _result_params(result: Mapping[str, Any]) -> dict[str, Any]:
    params = {k: result[k] for k in _RESULT_PARAMS if k in result}
    if "name" in result:
        params["strategy"] = result["name"]
    if isinstance(result.get("config"), Mapping):
        params.update(result["config"])
    return flatten_params(params)


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Raise ``loggers`` to WARNING for a while (MLflow's store creation logs at INFO)."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _mlflow_key(key: str) -> str:
    # The characters MLflow accepts in a param or metric name on every platform.
    return re.sub(r"[^/\w.\- ]", "_", key)[:250]


class _MlflowRun:
    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id
        self.logged: dict[str, str] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow refuses to change a logged param; the first value of a key stays.
        new = {
            _mlflow_key(k): str(v)[:_MAX_PARAM_CHARS]
            for k, v in params.items()
            if _mlflow_key(k) not in self.logged
        }
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])
        self.logged.update(new)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_mlflow_key(k), v, now, int(step)) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_result(
        self, result: Mapping[str, Any], files: Sequence[Path], adapter_dir: Path | None
    ) -> None:
        from mlflow.entities import RunTag

        self.log_params(_result_params(result))
        final = metric_values({k: result.get(k) for k in FINAL_METRICS})
        self.log_metrics(int(result.get("steps") or 0), final)
        tags = {"status": result.get("status"), "error": result.get("error")}
        self.client.log_batch(
            self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        )
        for path in files:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))
        if adapter_dir is not None and Path(adapter_dir).is_dir():
            self.client.log_artifacts(
                self.run_id, str(adapter_dir), artifact_path=Path(adapter_dir).name
            )

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS[status])


class MlflowBackend:
    """The study as an MLflow parent run, each (strategy, seed) run nested under it."""

    name = "mlflow"

    def __init__(self, study_dir: Path, study_name: str, params: dict[str, Any]):
        from mlflow import MlflowClient

        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        uri = env_uri or f"sqlite:///{study_dir}/mlflow.db"
        with _quiet("mlflow", "alembic"):
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                # With the default store the artifacts sit in the study directory too; a store
                # the user chose keeps its own artifact root.
                where = None if env_uri else (study_dir / "mlartifacts").as_uri()
                # The kind makes the UI open on the runs table rather than its GenAI views.
                kind = {"mlflow.experimentKind": "finetuning"}
                self.experiment_id = self.client.create_experiment(study_name, where, kind)
            else:
                self.experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":
                    self.client.restore_experiment(self.experiment_id)
        self.parent = self._parent_run(study_dir, study_name, params)

    def _parent_run(self, study_dir: Path, study_name: str, params: dict[str, Any]) -> _MlflowRun:
        found = [
            r
            for r in self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{_ROLE_TAG}` = 'study'",
                order_by=["attributes.start_time ASC"],
            )
            if r.data.tags.get(_STUDY_DIR_TAG) == str(study_dir)
        ]
        if found:  # a resumed study: the same parent run, running again
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            run = _MlflowRun(self.client, run_id)
            run.logged.update(found[0].data.params)
        else:
            tags = {_ROLE_TAG: "study", _STUDY_DIR_TAG: str(study_dir)}
            info = self.client.create_run(self.experiment_id, tags=tags, run_name=study_name).info
            run = _MlflowRun(self.client, info.run_id)
        run.log_params(params)
        return run

    def start_run(self, run_name: str) -> _MlflowRun:
        parent_id = self.parent.run_id
        # An attempt that a killed study left RUNNING is marked KILLED; the retry is a new run.
        for old in self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{_PARENT_TAG}` = '{parent_id}'"
        ):
            if old.data.tags.get(_RUN_TAG) == run_name and old.info.status == "RUNNING":
                self.client.set_terminated(old.info.run_id, "KILLED")
        tags = {_ROLE_TAG: "run", _RUN_TAG: run_name, _PARENT_TAG: parent_id}
        info = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info
        return _MlflowRun(self.client, info.run_id)

    def close(self, status: str) -> None:
        self.parent.end(status)


class _TensorBoardRun:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        # A run starts from scratch, so the event files of an earlier attempt are stale.
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.params: dict[str, Any] = {}
        self.final: dict[str, float] = {}
        self.step = 0

    def log_params(self, params: dict[str, Any]) -> None:
        # Written once, with the final metrics, when the run ends (the HParams tab needs both).
        self.params.update(params)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, int(step))
        self.step = max(self.step, int(step))

    def log_result(
        self, result: Mapping[str, Any], files: Sequence[Path], adapter_dir: Path | None
    ) -> None:
        self.log_params(_result_params(result))
        self.final = metric_values({k: result.get(k) for k in FINAL_METRICS})
        self.log_metrics(int(result.get("steps") or 0), self.final)
        status = f"{result.get('status')}" + (f": {result['error']}" if result.get("error") else "")
        self.writer.add_text("status", status, self.step)

    def end(self, status: str) -> None:
        from torch.utils.tensorboard.summary import hparams

        try:
            # The HParams tab: one row per run, its params and the final metrics it has.
            metrics = {k: v for k, v in self.final.items() if math.isfinite(v)}
            for summary in hparams(self.params, metrics):
                self.writer.file_writer.add_summary(summary, self.step)
        finally:
            self.writer.close()


class TensorBoardBackend:
    """Event files under ``<study dir>/tensorboard/<run name>/``, one directory per run."""

    name = "tensorboard"

    def __init__(self, study_dir: Path):
        self.root = study_dir / "tensorboard"

    def start_run(self, run_name: str) -> _TensorBoardRun:
        return _TensorBoardRun(self.root / run_name.replace(os.sep, "_"))

    def close(self, status: str) -> None:
        pass


def open_tracking(
    backends: Sequence[str], study_dir: Path, study_name: str, params: Mapping[str, Any]
) -> Tracking:
    """Opens the tracking of a study in the given backends (none: a no-op :class:`Tracking`).

    MLflow: the study is a parent run (found again on resume by its study-directory tag) and
    each run a nested run. The store is ``MLFLOW_TRACKING_URI`` when set, otherwise
    ``sqlite:///<study dir>/mlflow.db`` with artifacts in ``<study dir>/mlartifacts``.
    TensorBoard: event files in ``<study dir>/tensorboard/<run name>/``.

    Args:
        backends: Backend names from :data:`BACKENDS`.
        study_dir: The study directory (made absolute here).
        study_name: The study's name: the MLflow experiment and parent-run name.
        params: The study's resolved config (flattened with dots for the parent run).

    Returns:
        A :class:`Tracking`. A backend whose store cannot be opened is left out with a
        :class:`TrackingWarning`. MLflow's HTTP retries and timeouts are bounded
        (:data:`MLFLOW_HTTP_DEFAULTS`, where the environment does not set them), and a backend
        whose failures cost more than :data:`~loraplace.tracking.core.FAILURE_BUDGET_S` is
        turned off for the rest of the study.

    Raises:
        LoraplaceError: An unknown backend name, or a backend whose extra is not installed.
    """
    names = check_backends(backends)
    for name in names:
        require_extra(name)
    study_dir = Path(study_dir).resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    guard = Guard()
    flat = flatten_params(params)
    opened: list[Backend] = []
    for name in names:
        if name == "mlflow":
            backend = guard.open(name, MlflowBackend, study_dir, study_name, flat)
        else:
            backend = guard.open(name, TensorBoardBackend, study_dir)
        if backend is not None:
            opened.append(backend)
    return Tracking(opened, guard)
