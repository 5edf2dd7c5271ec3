"""Score a study's adapters with lm-evaluation-harness: ``loraplace evaluate --lm-eval``.

lm-evaluation-harness (``lm-eval``, the optional extra ``[lmeval]``) is the common reference for
task accuracy. :func:`evaluate_study` loads the study's base model once and scores it, then
every finished final run with its adapter on top, on the tasks asked for, and writes the scores
beside each run (``runs/<run>/lm_eval.json``) and beside ``base.json`` (``lm_eval_base.json``).

Two kinds of task:

- **loraplace's built-in tasks** (``piqa``, ``boolq``, ``asdiv``, ``tweet-sentiment``). The
  problems are the eval split a study on that task scores, with the study's ``split_seed`` and
  ``eval_examples``; they are written to a local JSONL file that the task's YAML, shipped in
  ``loraplace/lmeval/tasks/``, reads. The YAML builds the prompt from the problem's own fields,
  so lm-eval checks loraplace's prompts as well as its scoring. Where the study's data is that
  task, each run's record also counts the problems on which lm-eval chose the answer
  loraplace's scorer chose (``agreement``).
- **any other lm-eval task** the user has data for: a name from lm-eval's own registry whose
  dataset is already in the Hugging Face cache, or a task YAML in a directory given with
  ``--include``. Hub access is switched off, so a task whose data is not on the machine fails
  with one line instead of downloading.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from loraplace import store
from loraplace.config.study import load_study_config
from loraplace.errors import LoraplaceError, one_line
from loraplace.settings import DataConfig

__all__ = [
    "BUILTIN_LMEVAL_TASKS",
    "EXTRA",
    "LmEvalTask",
    "evaluate_study",
    "lm_eval_scores",
    "prepare_tasks",
    "require_lm_eval",
    "task_manager",
]

EXTRA = "lmeval"
"""The optional extra that installs lm-evaluation-harness (``pip install 'loraplace[lmeval]'``)."""

#: loraplace's built-in tasks and the names of their lm-eval YAMLs (``tasks/<name>.yaml``).
BUILTIN_LMEVAL_TASKS = {
    "piqa": "loraplace_piqa",
    "boolq": "loraplace_boolq",
    "asdiv": "loraplace_asdiv",
    "tweet-sentiment": "loraplace_tweet_sentiment",
}

DEFAULT_BATCH_SIZE = 8
"""Sequences per forward pass of lm-eval."""


def require_lm_eval() -> None:
    """Raise one line naming the extra when lm-evaluation-harness is not installed.

    Raises:
        LoraplaceError: ``lm_eval`` cannot be imported.
    """
    if importlib.util.find_spec("lm_eval") is None:
        raise LoraplaceError(
            f"lm-evaluation-harness is not installed; it is the optional extra [{EXTRA}]: "
            f"pip install 'loraplace[{EXTRA}]' (make setup installs it)"
        )


@dataclass
class LmEvalTask:
    """One task as lm-eval runs it, and, for a built-in task, the problems written for it."""

    name: str
    """As the user wrote it (``piqa``, ``hellaswag``)."""
    lm_eval_name: str
    """Its name in lm-eval's task manager (``loraplace_piqa``, ``hellaswag``)."""
    examples: list = field(default_factory=list)
    """The problems of a built-in task, in the order written (lm-eval's ``doc_id``)."""
    data_sha256: str | None = None
    """SHA-256 of the JSONL file written for a built-in task."""

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_LMEVAL_TASKS


def _yaml(task: str, data_file: Path, cache_dir: Path) -> str:
    text = (
        resources.files("loraplace.lmeval")
        .joinpath("tasks", f"{BUILTIN_LMEVAL_TASKS[task]}.yaml")
        .read_text(encoding="utf-8")
    )
    # JSON strings are YAML strings: any path is quoted safely.
    return text.replace("LORAPLACE_DATA_FILE", json.dumps(str(data_file))).replace(
        "LORAPLACE_CACHE_DIR", json.dumps(str(cache_dir))
    )


