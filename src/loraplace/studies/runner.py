"""Studies: every run of a config, run once, resumable, failures isolated.

A study has up to two stages. With a learning-rate grid (``training.learning_rates``), every
condition (strategy, rank) is first trained at each learning rate on the selection seeds and
scored on the validation split; its final runs then use the learning rate with the lowest
validation loss, and start as soon as that condition's own selection runs are complete (not
every condition's). The eval split is never used for that choice. Without a grid there is
only the final stage.

A run is complete exactly when its ``result.json`` exists (written atomically, last). On start
the runner skips complete runs, clears the leftovers of interrupted ones and runs the rest, so
killing the process at any moment (``kill -9`` included) and running the same command again
finishes the study without redoing or duplicating anything. One process at a time holds a
study directory (:class:`~loraplace.studies.lock.StudyLock`).

The caller writes the report afterwards (:func:`loraplace.study`, ``loraplace study``).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from loraplace import store
from loraplace.config.study import StudyConfig
from loraplace.errors import LoraplaceError
from loraplace.store import RunKey
from loraplace.studies.automatic import resolve_automatic
from loraplace.studies.estimate import print_estimate
from loraplace.studies.executors import make_executor
from loraplace.studies.identity import check_out, make_out, prepare_study_dir, study_identity
from loraplace.studies.lock import StudyLock
from loraplace.studies.reuse import reuser, study_donors, to_be_copied
from loraplace.studies.selection import Job, choose_learning_rates, collect_results, pending
from loraplace.studies.status import condition_times, run_states
from loraplace.training.records import summary_line

__all__ = ["run_study"]


def _final_jobs(
    config: StudyConfig, keys: list[RunKey], choices: dict, out: Path
) -> tuple[list[Job], list]:
    jobs, unresolved = [], []
    for key in keys:
        grid = config.training.learning_rates
        if not grid:
            jobs.append(
                Job(
                    key,
                    config.plan_for(key),
                    config.training.learning_rate,
                    None,
                    config.auto_for(key),
                )
            )
            continue
        choice = choices.get(key.condition)
        if choice is None or choice.chosen is None:
            unresolved.append((key, choice))
            continue
        adopt = None
        if config.adopts(key, out):
            adopt = RunKey(key.name, key.seed, key.rank, "selection", choice.chosen)
        jobs.append(
            Job(
                key,
                config.plan_for(key),
                choice.chosen,
                list(grid),
                config.auto_for(key),
                adopt_from=adopt,
            )
        )
    return jobs, unresolved


def _final_release(config: StudyConfig, out: Path, todo_final: list[RunKey], reuse, run):
    """A follow-up for the executor: the final runs of every condition whose selection runs
    are all complete, each condition released once, at the learning rate chosen for it.

    The executor calls it after each run, so a condition's final runs start as soon as its own
    selection ends rather than after every condition's: no core waits on a stage barrier. The
    choice reads only validation losses, whatever order the runs finish in.
    """
    waiting = {key.condition for key in todo_final}

    def release(job: Job | None = None) -> list[Job]:
        if not waiting or (job is not None and job.key.stage != "selection"):
            return []
        choices = choose_learning_rates(config, out)
        ready = waiting & choices.keys()
        if not ready:
            return []
        waiting.difference_update(ready)
        for condition in sorted(ready, key=str):
            choice = choices.get(condition)
            if choice is not None and choice.at_edge:
                print(
                    f"  note: {condition[0]}"
                    + (f" r{condition[1]}" if condition[1] else "")
                    + f": the chosen learning rate {choice.chosen:g} is at the grid's edge",
                    flush=True,
                )
        keys = [key for key in todo_final if key.condition in ready]
        jobs, unresolved = _final_jobs(config, keys, choices, out)
        for key, _choice in unresolved:
            run.record_failure(
                Job(key, config.plan_for(key), None),
                "no_learning_rate: every learning rate of the grid failed in selection",
            )
        return reuse(jobs)

    return release


def _longest_first(out: Path, config: StudyConfig, jobs: list[Job]) -> list[Job]:
    """``jobs`` in the order to queue them: first the interrupted runs that go on from a saved
    state (finishing what was started), then the longest expected, so the short ones fill the
    end of the study when runs go in parallel. A job is timed by its condition's finished runs
    (any stage); untimed ones go before timed ones, and a final run adopted from its selection
    run (evaluation only) after all the others. Ties keep the given order.

    Final runs that train come first among final runs for a second reason: the first final
    run to be complete closes the learning-rate grid to growth, and a long one started after
    the last selection run started is mostly complete after it."""
    if not jobs:  # called after every run; most release nothing
        return jobs
    times = condition_times(run_states(out, config))

    def order(job: Job) -> tuple[bool, float]:
        same = times.get(job.key.condition)
        expected = sum(same) / len(same) if same else math.inf
        if job.adopt_from is not None:
            expected = 0.0
        return not store.can_resume(job.key.run_dir(out)), -expected

    return sorted(jobs, key=order)


def _drop_adopted_checkpoints(config: StudyConfig, out: Path) -> None:
    """Selection runs keep their weights only until their seed's final run is complete."""
    for key in config.run_keys():
        checkpoints = key.run_dir(out) / store.CHECKPOINTS_DIR
        if key.stage != "selection" or not checkpoints.is_dir():
            continue
        final = RunKey(key.name, key.seed, key.rank)
        if key.seed not in config.training.seeds or store.read_result(final.run_dir(out)):
            shutil.rmtree(checkpoints, ignore_errors=True)


