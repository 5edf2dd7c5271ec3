"""The study directory before any run: what a study's results depend on (its config, model
files and data content), and the checks that let a study resume, grow or be refused.

A directory holds one study. Starting again with the same config, model and data resumes it;
a config that differs only in its seed list, or in a learning-rate grid that grew before the
first final run, grows it in place; anything else is refused with what differs, and nothing
there is changed.
"""

from __future__ import annotations

from pathlib import Path

from loraplace import store
from loraplace.config.study import StudyConfig, read_yaml
from loraplace.config.yamlio import dump_yaml
from loraplace.errors import LoraplaceError, one_line
from loraplace.settings import NO_RUN, keys_of_scope

__all__ = [
    "check_out",
    "identity_changes",
    "make_out",
    "prepare_study_dir",
    "same_study",
    "study_identity",
]

#: Parts of a model's identity that loraplace records only since it covers them (issue #44):
#: a study started before has none, and there they are unknown rather than changed.
ADDED_MODEL_PARTS = ("tokenizer", "generation")


def study_identity(config: StudyConfig) -> dict:
    """What the study's results depend on beyond its config: the model's files and the data's
    content. A resumed study whose model or data changed is refused."""
    # Deferred: importing it loads torch.
    from loraplace.data.sources import load_splits
    from loraplace.models import model_identity, resolve_model

    provenance = load_splits(config.data).provenance
    # Content, not location: a moved data file or environment keeps its identity.
    data = {k: provenance.get(k) for k in ("dataset", "sha256", "splits")}
    source = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    return {"model": model_identity(source), "data": data}


def identity_changes(stored: dict, current: dict) -> list[str]:
    """What differs between the identity a study recorded and the current one, each named for
    the user (``model tokenizer: chat_template.jinja``, ``data sha256``); empty when nothing
    recorded differs.

    A part of :data:`ADDED_MODEL_PARTS` that ``stored`` lacks was not recorded when the study
    started: unknown, not a change. Everything else is compared exactly, so a recorded file
    that is gone, or a file that was not there, is a change.
    """
    if not isinstance(stored, dict) or set(stored) != set(current):
        return sorted(current)
    changes = []
    for section in sorted(current):
        old, new = stored[section], current[section]
        if not isinstance(old, dict) or not isinstance(new, dict):
            changes += [section] if old != new else []
            continue
        for part in sorted(set(old) | set(new)):
            if section == "model" and part in ADDED_MODEL_PARTS and part not in old:
                continue
            before, after = old.get(part), new.get(part)
            if before == after:
                continue
            if isinstance(before, dict) and isinstance(after, dict):
                files = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                changes.append(f"{section} {part}: {', '.join(files)}")
            else:
                changes.append(f"{section} {part}")
    return changes


def _normalised(config_dict: dict) -> str:

    return dump_yaml(config_dict, sort_keys=True)


#: Top-level keys that do not change any run: trackers mirror results, the report reads them,
#: Ray options only place them, reuse only saves training them.
_NOT_RUN_KEYS = keys_of_scope(StudyConfig, NO_RUN)


def _without_seeds(config_dict: dict) -> dict:
    """The part of a config that every run depends on: not the seed list (runs are keyed by
    seed) and not :data:`_NOT_RUN_KEYS`."""
    training = {k: v for k, v in (config_dict.get("training") or {}).items() if k != "seeds"}
    kept = {k: v for k, v in config_dict.items() if k not in _NOT_RUN_KEYS}
    return {**kept, "training": training}


def _differences(old: dict, new: dict) -> str:
    return ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))) or "format"


def _grown_grid(previous: dict, resolved: dict) -> tuple[list, list] | None:
    """``(old grid, new grid)`` when the configs differ, beyond seeds, only in a learning-rate
    grid that kept every old value and added some; else ``None``."""

    def grid(config: dict) -> list:
        return list((config.get("training") or {}).get("learning_rates") or [])

    def rest(config: dict) -> str:
        kept = _without_seeds(config)
        training = {k: v for k, v in kept["training"].items() if k != "learning_rates"}
        return _normalised({**kept, "training": training})

    old, new = grid(previous), grid(resolved)
    if old and set(old) < set(new) and rest(previous) == rest(resolved):
        return old, new
    return None