def prepare_tasks(
    names: list[str], data: DataConfig, workdir: Path, *, limit: int | None = None
) -> list[LmEvalTask]:
    """Write each built-in task's problems and YAML into ``workdir`` (an lm-eval include path).

    Args:
        names: the tasks, built-in or lm-eval's.
        data: the study's data settings: a built-in task's problems are the eval split that a
            study on it with this ``split_seed`` and ``eval_examples`` scores.
        workdir: an empty scratch directory.
        limit: keep the first ``limit`` problems of each built-in task.

    Raises:
        DataError: a built-in task's package is missing or has fewer problems than asked.
    """
    # Deferred: importing it loads torch.
    from loraplace.data.sources import load_splits

    tasks = []
    for name in names:
        if name not in BUILTIN_LMEVAL_TASKS:
            tasks.append(LmEvalTask(name, name))
            continue
        split = load_splits(
            DataConfig(
                dataset=name,
                train_examples=1,
                eval_examples=data.eval_examples,
                split_seed=data.split_seed,
                max_length=data.max_length,
            )
        )
        examples = split.eval[:limit] if limit else split.eval
        lines = "".join(json.dumps(e.doc, sort_keys=True) + "\n" for e in examples)
        data_file = workdir / f"{BUILTIN_LMEVAL_TASKS[name]}.jsonl"
        data_file.write_text(lines, encoding="utf-8")
        (workdir / f"{BUILTIN_LMEVAL_TASKS[name]}.yaml").write_text(
            _yaml(name, data_file, workdir / "datasets-cache"), encoding="utf-8"
        )
        digest = hashlib.sha256(lines.encode()).hexdigest()
        tasks.append(LmEvalTask(name, BUILTIN_LMEVAL_TASKS[name], list(examples), digest))
    return tasks


def _metrics(results: dict) -> dict[str, float]:
    """``{"acc": 0.6, ...}`` from lm-eval's ``{"acc,none": 0.6, "acc_stderr,none": ...}``."""
    out = {}
    for key, value in results.items():
        metric, _, _ = key.partition(",")
        if "," in key and not metric.endswith("_stderr") and isinstance(value, (int, float)):
            out[metric] = float(value)
    return out


def _sample(task: LmEvalTask, sample: dict) -> dict:
    """One problem's answer as lm-eval gave it: each choice's log-likelihood and the choice
    under acc and acc_norm, or the generated text and the number kept."""
    row = {"doc_id": int(sample["doc_id"]), "target": sample.get("target")}
    responses = sample.get("resps") or []
    if responses and isinstance(responses[0][0], (list, tuple)):  # loglikelihood requests
        logliks = [float(r[0][0]) for r in responses]
        chars = [len(args[1]) - len(" ") for args in sample["arguments"]]
        row.update(
            {
                "loglik": logliks,
                "chosen": max(range(len(logliks)), key=lambda i: (logliks[i], -i)),
                "chosen_norm": max(
                    range(len(logliks)), key=lambda i: (logliks[i] / max(chars[i], 1), -i)
                ),
            }
        )
    elif responses:
        row.update(
            {"response": responses[0][0], "filtered": (sample.get("filtered_resps") or [None])[0]}
        )
    for metric in ("acc", "acc_norm", "exact_match"):
        if metric in sample:
            row[metric] = float(sample[metric])
    return row


def task_manager(tasks: list[LmEvalTask], include: list[Path]):
    """lm-eval's task manager over its registry and ``include``, once every task is known.

    Raises:
        LoraplaceError: lm-eval is not installed, or knows none of some task.
    """
    require_lm_eval()
    # Nothing is fetched from a hub at run time: a task whose data is not local fails instead.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # Deferred: importing it loads torch, transformers, datasets.
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    manager = TaskManager(include_path=[str(p) for p in include] or None)
    unknown = [t.name for t in tasks if t.lm_eval_name not in manager.all_tasks]
    if unknown:
        raise LoraplaceError(
            f"lm-eval knows no task {', '.join(map(repr, unknown))}; give loraplace's built-in "
            f"{', '.join(BUILTIN_LMEVAL_TASKS)}, a task of lm-eval's registry, or a directory of "
            "task YAMLs with --include"
        )
    return manager


