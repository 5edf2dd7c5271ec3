"""One controlled, fully measured training run: (strategy, seed) -> ``runs/<name>--seed<k>/``.

The run wraps HF ``Trainer`` + PEFT without subclassing either: the data order is fixed up front
(length-grouped batches drawn with the run's seed, fed to ``Trainer`` in sequence), and
measurements are ``TrainerCallback``\\ s. The seed controls the LoRA initialisation, the dropout
and the data order, so the same (strategy, seed) gives the same result, and every strategy of a
study sees the same batches for a given seed.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from loraplace.data import length_grouped_batches
from loraplace.evaluate import (
    accepts_logits_mask,
    completion_loss,
    completion_positions,
    eval_accuracy,
    eval_loss,
)
from loraplace.files import write_json_atomic
from loraplace.placement import ModelPlanner
from loraplace.plan import Plan
from loraplace.settings import EvalSettings, LoraSettings, TrainingSettings
from loraplace.workbench import Workbench, hardware, versions

__all__ = [
    "run_dir_name",
    "plan_record",
    "base_record",
    "train_one",
    "write_json_atomic",
    "failed_result",
    "run_command",
]


def run_dir_name(name: str, seed: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.," else "_" for c in name)
    return f"{safe}--seed{seed}"


class _NonFiniteLoss(Exception):
    pass


class _Measure(TrainerCallback):
    """Training curve to ``metrics.jsonl``, progress bar, and a stop on a non-finite loss."""

    def __init__(
        self, metrics_path: Path, tokens_per_step: list[int], label: str, show_progress: bool
    ):
        self.path = metrics_path
        self.cumulative = [sum(tokens_per_step[: i + 1]) for i in range(len(tokens_per_step))]
        self.label = label
        self.show = show_progress
        self.bar = None
        self.start = None
        self.nonfinite = False
        self.handle = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.handle = open(self.path, "w")
        self.bar = tqdm(
            total=args.max_steps,
            desc=self.label,
            unit="step",
            leave=False,
            disable=not self.show,
            dynamic_ncols=True,
        )

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        step = state.global_step
        record = {
            "step": step,
            "loss": loss,
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": self.cumulative[min(step, len(self.cumulative)) - 1],
            "time_s": round(time.perf_counter() - self.start, 4),
        }
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        self.bar.set_postfix(loss=f"{loss:.3f}")
        if not math.isfinite(loss):
            self.nonfinite = True
            control.should_training_stop = True

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.handle is not None:
            self.handle.close()


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


class _CompletionBatches:
    """The study's collator, plus the mask of positions that need logits (see ``completion_positions``)."""

    def __init__(self, collator, mask_logits: bool):
        self.collator = collator
        self.mask_logits = mask_logits

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        if self.mask_logits:
            batch["logits_to_keep"] = completion_positions(batch["labels"])
        return batch


def _training_loss(outputs, labels, num_items_in_batch=None):
    """Mean next-token cross-entropy over the batch's scored tokens (``Trainer``'s ``compute_loss_func``)."""
    return completion_loss(outputs.logits, labels, num_items=num_items_in_batch)


def _ordered_features(
    features: list[dict], batch_size: int, steps: int, seed: int
) -> tuple[list[dict], list[int]]:
    """The exact training sequence: ``steps`` length-grouped batches, new epochs as needed."""
    lengths = [len(f["input_ids"]) for f in features]
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        batches += [
            b
            for b in length_grouped_batches(lengths, batch_size, seed + epoch)
            if len(b) == batch_size
        ]
        epoch += 1
        if epoch > 10_000:
            raise ValueError("cannot form a full batch: fewer training examples than batch_size")
    batches = batches[:steps]
    ordered = [features[i] for batch in batches for i in batch]
    tokens = [sum(lengths[i] for i in batch) for batch in batches]
    return ordered, tokens


def plan_record(plan: Plan, seed: int) -> dict:
    """The part of ``result.json`` that the plan alone decides (all a lost Ray worker leaves)."""
    return {
        "name": plan.name,
        "spec": plan.spec,
        "seed": seed,
        "ranks": plan.part_ranks,
        "targets": plan.targets,
        "placement": {str(k): v for k, v in plan.placement.items()},
        "num_layers": plan.num_layers,
        "matched_to": plan.matched_to,
        "status": None,
        "error": None,
        "trainable_params": plan.trainable_params,
        "total_params": plan.total_params,
        "trainable_pct": plan.trainable_pct,
    }


