"""``loraplace status DIR``: where a study stands, read from its directory alone.

Nothing is loaded but ``study.yaml`` and the run records: no model, no data. The estimate of
the time left uses the measured wall time of finished runs of the same condition and stage
(another strategy's or rank's runs can be several times faster or slower), falling back to the
mean over all finished runs of the stage, divided by how many runs were under way at a time
(Ray runs several at once; measured from the runs' start and end times). A final run adopted
from its selection run only evaluates, and is timed as one; a run that goes on from a saved
training state counts only the steps it has not logged.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from loraplace import store
from loraplace.config.study import load_study_config
from loraplace.errors import LoraplaceError
from loraplace.studies.lock import lock_holder

__all__ = [
    "study_status",
    "run_states",
    "time_left",
    "wall_time_left",
    "parallelism",
    "format_duration",
    "run_duration",
    "condition_times",
    "machine",
    "machines_line",
]


def format_duration(seconds: float | None) -> str:
    """``1 h 05 min``, ``12 min 30 s`` or ``45 s``."""
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def run_duration(result: dict) -> float | None:
    """A complete run's wall time from its record (``None`` without both timestamps)."""
    try:
        start = datetime.fromisoformat(result["started_at"])
        end = datetime.fromisoformat(result["finished_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (end - start).total_seconds())


def parallelism(results: list[dict]) -> float:
    """How many runs were under way at a time, on average, while any was: the summed wall time
    of ``results`` over the length of the union of their intervals (1.0 without overlap or
    without timestamps). Gaps between sessions count in neither."""
    spans = []
    for result in results:
        duration = run_duration(result) if result else None
        if duration:
            start = datetime.fromisoformat(result["started_at"]).timestamp()
            spans.append((start, start + duration))
    busy, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            busy += b - max(a, end)
            end = b
    return max(1.0, sum(b - a for a, b in spans) / busy) if busy > 0 else 1.0


def machine(result: dict) -> str | None:
    """The machine a run's record says it ran on: its ``hardware.platform`` (the host's OS
    build and name) and ``hardware.name`` (the processor, or the GPU), ``None`` when it says
    neither. The report compares it between the paired runs of a comparison."""
    hardware = result.get("hardware")
    if not isinstance(hardware, dict):
        return None
    parts = [str(hardware[k]) for k in ("platform", "name") if hardware.get(k)]
    return " / ".join(parts) or None


def machines_line(states) -> str | None:
    """The machines the complete runs of ``states`` ran on, each with how many runs, in the
    order of the runs (``None`` before any run is complete)."""
    counts = Counter(machine(result) or "unknown" for _, _, result in states if result)
    if not counts:
        return None
    listed = "; ".join(f"{name} ({n} run{'' if n == 1 else 's'})" for name, n in counts.items())
    return f"machines: {listed}"


def _study_config(out: Path):
    """The config saved in a study directory, read without loading the model."""

    if not store.has_study_config(out):
        interrupted = (
            "; it is an export that was interrupted: export the study again"
            if store.export_incomplete(out)
            else ""
        )
        raise LoraplaceError(f"'{out}' is not a study directory (no study.yaml){interrupted}")
    return load_study_config(out / store.STUDY_FILE, check_model=False)


def run_states(out: Path, config=None) -> list[tuple[store.RunKey, str, dict | None]]:
    """Every run of the study in ``out`` with its state: ``finished``, ``failed``,
    ``in progress`` (a directory without a result) or ``pending``.

    Args:
        config: the study's config (default: read from ``out/study.yaml``).
    """
    out = Path(out)
    if config is None:
        config = _study_config(out)
    states = []
    for key in config.run_keys():
        result = store.read_result(key.run_dir(out))
        if result is not None:
            states.append((key, result["status"], result))
        elif key.run_dir(out).exists():
            states.append((key, "in progress", None))
        else:
            states.append((key, "pending", None))
    return states


def _timed(states):
    """``(key, wall time)`` of every run in ``states`` whose record times it, except final runs
    adopted from their selection run (they only evaluate: :func:`time_left` times them apart)."""
    for key, _state, result in states:
        duration = run_duration(result) if result else None
        if duration is not None and not result.get("adopted_from"):
            yield key, duration


def condition_times(states) -> dict[tuple, list[float]]:
    """The wall times of each condition's complete runs, of either stage."""
    out: dict[tuple, list[float]] = defaultdict(list)
    for key, duration in _timed(states):
        out[key.condition].append(duration)
    return dict(out)


def _evaluation_time(config, states) -> float | None:
    """The expected wall time of an adopted final run: the adopted runs complete so far, else
    the trained final runs' evaluation time (which their records give for the last checkpoint
    alone) times the checkpoints an adopted run evaluates."""
    adopted, evals = [], []
    for key, state, result in states:
        if state != "finished":
            continue
        if result.get("adopted_from"):
            duration = run_duration(result)
            if duration is not None:
                adopted.append(duration)
        elif key.stage == "final" and result.get("eval_time_s") is not None:
            evals.append(result["eval_time_s"])
    if adopted:
        return sum(adopted) / len(adopted)
    if evals:
        checkpoints = len(config.eval.checkpoint_steps(config.training.steps))
        return sum(evals) / len(evals) * checkpoints
    return None


def _share_left(out: Path, key: store.RunKey, steps: int) -> float:
    """The share of a run in progress still to train: all of it without a saved training state
    (it starts over), else the steps not yet logged."""
    run_dir = key.run_dir(out)
    if not store.can_resume(run_dir):
        return 1.0
    logged = _logged_steps(run_dir)
    return 1.0 - min(max(logged, default=0), steps) / steps


def time_left(states, config=None, out: Path | None = None) -> tuple[float, float, int]:
    """``(spent, left, unknown)``: wall time of the complete runs, the estimated time of the
    others, and how many runs have nothing to be timed by yet. Each run is timed by the
    finished runs of its condition and stage; else of its condition in the other stage (a
    final run trains as its selection runs did); else of its stage.

    Args:
        config: the study's config. With it, a final run adopted from its selection run is
            timed as an evaluation (:func:`_evaluation_time`), not as a training run.
        out: the study directory. With it (and ``config``), a run in progress that can go on
            from a saved state counts only the share of its steps it has not logged.
    """
    times: dict[tuple, list[float]] = defaultdict(list)
    stage_times: dict[str, list[float]] = defaultdict(list)
    by_condition: dict[tuple, list[float]] = defaultdict(list)
    for key, duration in _timed(states):
        times[(key.stage, key.condition)].append(duration)
        stage_times[key.stage].append(duration)
        by_condition[key.condition].append(duration)
    spent = sum(run_duration(r) or 0.0 for _, _, r in states if r)
    evaluation = _evaluation_time(config, states) if config is not None else None
    left, unknown = 0.0, 0
    for key, state, _ in states:
        if state not in ("pending", "in progress"):
            continue
        if config is not None and config.adopts(key, out):
            expected = evaluation
        else:
            same = (
                times.get((key.stage, key.condition))
                or by_condition.get(key.condition)
                or stage_times.get(key.stage)
            )
            expected = sum(same) / len(same) if same else None
            if expected is not None and state == "in progress" and config and out:
                expected *= _share_left(Path(out), key, config.training.steps)
        if expected is None:
            unknown += 1
        else:
            left += expected
    return spent, left, unknown


def wall_time_left(states, config=None, out: Path | None = None) -> tuple[float, float, int, float]:
    """:func:`time_left`, with the time left divided by the runs at a time measured so far
    (:func:`parallelism`): ``(spent, left, unknown, at_once)``."""
    spent, left, unknown = time_left(states, config, out)
    at_once = parallelism([r for _, _, r in states])
    return spent, left / at_once, unknown, at_once


def _selection_line(config, out: Path, states) -> str | None:
    """How many conditions have a chosen learning rate, which lie at the grid's edge, and
    whether the grid may still grow (only before the first final run is complete)."""
    # Deferred: importing it loads torch.
    from loraplace.studies.selection import choose_learning_rates

    if not config.training.learning_rates:
        return None
    choices = choose_learning_rates(config, out)
    chosen = {c: choice for c, choice in choices.items() if choice.chosen is not None}
    edge = [
        f"{name}" + (f" r{rank}" if rank else "") + f" ({choice.chosen:g})"
        for (name, rank), choice in chosen.items()
        if choice.at_edge
    ]
    line = f"learning rates chosen: {len(chosen)} of {len(config.conditions)} conditions" + (
        f"; at the grid's edge: {', '.join(edge)}" if edge else ", none at the grid's edge"
    )
    closed = any(k.stage == "final" and result is not None for k, _, result in states)
    return line + (
        "; the grid can no longer grow (a final run is complete)"
        if closed
        else "; the grid can still grow (no final run is complete)"
    )


def study_status(out: Path) -> str:  # noqa: C901 (one count per run state, read from the directory in one pass)
    """A table of runs per stage and state, the wall time spent, the learning rates chosen so
    far and the estimated time left."""
    out = Path(out)
    config = _study_config(out)
    states = run_states(out, config)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for key, state, _ in states:
        counts[key.stage][state] += 1
    spent, left, unknown, at_once = wall_time_left(states, config, out)
    columns = ("finished", "failed", "in progress", "pending")
    holder = lock_holder(out)
    running = (
        f"running: pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
        f"{holder.get('started_at', '?')}"
        if holder is not None
        else "not running"
    )
    lines = [
        f"study directory: {out}",
        f"study process: {running}",
        f"{'stage':<10} " + " ".join(f"{c:>11}" for c in columns),
    ]
    if store.export_incomplete(out):
        lines.insert(
            1,
            f"export: incomplete (an interrupted `loraplace export` left {store.EXPORT_MARKER}); "
            "records may be missing: export the study again",
        )
    for stage in ("selection", "final"):
        if stage in counts:
            lines.append(f"{stage:<10} " + " ".join(f"{counts[stage][c]:>11}" for c in columns))
    selection = _selection_line(config, out, states)
    if selection:
        lines.append(selection)
    machines = machines_line(states)
    if machines:
        lines.append(machines)
    lines.append(f"wall time of complete runs: {format_duration(spent)}")
    if at_once > 1.05:
        lines.append(
            f"runs at a time: {at_once:.1f} on average (measured from the complete runs); the "
            "estimate below assumes the same"
        )
    if not unknown:
        estimate = format_duration(left)
    elif left:
        estimate = (
            f"{format_duration(left)} plus {unknown} run(s) with no finished run of their "
            "condition or stage to time them by"
        )
    else:
        estimate = (
            f"not known until a run of each stage finishes ({unknown} run(s) to time); "
            "`loraplace study CONFIG --estimate` prices them from a short calibration"
        )
    lines.append(f"estimated time to finish: {estimate if left or unknown else '0 s (complete)'}")
    for key, state, _ in states:
        if state == "in progress":
            lines.append(f"  in progress: {key.label()}: {_progress(out, key, holder is not None)}")
    failed = [(k, r) for k, s, r in states if s == "failed"]
    for key, result in failed:
        lines.append(f"  failed: {key.label()}: {result.get('error')}")
    return "\n".join(lines)


def _progress(out: Path, key: store.RunKey, running: bool = False) -> str:
    """How far an incomplete run got, from its training curve, and whether it can go on.

    Args:
        running: a study process holds the directory, so the run may be under way (it saves
            its training state every few minutes, so a young run has none yet) rather than
            interrupted.
    """
    run_dir = key.run_dir(out)
    steps = _logged_steps(run_dir)
    text = f"step {max(steps)} logged" if steps else "no step logged"
    damage = None
    if os.path.lexists(run_dir / store.RESULT_FILE):  # present, yet no complete record
        damage = store.record_problem(store.read_json(run_dir / store.RESULT_FILE))
    if damage is not None:
        text = f"result.json is damaged ({damage}), so the run is done again; " + text
    saved = store.can_resume(run_dir)
    if running:
        return text + ("; training state saved" if saved else "; no training state saved yet")
    if saved:
        return text + "; goes on from its saved training state"
    return text + "; no saved training state: starts over"


def _logged_steps(run_dir: Path) -> list[int]:
    """The optimizer steps a run's training curve holds."""
    return [r["step"] for r in store.read_metrics(run_dir / store.METRICS_FILE) if "loss" in r]