def _execute(
    config: StudyConfig,
    out: Path,
    token: str,
    executor: str,
    retry_failed: bool,
    show_progress: bool,
) -> tuple[list[dict], float]:
    """Run the pending runs of a prepared study directory (the lock held); returns its results
    and the start time."""
    keys = config.run_keys()
    selection = [k for k in keys if k.stage == "selection"]
    final = [k for k in keys if k.stage == "final"]
    todo_selection = pending(config, out, selection, retry_failed=retry_failed)
    todo_final = pending(config, out, final, retry_failed=retry_failed)
    conditions = len(config.conditions)
    print(
        f"study '{config.name}' in {out}: {len(keys)} runs ({conditions} conditions x "
        f"{len(config.training.seeds)} seeds"
        + (f", plus {len(selection)} selection runs" if selection else "")
        + f"); {len(keys) - len(todo_selection) - len(todo_final)} already complete, "
        f"{len(todo_selection) + len(todo_final)} to run",
        flush=True,
    )
    start = time.perf_counter()
    with make_executor(executor, config, out, token, show_progress) as run:
        if config.auto_strategies:
            resolve_automatic(config, out, run.workbench)
        donors = []
        if config.reuse:
            identity = store.read_json(out / store.IDENTITY_FILE)
            donors = study_donors(config, identity, run.workbench().device)
        reuse = reuser(config, out, donors) if donors else (lambda jobs: jobs)
        selection_jobs = reuse(
            [
                Job(
                    k,
                    config.plan_for(k),
                    k.learning_rate,
                    None,
                    config.auto_for(k),
                    keep_checkpoints=k.seed in config.training.seeds,
                )
                for k in todo_selection
            ]
        )
        if selection_jobs or todo_final:
            todo = [job.key for job in selection_jobs] + todo_final
            if donors:
                copied = to_be_copied(config, out, todo_final, donors)
                todo = [key for key in todo if key not in copied]
            print_estimate(config, out, todo, run.workbench())
        release = _final_release(config, out, todo_final, reuse, run)
        # Selection first: each one finished can release its condition's final runs.
        jobs = _longest_first(out, config, selection_jobs) + _longest_first(out, config, release())
        if jobs:
            run(
                jobs,
                stage="selection and final" if selection_jobs else "final",
                follow=lambda job: _longest_first(out, config, release(job)),
            )
    _drop_adopted_checkpoints(config, out)
    results = collect_results(config, out)
    return results, start


def _has_runs(out: Path) -> bool:
    return any(
        (out / part).is_dir() and any((out / part).iterdir())
        for part in (store.RUNS_DIR, store.SELECTION_DIR, store.AUTO_DIR)
    )


def run_study(
    config: StudyConfig,
    out: Path,
    *,
    executor: str = "local",
    retry_failed: bool = False,
    show_progress: bool = True,
) -> int:
    """Run every pending run of ``config`` into ``out``; returns the exit status.

    Returns:
        0 when every run finished, 1 when any run failed (each failure is recorded with its
        reason and the other runs still ran).

    Raises:
        LoraplaceError: the directory is in use, holds another study, or the disk is full.
    """
    if config.plans is None:
        raise ValueError("run_study needs a config loaded with check_model=True")
    out = Path(out)
    make_out(out)
    identity = study_identity(config)
    with StudyLock(out) as lock:
        check_out(out)
        created = not (out / store.STUDY_FILE).exists()
        prepare_study_dir(config, out, identity)
        try:
            results, start = _execute(
                config, out, lock.token, executor, retry_failed, show_progress
            )
        except LoraplaceError:
            # A new study that failed before any run (its data, say) keeps no config, so the
            # corrected config can start in the same directory.
            if created and not _has_runs(out):
                for name in (store.STUDY_FILE, store.IDENTITY_FILE):
                    (out / name).unlink(missing_ok=True)
            raise
        store.write_results_csv(out, results)
    finals = [r for r in results if r.get("stage", "final") == "final"]
    failed = [r for r in results if r["status"] == "failed"]
    print(
        f"study '{config.name}': {len(finals) - sum(r['status'] == 'failed' for r in finals)} "
        f"final runs finished, {len(failed)} runs failed, {time.perf_counter() - start:.0f} s "
        f"this session; results in {out / 'results.csv'}",
        flush=True,
    )
    for result in failed:
        print(f"  {summary_line(result)}", flush=True)
    return 1 if failed else 0