def base_record(
    plan: Plan,
    seed: int,
    bench: Workbench,
    lora: LoraSettings,
    training: TrainingSettings,
    evaluation: EvalSettings,
) -> dict:
    """The part of ``result.json`` known before training (also the body of a failed result)."""
    return {
        **plan_record(plan, seed),
        "available_roles": sorted(bench.arch.roles_present),
        "model": bench.source.describe(),
        "dataset": bench.data,
        "versions": versions(),
        "hardware": hardware(bench.device),
        "config": {
            "lora": vars(lora),
            "training": {k: v for k, v in vars(training).items() if k != "seeds"},
            "eval": vars(evaluation),
        },
    }


def failed_result(record: dict, error: str) -> dict:
    null_keys = (
        "eval_loss",
        "perplexity",
        "accuracy",
        "train_time_s",
        "train_tokens",
        "tokens_per_s",
    )
    return {
        **{k: None for k in null_keys},
        **record,
        "status": "failed",
        "error": error,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _record_failure(out_dir: Path, record: dict, error: str) -> dict:
    result = failed_result(record, error)
    write_json_atomic(out_dir / "result.json", result)
    return result


def train_one(
    bench: Workbench,
    plan: Plan,
    seed: int,
    out_dir: Path,
    *,
    lora: LoraSettings,
    training: TrainingSettings,
    evaluation: EvalSettings,
    show_progress: bool = True,
) -> dict:
    """Train ``plan`` with ``seed`` on the workbench's base model; write and return ``result.json``.

    The run directory gets ``metrics.jsonl`` (training curve), ``adapter/`` (PEFT format) and
    ``result.json`` (written last, atomically: its presence means the run is complete).
    A non-finite training loss stops the run early with ``status: failed, error: nan_loss``.
    """
    from peft import get_peft_model

    out_dir.mkdir(parents=True, exist_ok=True)
    record = base_record(plan, seed, bench, lora, training, evaluation)
    record["started_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    base = bench.base_metrics(evaluation)

    set_seed(seed)
    model = get_peft_model(bench.fresh_model(), plan.lora_config(lora.alpha, lora.dropout))
    trainable, total = model.get_nb_trainable_parameters()
    if trainable != plan.trainable_params or total != plan.total_params:
        raise AssertionError(
            f"PEFT counts {trainable}/{total}, plan says {plan.trainable_params}/{plan.total_params}"
        )

    ordered, tokens_per_step = _ordered_features(
        bench.train_features, training.batch_size, training.steps, seed
    )
    measure = _Measure(
        out_dir / "metrics.jsonl", tokens_per_step, f"{plan.name} seed {seed}", show_progress
    )
    cuda = bench.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="loraplace-trainer-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=training.steps,
            per_device_train_batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            warmup_steps=training.warmup_steps,
            lr_scheduler_type="linear",
            weight_decay=training.weight_decay,
            max_grad_norm=training.max_grad_norm,
            logging_steps=1,
            logging_nan_inf_filter=False,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=seed,
            data_seed=seed,
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            use_cpu=not cuda,
            bf16=cuda and bench.dtype == torch.bfloat16,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=ordered,
            data_collator=_CompletionBatches(bench.collator, accepts_logits_mask(model)),
            compute_loss_func=_training_loss,
            callbacks=[measure],
        )
        trainer.remove_callback(
            PrinterCallback
        )  # the progress bar and metrics.jsonl replace its prints
        try:
            with _PeakMemory(bench.device) as memory:
                start = time.perf_counter()
                trainer.train()
                train_time = time.perf_counter() - start
        finally:
            measure.close()

    steps_done = trainer.state.global_step
    train_tokens = sum(tokens_per_step[:steps_done])
    record.update(
        {
            "steps": steps_done,
            "train_time_s": round(train_time, 3),
            "train_tokens": train_tokens,
            "tokens_per_s": round(train_tokens / train_time, 2),
            "peak_memory_mb": memory.mb,
            "base_eval_loss": base["eval_loss"],
            "base_perplexity": math.exp(base["eval_loss"]),
            "base_accuracy": base["accuracy"],
        }
    )
    if measure.nonfinite:
        return _record_failure(out_dir, record, "nan_loss")

    eval_start = time.perf_counter()
    loss, scored = eval_loss(
        model,
        bench.eval_features,
        bench.collator,
        batch_size=evaluation.batch_size,
        device=bench.device,
        dtype=bench.dtype,
    )
    if not math.isfinite(loss):
        return _record_failure(out_dir, record, "nan_loss")
    accuracy, samples = None, []
    if evaluation.accuracy_examples:
        accuracy, samples = eval_accuracy(
            model,
            bench.tokenizer,
            bench.eval_examples[: evaluation.accuracy_examples],
            max_new_tokens=evaluation.max_new_tokens,
            batch_size=evaluation.batch_size,
            device=bench.device,
            dtype=bench.dtype,
        )
    if samples:
        with open(out_dir / "generations.jsonl", "w") as handle:
            handle.writelines(json.dumps(s) + "\n" for s in samples)
    model.save_pretrained(out_dir / "adapter")
    record.update(
        {
            "status": "finished",
            "eval_loss": loss,
            "perplexity": math.exp(loss),
            "eval_tokens": scored,
            "accuracy": accuracy,
            "accuracy_examples": len(samples),
            "eval_time_s": round(time.perf_counter() - eval_start, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    write_json_atomic(out_dir / "result.json", record)
    return record


def run_command(args) -> int:
    from loraplace.data import DataConfig
    from loraplace.errors import LoraplaceError
    from loraplace.strategy import parse_strategy

    strategy = parse_strategy(args.strategy)
    name = args.name or str(strategy)
    out = Path(args.out) if args.out else Path("runs") / "single" / run_dir_name(name, args.seed)
    if (out / "result.json").exists() and not args.force:
        raise LoraplaceError(
            f"'{out}' already holds a finished run; pass --force to overwrite or choose --out"
        )
    lora = LoraSettings(rank=args.rank, alpha=args.alpha, dropout=args.dropout)
    training = TrainingSettings(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate
    )
    evaluation = EvalSettings(
        accuracy_examples=args.accuracy_examples, max_new_tokens=args.max_new_tokens
    )
    data = DataConfig(
        dataset=args.dataset,
        train_examples=args.train_examples,
        eval_examples=args.eval_examples,
        max_length=args.max_length,
    )
    # Check the strategy against the model's config before loading any weights.
    ModelPlanner.for_model(args.model).plan({name: args.strategy}, lora.rank)
    print(f"loading {args.model} and {args.dataset} ...", flush=True)
    bench = Workbench.load(args.model, data, args.device)
    plan = bench.planner.plan({name: args.strategy}, lora.rank)[0]
    print(
        f"{name}: {plan.trainable_params:,} trainable parameters ({plan.trainable_pct:.3f}% of "
        f"{plan.total_params:,}), {len(plan.targets)} modules, seed {args.seed}",
        flush=True,
    )
    result = train_one(
        bench, plan, args.seed, out, lora=lora, training=training, evaluation=evaluation
    )
    print(summary_line(result))
    print(f"written to {out}")
    return 0 if result["status"] == "finished" else 1


def summary_line(result: dict) -> str:
    if result["status"] != "finished":
        return f"{result['name']} seed {result['seed']}: FAILED ({result['error']})"
    acc = (
        ""
        if result.get("accuracy") is None
        else f", accuracy {100 * result['accuracy']:.1f}% "
        f"(base {100 * (result.get('base_accuracy') or 0):.1f}%)"
    )
    return (
        f"{result['name']} seed {result['seed']}: eval loss {result['eval_loss']:.4f} "
        f"(base {result['base_eval_loss']:.4f}), perplexity {result['perplexity']:.2f}{acc}, "
        f"{result['train_time_s']:.1f} s, {result['tokens_per_s']:.0f} tokens/s, "
        f"peak {result['peak_memory_mb']:.0f} MB"
    )