def lm_eval_scores(
    model,
    tokenizer,
    tasks: list[LmEvalTask],
    manager,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
) -> dict:
    """Scores of ``model`` (a causal LM in memory, PEFT-wrapped or not) on ``tasks``.

    Args:
        manager: lm-eval's task manager (:func:`task_manager`).
        limit: problems per task (lm-eval's ``limit``); a built-in task is already cut.

    Returns:
        ``{"lm_eval": version, "limit", "tasks": {name: {"task", "metrics", "problems"}},
        "samples": {name: [per problem]}}``.

    Raises:
        LoraplaceError: lm-eval cannot load or run a task.
    """
    # Deferred: importing it loads torch, transformers, datasets.
    from lm_eval import __version__ as version
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    by_name = {t.lm_eval_name: t for t in tasks}
    try:
        output = simple_evaluate(
            model=lm,
            tasks=list(by_name),
            task_manager=manager,
            limit=limit,
            log_samples=True,
            bootstrap_iters=0,
        )
    except Exception as exc:  # noqa: BLE001 - a task's data or config failing is one line
        raise LoraplaceError(
            f"lm-eval could not run {', '.join(t.name for t in tasks)}: {one_line(exc)} (hub "
            "access is off: a task's data must be on this machine)"
        ) from None
    found = {"lm_eval": version, "limit": limit, "tasks": {}, "samples": {}}
    for name, task in by_name.items():
        samples = sorted(output["samples"].get(name, []), key=lambda s: s["doc_id"])
        found["tasks"][task.name] = {
            "task": name,
            "metrics": _metrics(output["results"].get(name, {})),
            "problems": len(samples),
            "data_sha256": task.data_sha256,
        }
        found["samples"][task.name] = [_sample(task, s) for s in samples]
    return found


def _agreement(task: LmEvalTask, samples: list[dict], answers: list[dict]) -> dict | None:
    """How often lm-eval chose the answer loraplace's scorer chose, problem by problem."""
    mine = {row["example"]: row for row in answers}
    pairs = [(s, mine.get(s["doc_id"])) for s in samples]
    pairs = [(s, m) for s, m in pairs if m is not None]
    if not pairs:
        return None
    if "chosen" in pairs[0][1]:
        return {
            "problems": len(pairs),
            "same_choice": sum(s.get("chosen") == m["chosen"] for s, m in pairs),
            "same_choice_norm": sum(s.get("chosen_norm") == m["chosen_norm"] for s, m in pairs),
        }
    return {
        "problems": len(pairs),
        "same_number": sum(
            str(s.get("filtered") or "").replace(",", "") == (m["prediction"] or "")
            for s, m in pairs
        ),
    }


def _with_agreement(found: dict, tasks: list[LmEvalTask], study_task: str, answers: Path) -> dict:
    rows = store.read_jsonl(answers) if answers.is_file() else []
    for task in tasks:
        if task.name == study_task and rows:
            agreement = _agreement(task, found["samples"][task.name], rows)
            if agreement is not None:
                found["tasks"][task.name]["agreement"] = agreement
    return found


def _summary(label: str, found: dict) -> str:
    parts = []
    for name, task in found["tasks"].items():
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(task["metrics"].items()))
        text = f"{name}: {metrics} ({task['problems']} problems)"
        agreement = task.get("agreement")
        if agreement:
            same = agreement.get("same_choice", agreement.get("same_number"))
            text += f", same answer as loraplace's scorer on {same}/{agreement['problems']}"
        parts.append(text)
    return f"{label}: " + "; ".join(parts)


