"""Runs shared between studies: a run that another study already made, exactly as this study
would make it, is copied instead of trained again.

Two studies often share a condition: an automatic placement is compared against the same hand
placement that a budget-curve study already trained, with the same model, data, training and
seeds. ``reuse: [DIR, ...]`` in a study config names such studies. Before training a run, the
study looks in them for a finished run with the same

- model files and data content (``identity.json``);
- recipe: every config key a run depends on (model, data, LoRA alpha, dropout and scaling,
  training, eval, device), which excludes only the keys that choose *which* runs a study makes
  (name, strategies, ranks, seeds, learning-rate grid, reference) or do not touch a run
  (report, Ray, trackers, reuse);
- stage, seed and learning rate;
- placement: the exact rank of every (layer, role), so the strategy's name and spelling may
  differ (``all:r2`` here, ``all`` at sweep rank 2 there);
- torch, transformers, peft and loraplace versions and device kind as this process.

A match is copied (its adapter too, not a selection run's checkpoints) with its measured
times, losses and per-example eval losses; its ``result.json`` names this study's strategy and
rank and records where it came from in ``reused_from``. The copy's ``result.json`` is written
last, so an interrupted copy is redone like any interrupted run. Wall times of a copied run
were measured in the other study, under that study's machine load. See docs/STUDIES.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from loraplace import store
from loraplace.config.study import StudyConfig, read_yaml
from loraplace.errors import LoraplaceError
from loraplace.provenance import versions
from loraplace.settings import NO_RUN, RECORDED, STUDY_ONLY, TrainingSettings, keys_of_scope
from loraplace.store import RunKey
from loraplace.studies.selection import Job, choose_learning_rates

__all__ = [
    "Donor",
    "find_donors",
    "find_run",
    "recipe",
    "reuse_runs",
    "reuser",
    "study_donors",
    "to_be_copied",
    "without_copies",
]

#: Config keys that choose which runs a study makes, or that no run depends on.
_NOT_RECIPE = keys_of_scope(StudyConfig, STUDY_ONLY, NO_RUN)
#: Training keys that choose learning rates and seeds; a run's own rate and seed are compared.
_NOT_RECIPE_TRAINING = keys_of_scope(TrainingSettings, STUDY_ONLY, RECORDED)
#: Versions a copied run must share with this process.
_VERSIONS = ("loraplace", "torch", "transformers", "peft")
#: What of a run is not copied: a selection run's checkpoints, kept only for its own study.
_NOT_COPIED = (store.CHECKPOINTS_DIR,)


def recipe(config_dict: dict) -> dict:
    """The part of a saved study config that every one of its runs depends on (a section that
    is not a mapping, in a damaged donor's config, is kept as it is and so differs)."""
    out = {k: v for k, v in config_dict.items() if k not in _NOT_RECIPE}
    training = out.get("training") or {}
    if isinstance(training, dict):
        out["training"] = {k: v for k, v in training.items() if k not in _NOT_RECIPE_TRAINING}
    lora = out.get("lora") or {}
    if isinstance(lora, dict):  # the placement has the ranks
        out["lora"] = {k: v for k, v in lora.items() if k != "rank"}
    return out


def _placement_key(placement: dict) -> str:
    return json.dumps({str(k): v for k, v in placement.items()}, sort_keys=True)


@dataclass
class Donor:
    """A study directory whose finished runs can stand in for this study's."""

    path: Path
    runs: dict[tuple, Path] = field(default_factory=dict)
    """``(stage, seed, learning rate, placement)`` -> run directory."""

    def find(self, stage: str, seed: int, learning_rate: float, placement: dict) -> Path | None:
        for (s, k, lr, p), run_dir in self.runs.items():
            if (s, k, p) == (stage, seed, _placement_key(placement)) and math.isclose(
                lr, learning_rate, rel_tol=1e-9
            ):
                return run_dir
        return None


def _run_dirs(path: Path) -> list[Path]:
    """A donor's run directories, its own only: a link among them is passed over (a note)."""
    found, links = [], []
    for part in (store.SELECTION_DIR, store.RUNS_DIR):
        where = path / part
        if where.is_symlink():
            links.append(where)
        elif where.is_dir():
            for entry in sorted(os.scandir(where), key=lambda e: e.name):
                if entry.is_symlink():
                    links.append(Path(entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    found.append(Path(entry.path))
    if links:
        print(
            f"loraplace: note: reuse does not follow links: {store.describe(links)} in "
            f"'{path}' passed over",
            file=sys.stderr,
            flush=True,
        )
    return found


def _donor_record(run_dir: Path) -> dict | None:
    """A donor run's finished record, or ``None``; a damaged one is passed over with a note."""
    path = run_dir / store.RESULT_FILE
    record = None if path.is_symlink() else store.read_json(path)
    if record is None or record.get("status") != "finished":
        return None  # in progress, interrupted, failed, or a link
    problem = store.record_problem(record)
    if problem is not None:
        print(f"  reuse: skipping run '{run_dir}': its result.json is damaged ({problem})")
        return None
    return record


def _index(path: Path, versions: dict, device: str) -> dict[tuple, Path]:
    runs = {}
    for run_dir in _run_dirs(path):
        record = _donor_record(run_dir)
        if record is None:
            continue
        made_with = record.get("versions") or {}
        if any(made_with.get(k) != versions.get(k) for k in _VERSIONS):
            continue
        if (record.get("hardware") or {}).get("device") != device:
            continue
        lr = record.get("learning_rate")
        if not isinstance(lr, (int, float)) or not isinstance(record.get("placement"), dict):
            continue
        key = (
            record.get("stage", "final"),
            record.get("seed"),
            float(lr),
            _placement_key(record["placement"]),
        )
        runs.setdefault(key, run_dir)
    return runs


def find_donors(config_dict: dict, identity: dict, paths: list[str], device: str) -> list[Donor]:
    """The studies of ``paths`` whose runs this study may copy, with a note for each other one.

    A path that does not exist, or holds a study with another recipe, model or data, is skipped
    with a printed note: reuse saves time, it never changes a result.
    """

    mine = recipe(config_dict)
    now = versions()
    kind = "cuda" if device.startswith("cuda") else "cpu"
    donors = []
    for text in paths:
        path = Path(text)
        why = None if path.is_dir() else "no such directory"
        try:
            theirs = read_yaml(path / store.STUDY_FILE) if store.has_study_config(path) else None
        except LoraplaceError:
            theirs = None
        if why is not None:
            pass
        elif not isinstance(theirs, dict):
            why = "no readable study.yaml there"
        elif store.read_json(path / store.IDENTITY_FILE) != identity:
            why = "it was made with other model files or data"
        elif recipe(theirs) != mine:
            changed = sorted(
                k for k in set(mine) | set(recipe(theirs)) if mine.get(k) != recipe(theirs).get(k)
            )
            why = f"its runs were made differently (differs in: {', '.join(changed)})"
        if why is not None:
            print(f"  reuse: skipping '{path}': {why}", flush=True)
            continue
        donors.append(Donor(path, _index(path, now, kind)))
    return donors


def find_run(
    donors: list[Donor], stage: str, seed: int, learning_rate: float, placement: dict
) -> tuple[Donor, Path] | None:
    """The first donor run made as this run would be, with its donor; ``None`` without one."""
    for donor in donors:
        source = donor.find(stage, seed, learning_rate, placement)
        if source is not None:
            return donor, source
    return None


def reuse_runs(out: Path, jobs: list, donors: list[Donor], settings: dict) -> set[RunKey]:
    """Copy into ``out`` every run of ``jobs`` that a donor already made; returns their keys.

    Args:
        jobs: :class:`~loraplace.studies.Job` of runs not yet made.
        settings: this study's ``config`` block of ``result.json``
            (:func:`~loraplace.run_records.settings_record`).
    """
    # Deferred: importing it loads transformers.
    from loraplace.training.records import plan_record

    copied, used = set(), set()
    for job in jobs:
        key = job.key
        found = find_run(donors, key.stage, key.seed, job.learning_rate, job.plan.placement)
        if found is None:
            continue
        donor, source = found
        mine = {
            **plan_record(job.plan, key),
            "config": settings,
            "selected_from": job.selected_from,
            "auto": job.auto,
        }
        _copy_run(source, key.run_dir(out), mine, donor.path, out)
        copied.add(key)
        used.add(donor.path)
    if copied:
        where = ", ".join(f"'{path}'" for path in sorted(used))
        print(f"  reuse: {len(copied)} runs copied from {where} (reused_from in result.json)")
    return copied


def _copy_run(source: Path, target: Path, mine: dict, study: Path, out: Path) -> None:
    """Copy a donor's run into ``target`` (inside ``out``): its regular files only, never
    through a link (a note names what was passed over), ``result.json`` last."""
    store.clear_run_dir(target)
    store.make_dirs(target, within=out)
    files, passed = store.walk_files(source, prune=lambda rel: rel.parts[0] in _NOT_COPIED)
    for rel in files:
        if rel.parts[0] in _NOT_COPIED or rel == Path(store.RESULT_FILE):
            continue
        if not store.copy_file(source / rel, target / rel, within=out):
            passed.append(rel)
    passed = [rel for rel in passed if rel.parts[0] not in _NOT_COPIED]
    if passed:
        print(
            f"loraplace: note: reuse copies regular files only: {store.describe(sorted(passed))} "
            f"in '{source}' passed over",
            file=sys.stderr,
            flush=True,
        )
    record = store.read_result(source)
    # This study's names and settings for the run; everything measured stays the donor's.
    for name in ("name", "rank", "spec", "ranks", "matched_to", "config", "selected_from", "auto"):
        record[name] = mine[name]
    record["reused_from"] = (
        record.get("reused_from") or f"{study}/{source.parent.name}/{source.name}"
    )
    store.write_result(target, record)


def study_donors(config: StudyConfig, identity: dict, device: str) -> list[Donor]:
    """The donors of a study config's ``reuse`` directories (:func:`find_donors`)."""
    return find_donors(config.to_dict(), identity, config.reuse, device)


def reuser(config: StudyConfig, out: Path, donors: list[Donor]):
    """A filter of jobs: it copies each job another study already ran (``reuse``) and returns
    the jobs left to run."""
    # Deferred: importing it loads transformers.
    from loraplace.training.records import settings_record

    settings = settings_record(config.lora, config.training, config.eval)

    def reuse(jobs: list[Job]) -> list[Job]:
        copied = reuse_runs(out, jobs, donors, settings) if jobs and donors else set()
        return [job for job in jobs if job.key not in copied]

    return reuse


def to_be_copied(
    config: StudyConfig, out: Path, todo: list[RunKey], donors: list[Donor]
) -> set[RunKey]:
    """The runs of ``todo`` that ``reuse`` will copy rather than train: selection runs a donor
    made, and final runs a donor made at the learning rate their condition's selection runs
    (complete here, or to be copied) choose. Runs of automatic strategies are not yet placed."""

    def donated(key: RunKey, learning_rate) -> dict | None:
        if not donors or (key.name, key.rank) not in config.plans:
            return None
        placement = config.plan_for(key).placement
        found = find_run(donors, key.stage, key.seed, learning_rate, placement)
        return store.read_result(found[1]) if found else None

    def record(key: RunKey) -> dict | None:
        return store.read_result(key.run_dir(out)) or donated(key, key.learning_rate)

    choices = choose_learning_rates(config, out, record) if config.training.learning_rates else {}
    copied = set()
    for key in todo:
        if key.stage == "selection":
            rate = key.learning_rate
        elif config.training.learning_rates:
            rate = getattr(choices.get(key.condition), "chosen", None)
        else:
            rate = config.training.learning_rate
        if rate is not None and donated(key, rate) is not None:
            copied.add(key)
    return copied


def without_copies(
    config: StudyConfig, out: Path, todo: list[RunKey], donors: list[Donor]
) -> list[RunKey]:
    """``todo`` without the runs that ``reuse`` will copy, with a note of how many."""
    copied = to_be_copied(config, out, todo, donors)
    if copied:
        finals = sum(key.stage == "final" for key in copied)
        print(
            f"note: {len(copied) - finals} selection and {finals} final run(s) will be copied "
            "from the reuse directories, not trained",
            flush=True,
        )
    return [key for key in todo if key not in copied]