def same_study(earlier: Path, later: Path) -> bool:
    """Whether the config in ``later`` is the study of ``earlier`` as it may have changed in
    place: the same except for its seed list, a learning-rate grid that grew, or keys that
    change no run (:data:`_NOT_RUN_KEYS`). An unreadable config is no study."""
    try:
        old, new = read_yaml(Path(earlier)), read_yaml(Path(later))
    except LoraplaceError:
        return False
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    unchanged = _normalised(_without_seeds(old)) == _normalised(_without_seeds(new))
    return unchanged or _grown_grid(old, new) is not None


def _check_grid_can_grow(config: StudyConfig, out: Path, grown: tuple[list, list]) -> None:
    """A grid may grow only while no final run is complete: a final run's learning rate was
    chosen from the grid it saw, and a larger grid may choose another."""
    old, new = grown
    finals = [k for k in config.run_keys() if k.stage == "final"]
    done = [k for k in finals if store.read_result(k.run_dir(out)) is not None]
    if done:
        raise LoraplaceError(
            f"'{out}' holds {len(done)} final run(s) chosen from the learning-rate grid "
            f"{old}; the grid can grow (now {new}) only before the first final run. Choose "
            "another directory with --out"
        )
    added = ", ".join(f"{lr:g}" for lr in new if lr not in old)
    print(
        f"note: the learning-rate grid grows from {', '.join(f'{lr:g}' for lr in old)} by "
        f"{added}; the selection runs made are kept, and the added rates run for every condition",
        flush=True,
    )


def prepare_study_dir(config: StudyConfig, out: Path, identity: dict) -> None:
    """Write ``study.yaml`` and ``identity.json`` into a new study directory, or check that an
    existing one holds this same config, model and data. Call it with the lock held.

    Raises:
        LoraplaceError: ``out`` holds a study with a different config, model or data (nothing
            there is changed).
    """

    resolved = config.to_dict()
    config_file = out / store.STUDY_FILE
    if config_file.exists():
        try:
            previous = read_yaml(config_file)
        except LoraplaceError:
            previous = None
        if not isinstance(previous, dict):
            raise LoraplaceError(
                f"'{config_file}' is not a readable study config; the directory was left as it is"
            )
        grown = _grown_grid(previous, resolved)
        if grown:
            _check_grid_can_grow(config, out, grown)
        elif _normalised(_without_seeds(previous)) != _normalised(_without_seeds(resolved)):
            raise LoraplaceError(
                f"'{out}' holds a study with a different config (differs in: "
                f"{_differences(previous, resolved)}); nothing was changed there: choose another "
                "directory with --out"
            )
        stored = store.read_json(out / store.IDENTITY_FILE)
        changes = identity_changes(stored, identity) if stored is not None else []
        if changes:
            sections = ", ".join(sorted({change.split()[0] for change in changes}))
            raise LoraplaceError(
                f"'{out}' was started with different {sections} files (changed since: "
                f"{one_line('; '.join(changes), 300)}); its runs would mix them. Restore them "
                "or choose another directory with --out"
            )
        if stored is None:
            store.write_json_atomic(out / store.IDENTITY_FILE, identity)
        if _normalised(previous) != _normalised(resolved):
            # Only the seed list changed, or the learning-rate grid grew before any final run:
            # every existing run's own config is the same, so the study can grow (or be
            # reported on fewer seeds) in place; existing runs stay valid.
            store.write_text_atomic(config_file, dump_yaml(resolved))
        return
    store.write_json_atomic(out / store.IDENTITY_FILE, identity)
    store.write_text_atomic(config_file, dump_yaml(resolved))


def make_out(out: Path) -> None:
    """Create the study directory ``out`` (a file there is refused)."""
    if out.exists() and not out.is_dir():
        raise LoraplaceError(f"--out '{out}' is a file, not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoraplaceError(f"cannot create study directory '{out}': {exc.strerror}") from None


#: What a study writes into its directory before ``study.yaml`` (a start killed there leaves
#: only these, and the next start takes over).
_STARTING = (store.LOCK_FILE, store.IDENTITY_FILE)


def check_out(out: Path) -> None:
    """Refuse a directory that holds something other than a study. Call it with the lock held,
    so a study being started by another process is never mistaken for foreign files."""
    if not store.is_study_dir(out):
        leftovers = [
            p for p in out.iterdir() if p.name not in _STARTING and not store.is_temporary(p.name)
        ]
        if leftovers:
            # No study can be using it; leave it as it was, without our lock file.
            (out / store.LOCK_FILE).unlink(missing_ok=True)
            raise LoraplaceError(
                f"'{out}' exists and is not a loraplace study directory; choose another --out"
            )
