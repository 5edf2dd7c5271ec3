"""Experiment tracking: a study's runs mirrored to MLflow and/or TensorBoard.

The study directory stays the record of a study (``result.json`` per run, read by the report);
tracking is a copy for the tools researchers already use. :func:`open_tracking` returns one
:class:`Tracking` for the whole study, :meth:`Tracking.run` one :class:`TrackedRun` per
(strategy, seed) run. Both backends are optional extras (``loraplace[mlflow]``,
``loraplace[tensorboard]``).

Tracking never changes results and never stops or stalls a study: every call into a backend
is guarded, and a failure (a locked store, a full disk) is reported once per backend as a
:class:`TrackingWarning`, counted, and otherwise ignored. A backend whose store cannot be
opened, or whose failed calls have cost the study :data:`FAILURE_BUDGET_S` seconds, is turned
off for the rest of the study with one warning. The backends themselves are in
:mod:`loraplace.tracking.backends`. See ``docs/TRACKING.md``.
"""

from __future__ import annotations

import importlib
import json
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from loraplace.errors import LoraplaceError, one_line

__all__ = [
    "BACKENDS",
    "FAILURE_BUDGET_S",
    "FINAL_METRICS",
    "TrackingWarning",
    "Tracking",
    "TrackedRun",
    "check_backends",
    "flatten_params",
    "metric_values",
]

BACKENDS: tuple[str, ...] = ("mlflow", "tensorboard")
"""Valid tracking backend names, as written in a study config or after ``--track``."""

FINAL_METRICS: tuple[str, ...] = (
    "eval_loss",
    "perplexity",
    "accuracy",
    "train_time_s",
    "tokens_per_s",
    "peak_memory_mb",
)
"""``result.json`` keys logged as a run's final metrics (at its last training step)."""

FAILURE_BUDGET_S = 10.0
"""Seconds a backend's failed calls may cost a study in all. Past it the backend is turned off
for the rest of the study: a store that stalls (an unreachable server, each call retried)
would otherwise hold up every run."""

_EXTRAS = {"mlflow": ("mlflow", "sqlalchemy", "alembic"), "tensorboard": ("tensorboard",)}


class TrackingWarning(UserWarning):
    """A tracking backend failed; the run goes on and its ``result.json`` is unaffected."""


def check_backends(names: Sequence[str]) -> list[str]:
    """Validates and normalises backend names (case, spaces, duplicates).

    Args:
        names: Backend names, e.g. ``["mlflow", "tensorboard"]``.

    Returns:
        The names in lower case, each once, in the order given.

    Raises:
        LoraplaceError: A name is not one of :data:`BACKENDS`.
    """
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name not in BACKENDS:
            raise LoraplaceError(
                f"unknown tracking backend {raw!r}; valid backends: {', '.join(BACKENDS)}"
            )
        if name not in out:
            out.append(name)
    return out


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: ``{"lora": {"rank": 8}}`` -> ``{"lora.rank": 8}``.

    Scalars (str, int, float, bool) are kept, ``None`` becomes ``"None"`` and anything else
    (lists, tuples) its JSON text, so every value is one that both backends accept.

    Args:
        params: A possibly nested mapping.
        prefix: Prepended to every key, with a dot.

    Returns:
        A flat ``{key: value}`` dict.
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        elif value is None:
            flat[name] = "None"
        elif isinstance(value, str | int | float | bool):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``metrics`` as floats (``None``, text and booleans are not metrics).

    Args:
        metrics: ``{name: value}``, e.g. a ``metrics.jsonl`` record or part of ``result.json``.

    Returns:
        ``{name: float(value)}`` for the entries that are numbers.
    """
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def require_extra(backend: str) -> None:
    for module in _EXTRAS[backend]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise LoraplaceError(
                f"tracking backend {backend!r} needs the {module!r} package, which is not "
                f"installed: pip install 'loraplace[{backend}]'"
            ) from exc


class RunHandle(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_result(
        self, result: Mapping[str, Any], files: Sequence[Path], adapter_dir: Path | None
    ) -> None: ...

    def end(self, status: str) -> None: ...


class Backend(Protocol):
    name: str

    def start_run(self, run_name: str) -> RunHandle: ...

    def close(self, status: str) -> None: ...


class Guard:
    """Runs backend calls; a failure is warned about once per backend, counted, and dropped.

    A backend is turned off (its calls no longer made) when it cannot be opened, or when its
    failed calls have taken more than ``budget_s`` seconds in all; that is one more warning.
    """

    def __init__(self, budget_s: float = FAILURE_BUDGET_S) -> None:
        self.budget_s = budget_s
        self.failures: dict[str, int] = {}
        self.spent: dict[str, float] = {}
        """Seconds spent in failed calls, per backend."""
        self.off: set[str] = set()
        """Backends turned off for the rest of the study."""

    def __call__(self, backend: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        return self._call(backend, what, fn, args, opening=False)

    def open(self, backend: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Open a backend; one that fails is turned off for the study."""
        return self._call(backend, "open", fn, args, opening=True)

    def _call(
        self, backend: str, what: str, fn: Callable[..., Any], args: tuple, *, opening: bool
    ) -> Any:
        if backend in self.off:
            return None
        start = time.monotonic()
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - no tracking problem may stop a study
            self.failures[backend] = self.failures.get(backend, 0) + 1
            self.spent[backend] = self.spent.get(backend, 0.0) + time.monotonic() - start
            text = one_line(f"{type(exc).__name__}: {exc}".splitlines()[0], 300)
            kept = "the study goes on, and its results stay complete in the study directory"
            if opening:
                self.off.add(backend)
                _warn(f"{backend} tracking is off for this study: cannot open it ({text}); {kept}")
            elif self.spent[backend] > self.budget_s:
                self.off.add(backend)
                _warn(
                    f"{backend} tracking is off for the rest of this study: "
                    f"{self.failures[backend]} failed call(s) took {self.spent[backend]:.0f} s "
                    f"(last, {what}: {text}); {kept}"
                )
            elif self.failures[backend] == 1:
                _warn(
                    f"{backend} tracking failed ({what}): {text}; the study goes on, its results "
                    "stay complete in the study directory, and further failures of this "
                    "backend are only counted"
                )
            return None


