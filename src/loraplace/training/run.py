"""One controlled, fully measured training run: a strategy at a rank and a seed.

The seed fixes the LoRA initialisation, the dropout and the data order, so the same run gives
the same result, and every strategy of a study sees the same batches for a given seed. A
*final* run is evaluated on the eval split (per-example losses, optional accuracy and eval
losses at checkpoints during training); a *selection* run, one point of a learning-rate grid,
is scored on the validation split only and never reads the eval split.

The run directory holds ``metrics.jsonl`` (training curve and checkpoint evals),
``eval_examples.jsonl``, ``adapter/`` (PEFT format) and ``result.json``, written last and
atomically: its presence means the run is complete (see docs/FORMATS.md).
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import psutil
import torch

from loraplace import store
from loraplace.errors import LoraplaceError
from loraplace.placement.plan import Plan
from loraplace.progress import bar
from loraplace.settings import EvalSettings, LoraSettings
from loraplace.store import RunKey
from loraplace.training.choices import score_task, task_problems
from loraplace.training.evaluate import eval_accuracy, eval_losses
from loraplace.training.loop import TrainState, train_adapter
from loraplace.training.records import RunSpec, start_record, summary_line
from loraplace.training.resume import keep_metrics, load_resume, pickle_state, resume_recipe
from loraplace.training.workbench import Split, Workbench

__all__ = [
    "adopt_selection_run",
    "run_single",
    "train_one",
]


class _PeakMemory:
    """Peak process RSS (CPU; sampled every 50 ms) or peak CUDA allocation during a block."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak_bytes = 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            process = psutil.Process()
            self.peak_bytes = process.memory_info().rss

            def sample():
                while not self._stop.wait(0.05):
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)

    @property
    def mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)


def _losses(
    model, bench: Workbench, split: Split, evaluation: EvalSettings, prefix_layer: int, show: bool
):
    cache, _ = bench.prefix(split, prefix_layer)
    with bar(len(split.features), f"{split.name} loss", unit="ex", show=show) as progress:
        return eval_losses(
            model,
            split.features,
            bench.collator,
            batch_size=evaluation.batch_size,
            device=bench.device,
            dtype=bench.dtype,
            prefix=cache,
            progress=progress,
        )


def _mean_loss(rows) -> tuple[float, int]:
    tokens = sum(n for _, n, _ in rows)
    loss = sum(s for _, _, s in rows) / tokens if tokens else float("nan")
    return loss, tokens


def _fresh_adapter(bench: Workbench, plan: Plan, lora: LoraSettings, seed: int):
    """The run's PEFT model on a structural copy of the base, its LoRA weights seeded."""
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(seed)
    model = get_peft_model(
        bench.fresh_model(), plan.lora_config(lora.alpha, lora.dropout, lora.scaling)
    )
    trainable, total = model.get_nb_trainable_parameters()
    if trainable != plan.trainable_params or total != plan.total_params:
        raise AssertionError(
            f"PEFT counts {trainable}/{total}, "
            f"plan says {plan.trainable_params}/{plan.total_params}"
        )
    return model


def _checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / store.CHECKPOINTS_DIR / f"step{step}.safetensors"


def _save_state(model, path: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(path))


def _load_state(model, path: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path)))