def evaluate_study(
    study_dir: str | Path,
    tasks: list[str],
    *,
    limit: int | None = None,
    include: list[str | Path] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    force: bool = False,
) -> dict[str, dict]:
    """Score the base model and every finished final run's adapter of a study with lm-eval.

    Args:
        study_dir: a study directory (its ``study.yaml`` names the model and data).
        tasks: built-in or lm-eval task names.
        limit: problems per task.
        include: directories of the user's own task YAMLs.
        batch_size: sequences per forward pass.
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        force: score again a run whose ``lm_eval.json`` has these tasks, limit and problems.

    Returns:
        ``{"base" or run directory: scores}``, as written to ``lm_eval_base.json`` and each
        ``runs/<run>/lm_eval.json``.

    Raises:
        LoraplaceError: lm-eval is not installed (naming the extra), the directory is not a
            study, a task is unknown or its data is not on this machine.
    """
    require_lm_eval()
    study_dir = Path(study_dir)
    if not store.has_study_config(study_dir):
        raise LoraplaceError(f"'{study_dir}' is not a study directory (no {store.STUDY_FILE})")
    if not tasks:
        raise LoraplaceError("--lm-eval needs at least one task")
    config = load_study_config(study_dir / store.STUDY_FILE, check_model=False)
    # Deferred: importing it loads torch, transformers, peft.
    from peft import PeftModel

    from loraplace.models import load_model, load_tokenizer, resolve_model
    from loraplace.training.workbench import pick_device

    device, _ = pick_device(device or config.device)
    written = {}
    with tempfile.TemporaryDirectory(prefix="loraplace-lmeval-") as scratch:
        prepared = prepare_tasks(tasks, config.data, Path(scratch), limit=limit)
        manager = task_manager(prepared, [Path(scratch), *map(Path, include)])
        keys = {t.name: {"data_sha256": t.data_sha256, "limit": limit} for t in prepared}
        runs = []
        for run_key in config.run_keys():
            run_dir = run_key.run_dir(study_dir)
            record = store.read_result(run_dir)
            if run_key.stage != "final" or not record or record.get("status") != "finished":
                continue
            if not (run_dir / store.ADAPTER_DIR).is_dir():
                print(f"{run_key.relpath}: no adapter/ (an exported study keeps no weights)")
                continue
            runs.append((run_key.relpath, run_dir))
        source = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
        tokenizer = load_tokenizer(source)
        base = load_model(source, device=device)
        base.requires_grad_(False)
        base.eval()
        study_task = config.data.dataset.strip()
        targets = [
            ("base", study_dir / store.LMEVAL_BASE_FILE, study_dir / store.BASE_ANSWERS_FILE, None)
        ] + [
            (label, run_dir / store.LMEVAL_FILE, run_dir / store.ANSWERS_FILE, run_dir)
            for label, run_dir in runs
        ]
        for label, out, answers, run_dir in targets:
            stored = store.read_json(out) or {"tasks": {}, "samples": {}}
            done = stored.get("tasks", {})
            todo = [t for t in prepared if force or done.get(t.name, {}).get("key") != keys[t.name]]
            if not todo:
                print(f"{label}: already scored ({out.name}); --force scores it again")
                written[label] = stored
                continue
            model = base
            if run_dir is not None:
                memo = {id(p): p for p in base.parameters()}
                memo.update({id(b): b for b in base.buffers()})
                model = PeftModel.from_pretrained(
                    copy.deepcopy(base, memo), run_dir / store.ADAPTER_DIR
                ).eval()
            found = lm_eval_scores(
                model,
                tokenizer,
                todo,
                manager,
                limit=limit,
                batch_size=batch_size,
                device=device,
            )
            found = _with_agreement(found, todo, study_task, answers)
            for name in found["tasks"]:
                found["tasks"][name]["key"] = keys[name]
            # Scores of other tasks, from earlier calls, are kept beside the new ones.
            merged = {
                "lm_eval": found["lm_eval"],
                "tasks": {**done, **found["tasks"]},
                "samples": {**stored.get("samples", {}), **found["samples"]},
            }
            store.write_json_atomic(out, merged)
            print(_summary(label, found), flush=True)
            written[label] = merged
    return written
