"""Going on from an interrupted run: what a saved training state must have been made with
(the run, its settings, the versions and the training code), and reading it back.

A run saves ``resume.pt`` as it trains; a run started again goes on from it only when the
state was made by this same run and code, and otherwise trains from step 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from loraplace import store
from loraplace.settings import RECORDED, STUDY_ONLY, TrainingSettings, keys_of_scope

__all__ = [
    "keep_metrics",
    "load_resume",
    "pickle_state",
    "resume_recipe",
    "run_recipe",
    "training_code_hash",
]


#: The modules whose code decides what a training step computes.
_TRAINING_CODE = (
    "training/loop.py",
    "data/batching.py",
    "training/evaluate.py",
    "training/prefix.py",
)


def training_code_hash() -> str:
    """sha256 over the source of :data:`_TRAINING_CODE`: a state saved by other training code
    is not gone on from, even under the same version number."""
    import hashlib

    digest = hashlib.sha256()
    for name in _TRAINING_CODE:
        digest.update((Path(__file__).parents[1] / name).read_bytes())
    return digest.hexdigest()


#: Study-level training keys that no single run trains by: its seed and learning rate are its
#: own (in the record), so a study whose seed list or grid grows keeps its saved states.
_STUDY_ONLY = keys_of_scope(TrainingSettings, STUDY_ONLY, RECORDED)


def resume_recipe(record: dict, training: TrainingSettings) -> dict:
    """What a saved training state must have been made with to go on from it."""
    return run_recipe(
        {key: record.get(key) for key in ("name", "seed", "rank", "stage", "learning_rate")}
        | {
            "placement": record.get("placement"),
            "training": vars(training),
            "versions": record.get("versions"),
            "code": training_code_hash(),
        }
    )


def run_recipe(recipe) -> dict | None:
    """``recipe`` as plain JSON without :data:`_STUDY_ONLY` (states saved before this rule
    recorded them: they compare equal when nothing else differs)."""
    if not isinstance(recipe, dict):
        return None
    plain = json.loads(json.dumps(recipe))
    training = plain.get("training")
    if isinstance(training, dict):
        plain["training"] = {k: v for k, v in training.items() if k not in _STUDY_ONLY}
    return plain


def pickle_state(obj) -> bytes:
    """``obj`` as the bytes ``torch.save`` writes, for an atomic write of ``resume.pt``."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_resume(out_dir: Path, recipe: dict) -> dict | None:
    """The run's saved training state, if there is one made by this same run and code."""
    path = out_dir / store.RESUME_FILE
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - an unreadable state is only a lost shortcut
        saved = None
    if not isinstance(saved, dict) or run_recipe(saved.get("recipe")) != run_recipe(recipe):
        path.unlink(missing_ok=True)
        return None
    return saved


def keep_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step``: the ones the saved state has seen."""
    rows = [r for r in store.read_metrics(path) if r.get("step", 0) <= step]
    store.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