def _evaluate_final(
    model,
    bench: Workbench,
    record: dict,
    evaluation: EvalSettings,
    layer: int,
    metrics,
    out_dir: Path,
    steps: int,
    show_progress: bool,
) -> dict | None:
    """The final run's evaluation: eval loss per example, optional accuracy, the adapter.

    Returns:
        The failed record when the eval loss is not finite, else ``None`` (``record`` updated).
    """
    rows = _losses(model, bench, bench.eval, evaluation, layer, show_progress)
    loss, tokens = _mean_loss(rows)
    if not math.isfinite(loss):
        return store.failed_result(record, "nan_loss")
    store.write_eval_examples(out_dir / store.EXAMPLES_FILE, rows)
    metrics.write(json.dumps({"step": steps, "eval_loss": loss, "eval_tokens": tokens}) + "\n")
    record.update({"eval_loss": loss, "perplexity": math.exp(loss), "eval_tokens": tokens})
    accuracy, samples = None, []
    if evaluation.accuracy_examples:
        problems = bench.eval.examples[: evaluation.accuracy_examples]
        with bar(len(problems), "accuracy", unit="problem", show=show_progress) as prog:
            accuracy, samples = eval_accuracy(
                model,
                bench.tokenizer,
                problems,
                max_new_tokens=evaluation.max_new_tokens,
                batch_size=evaluation.batch_size,
                device=bench.device,
                dtype=bench.dtype,
                progress=prog,
            )
    if samples:
        store.write_text_atomic(
            out_dir / store.GENERATIONS_FILE, "".join(json.dumps(s) + "\n" for s in samples)
        )
        record["correct"] = [bool(s["correct"]) for s in samples]
    record.update({"accuracy": accuracy, "accuracy_examples": len(samples)})
    # A task scored by accuracy (docs/CONCEPTS.md): every eval problem, each one's answer kept.
    problems = task_problems(bench.eval.examples)
    if problems:
        with bar(problems, "task accuracy", unit="problem", show=show_progress) as progress:
            task = score_task(
                model,
                bench.tokenizer,
                bench.eval.examples,
                bench.collator,
                loss_pass=eval_losses,
                batch_size=evaluation.batch_size,
                device=bench.device,
                dtype=bench.dtype,
                progress=progress,
            )
        store.write_text_atomic(out_dir / store.ANSWERS_FILE, task.jsonl())
        record.update(task.record())
    model.save_pretrained(out_dir / store.ADAPTER_DIR)
    return None


def _checkpoint_eval(model, bench, evaluation, layer, metrics, step, show_progress) -> None:
    loss, tokens = _mean_loss(_losses(model, bench, bench.eval, evaluation, layer, show_progress))
    metrics.write(json.dumps({"step": step, "eval_loss": loss, "eval_tokens": tokens}) + "\n")
    metrics.flush()