def _warn(message: str) -> None:
    # stacklevel 4: the loraplace code that called the guard, whose warnings the CLI prints.
    warnings.warn(message, TrackingWarning, stacklevel=4)


class TrackedRun:
    """One (strategy, seed) run as seen by the tracking backends; made by :meth:`Tracking.run`."""

    def __init__(self, handles: list[tuple[str, RunHandle]], guard: Guard):
        self._handles = handles
        self._guard = guard
        self.status: str | None = None
        """``"finished"``/``"failed"`` once :meth:`log_result` has been called."""

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs one point of the training curve or an eval checkpoint.

        Args:
            step: Optimizer step the values belong to.
            metrics: ``{name: value}``, e.g. a ``metrics.jsonl`` record; entries that are not
                numbers (``None``, text) are skipped, so a record can be passed as it is.
        """
        values = metric_values({k: v for k, v in metrics.items() if k != "step"})
        for name, handle in self._handles:
            self._guard(name, "log_metrics", handle.log_metrics, int(step), values)

    def log_result(
        self,
        result: Mapping[str, Any],
        files: Sequence[Path] = (),
        adapter_dir: Path | None = None,
    ) -> None:
        """Logs a run's outcome: params, final metrics, status tags and artifacts.

        Args:
            result: The run's ``result.json`` record (finished or failed).
            files: Files to keep as artifacts, e.g. ``result.json`` and ``metrics.jsonl``;
                missing ones are skipped.
            adapter_dir: The saved PEFT adapter, kept as the ``adapter/`` artifact (MLflow).
        """
        self.status = "finished" if result.get("status") == "finished" else "failed"
        for name, handle in self._handles:
            self._guard(name, "log_result", handle.log_result, result, files, adapter_dir)

    def _end(self, status: str) -> None:
        for name, handle in self._handles:
            self._guard(name, "end run", handle.end, status)


class Tracking:
    """The tracking of one study: zero or more backends behind one small interface.

    Use it as a context manager, or call :meth:`close` when the study ends.
    """

    def __init__(self, backends: list[Backend], guard: Guard | None = None):
        self._backends = backends
        self._guard = guard or Guard()
        self._closed = False

    @property
    def backends(self) -> list[str]:
        """Names of the backends that opened and are still on."""
        return [b.name for b in self._backends if b.name not in self._guard.off]

    @property
    def failures(self) -> dict[str, int]:
        """How many tracking calls failed, per backend name."""
        return dict(self._guard.failures)

    @contextmanager
    def run(self, run_name: str, params: Mapping[str, Any]) -> Iterator[TrackedRun]:
        """Tracks one (strategy, seed) run for the duration of the ``with`` block.

        The run ends as the status of the result logged in the block; as failed if the block
        raised (killed on ``KeyboardInterrupt``), and as killed if no result was logged.

        Args:
            run_name: The run's name, e.g. its run-directory name ``"attn--seed0"``.
            params: Params known at the start (nested dicts are flattened with dots).

        Yields:
            The :class:`TrackedRun` to log metrics and the result to.
        """
        flat = flatten_params(params)
        handles = []
        for backend in self._backends:
            handle = self._guard(backend.name, "start run", backend.start_run, run_name)
            if handle is not None:
                self._guard(backend.name, "log params", handle.log_params, flat)
                handles.append((backend.name, handle))
        tracked = TrackedRun(handles, self._guard)
        try:
            yield tracked
        except Exception:
            tracked._end("failed")
            raise
        except BaseException:
            tracked._end("killed")
            raise
        tracked._end(tracked.status or "killed")

    def close(self, *, interrupted: bool = False) -> None:
        """Ends the study in every backend and warns how many tracking calls failed (once).

        Args:
            interrupted: The study did not run to its end (the MLflow parent run is then
                marked killed; resuming the study makes it run again).
        """
        if self._closed:
            return
        self._closed = True
        status = "killed" if interrupted else "finished"
        for backend in self._backends:
            self._guard(backend.name, "close", backend.close, status)
        # A backend turned off has had its warning, with its count.
        lost = {k: v for k, v in self._guard.failures.items() if v and k not in self._guard.off}
        if lost:
            counts = ", ".join(f"{k}: {v}" for k, v in lost.items())
            warnings.warn(
                f"tracking calls that failed ({counts}); the study directory has every result",
                TrackingWarning,
                stacklevel=2,
            )
        self._backends = []

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(interrupted=exc_type is not None)