# C901: one run's phases in the order they happen.
def train_one(  # noqa: C901
    bench: Workbench,
    plan: Plan,
    key: RunKey,
    out_dir: Path,
    *,
    spec: RunSpec,
    keep_checkpoints: bool = False,
    show_progress: bool = True,
) -> dict:
    """Train ``plan`` for run ``key`` on the workbench's base model; write and return its record.

    Args:
        spec: the settings, learning rate, base metrics and automatic placement of the run.
        keep_checkpoints: a selection run saves its LoRA weights at the eval checkpoints and
            at the end, so the final run of its seed, if this learning rate is chosen, can be
            adopted from it instead of trained again (:func:`adopt_selection_run`).

    A non-finite training or eval loss ends the run with ``status: failed, error: nan_loss``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    selection = key.stage == "selection"
    record = start_record(plan, key, bench, spec)
    lora, training, evaluation = spec.lora, spec.training, spec.evaluation
    learning_rate = spec.learning_rate
    model = _fresh_adapter(bench, plan, lora, key.seed)
    # Below the lowest adapted layer nothing is trained, so nothing there changes (LoRA
    # dropout acts only inside adapted layers; base dropout below is checked by the cache).
    layer = plan.lowest_layer
    train_cache, prefix_reason = bench.prefix(bench.train, layer)
    record["prefix_cache"] = {
        "layer": layer,
        "used": train_cache is not None,
        "reason": prefix_reason,
    }
    checkpoints = evaluation.checkpoint_steps(training.steps)
    if selection and not keep_checkpoints:
        checkpoints = []
    recipe = resume_recipe(record, training)
    resume = load_resume(out_dir, recipe)
    if resume is not None:
        record["resumed_at"] = [*resume["resumed_at"], resume["state"].step]
        keep_metrics(out_dir / store.METRICS_FILE, resume["state"].step)

    def on_state(state: TrainState) -> None:
        store.write_bytes_atomic(
            out_dir / store.RESUME_FILE,
            pickle_state(
                {
                    "recipe": recipe,
                    "state": state,
                    "peak_memory_bytes": memory.peak_bytes,
                    "resumed_at": record.get("resumed_at", []),
                }
            ),
        )

    # Appended to line by line, never through a link or into a file another directory shares.
    with store.open_append(out_dir / store.METRICS_FILE, truncate=resume is None) as metrics:

        def on_step(row: dict) -> None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()

        def on_checkpoint(step: int) -> None:
            if selection:  # never the eval split: keep the weights for a later adoption
                _save_state(model, _checkpoint_path(out_dir, step))
            elif step != training.steps:  # the final evaluation covers the last step
                _checkpoint_eval(model, bench, evaluation, layer, metrics, step, show_progress)

        steps_bar = bar(training.steps, key.label(), unit="step", show=show_progress)
        try:
            with _PeakMemory(bench.device) as memory:
                outcome = train_adapter(
                    model,
                    bench.train.features,
                    steps=training.steps,
                    batch_size=training.batch_size,
                    learning_rate=learning_rate,
                    warmup_steps=training.warmup_steps,
                    weight_decay=training.weight_decay,
                    max_grad_norm=training.max_grad_norm,
                    seed=key.seed,
                    device=bench.device,
                    dtype=bench.dtype,
                    prefix=train_cache,
                    on_step=on_step,
                    checkpoint_steps=checkpoints,
                    on_checkpoint=on_checkpoint,
                    progress=steps_bar,
                    pad_token_id=bench.collator.pad_token_id,
                    resume=resume["state"] if resume is not None else None,
                    on_state=on_state,
                )
        finally:
            steps_bar.close()
        if resume is not None:  # the peak of every part of the run
            memory.peak_bytes = max(memory.peak_bytes, resume["peak_memory_bytes"])
        record.update(
            {
                "steps": outcome.steps,
                "train_time_s": round(outcome.train_time_s, 3),
                "train_tokens": outcome.train_tokens,
                "tokens_per_s": round(outcome.train_tokens / outcome.train_time_s, 2),
                "peak_memory_mb": memory.mb,
            }
        )
        if outcome.nonfinite:
            return _finish(out_dir, store.failed_result(record, "nan_loss"))

        eval_start = time.perf_counter()
        if selection and bench.validation.features:  # only learning-rate selection reads it
            loss, _ = _mean_loss(
                _losses(model, bench, bench.validation, evaluation, layer, show_progress)
            )
            record["validation_loss"] = loss if math.isfinite(loss) else None
            if selection and not math.isfinite(loss):
                return _finish(out_dir, store.failed_result(record, "nan_loss"))
        if not selection:
            failed = _evaluate_final(
                model,
                bench,
                record,
                evaluation,
                layer,
                metrics,
                out_dir,
                outcome.steps,
                show_progress,
            )
            if failed is not None:
                return _finish(out_dir, failed)
    return _finish_evaluated(out_dir, record, eval_start)


#: Training facts an adopted final run takes from the selection run it was trained as.
_ADOPTED = (
    "steps",
    "train_time_s",
    "train_tokens",
    "tokens_per_s",
    "peak_memory_mb",
    "validation_loss",
    "prefix_cache",
)


def adopt_selection_run(
    bench: Workbench,
    plan: Plan,
    key: RunKey,
    out_dir: Path,
    source: Path,
    *,
    spec: RunSpec,
    show_progress: bool = True,
) -> dict:
    """A final run whose training already happened: the selection run of the same condition,
    seed and (chosen) learning rate trained exactly this model. Its saved weights are
    evaluated on the eval split at every checkpoint, now that the choice is made.

    Args:
        source: the selection run's directory (finished, with ``checkpoints/``).

    Raises:
        FileNotFoundError: a checkpoint is missing (the caller trains the run instead).
    """
    lora, training, evaluation = spec.lora, spec.training, spec.evaluation
    origin = store.read_result(source)
    if origin is None or origin.get("status") != "finished":
        raise FileNotFoundError(f"{source} holds no finished selection run")
    steps = evaluation.checkpoint_steps(training.steps)
    missing = [s for s in steps if not _checkpoint_path(source, s).is_file()]
    if missing:
        raise FileNotFoundError(f"{source} has no checkpoint for steps {missing}")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = start_record(plan, key, bench, spec)
    record.update({k: origin.get(k) for k in _ADOPTED})
    record["adopted_from"] = f"{source.parent.name}/{source.name}"
    model = _fresh_adapter(bench, plan, lora, key.seed)
    layer = plan.lowest_layer
    eval_start = time.perf_counter()
    curve = [r for r in store.read_jsonl(source / store.METRICS_FILE) if "loss" in r]
    with store.open_append(out_dir / store.METRICS_FILE, truncate=True) as metrics:
        metrics.writelines(json.dumps(r) + "\n" for r in curve)
        for step in steps[:-1]:
            _load_state(model, _checkpoint_path(source, step))
            _checkpoint_eval(model, bench, evaluation, layer, metrics, step, show_progress)
        _load_state(model, _checkpoint_path(source, steps[-1]))
        failed = _evaluate_final(
            model,
            bench,
            record,
            evaluation,
            layer,
            metrics,
            out_dir,
            origin["steps"],
            show_progress,
        )
        if failed is not None:
            return _finish(out_dir, failed)
    return _finish_evaluated(out_dir, record, eval_start)


def _finish(out_dir: Path, record: dict) -> dict:
    store.write_result(out_dir, record)
    return record


def _finish_evaluated(out_dir: Path, record: dict, eval_start: float) -> dict:
    """Write the record of a run that trained and evaluated without failure."""
    record.update(
        {
            "status": "finished",
            "eval_time_s": round(time.perf_counter() - eval_start, 3),
            "finished_at": store.now(),
        }
    )
    return _finish(out_dir, record)


def run_single(config, key: RunKey, out: Path, *, force: bool = False) -> dict:
    """``loraplace run``: one run of ``config``'s single strategy, outside any study.

    The run is the same as that strategy's run with that seed in a study with the same config
    (same data, plan, seed and code path), so their eval losses agree.

    ``out`` must be new, empty, or a run directory (only files a run writes): anything else
    is refused, with or without ``force``, and nothing in ``out`` is removed before the model
    and data have loaded.

    ``out`` is locked like a study directory (:class:`~loraplace.store.DirectoryLock`) for the
    whole run, so a second ``loraplace run`` on it is refused.

    Raises:
        LoraplaceError: ``out`` is a file, holds anything but a run, holds a finished run and
            ``force`` is not set, is in use by another run, or cannot be written.
    """

    if out.exists() and not out.is_dir():
        raise LoraplaceError(f"--out '{out}' is a file, not a directory; choose another --out")
    foreign = store.foreign_entries(out)
    if foreign:
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise LoraplaceError(
            f"'{out}' holds files no run writes ({listed}); nothing was changed there: choose a "
            "new or empty directory with --out"
        )
    store.check_writable(out)
    with store.DirectoryLock(out, kind="run directory"):
        return _run_locked(config, key, out, force)


def _run_locked(config, key: RunKey, out: Path, force: bool) -> dict:
    """:func:`run_single` once its run directory is checked and locked."""
    if store.read_result(out) is not None and not force:
        raise LoraplaceError(
            f"'{out}' already holds a finished run; pass --force to replace it or choose --out"
        )
    plan = config.plan_for(key)
    print(f"loading {config.model} and {config.data.dataset} ...", flush=True)
    bench = Workbench.for_config(config)
    print(
        f"{key.name}: {plan.trainable_params:,} trainable parameters ({plan.trainable_pct:.3f}% "
        f"of {plan.total_params:,}), {len(plan.targets)} modules, seed {key.seed}",
        flush=True,
    )
    base = bench.base_metrics(config.eval)
    # An interrupted forced run must not leave the old result beside a new partial curve.
    store.clear_run_dir(out, keep=(store.LOCK_FILE,))
    result = train_one(
        bench,
        plan,
        key,
        out,
        spec=RunSpec(
            config.lora,
            config.training,
            config.eval,
            config.training.learning_rate,
            base=base,
        ),
    )
    print(summary_line(result))
    print(f"written to {out}")
    return result
