"""How long a study will take, printed before it starts.

The estimate counts the tokens every pending run trains on and evaluates, and prices them at a
rate measured on this machine: the training rate of finished runs of the same strategy and rank
when there are some, else a short calibration (a few steps of all-layer LoRA on the study's own
batches). A final run's eval includes scoring its task's accuracy, and the study scores the
base model once. A strategy whose lowest adapted layer is ``L`` runs only the layers from ``L`` up
(the frozen-prefix cache), so its cost is scaled by its depth; a strategy placed per seed has
its depth per seed. Evaluation runs forward only, at about twice the training rate
(docs/CONCEPTS.md). A run that saved its training state goes on from there, so only its steps
left are priced. It is an estimate: a shared machine's speed varies, and the report gives the
measured times. Rates measured on finished runs were measured as those runs shared the machine
(Ray runs several at once, each on fewer threads): the estimate then divides the summed time by
how many ran at a time (:func:`loraplace.status.parallelism`). Runs copied from another study
(``reused_from``) were timed there, under that study's load, so they set neither.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from loraplace import store
from loraplace.config.study import StudyConfig
from loraplace.store import RESUME_FILE, RunKey
from loraplace.studies.automatic import resolve_automatic
from loraplace.studies.identity import study_identity
from loraplace.studies.status import format_duration, parallelism

__all__ = [
    "Estimate",
    "estimate_only",
    "estimate_study",
    "machine_matmul_rate",
    "print_estimate",
]

#: Forward-only evaluation runs at about this multiple of the training rate (measured).
EVAL_SPEEDUP = 2.0
#: The LM head and embeddings cost about this many decoder layers of a training step.
HEAD_LAYERS = 2.0


@dataclass(frozen=True)
class Estimate:
    runs: int
    train_tokens: int
    eval_tokens: int
    seconds: float
    """Summed run time: one run at a time."""
    at_once: float
    """Runs under way at a time while the finished runs ran (1.0 when calibrated)."""
    rate: float
    """Training tokens/s of all-layer LoRA on this machine, as measured."""
    source: str
    """How the rate was measured."""


def machine_matmul_rate(seconds: float = 2.0, size: int = 1024, precision: str = "fp32") -> float:
    """This machine's matmul rate now in ``precision`` (fp32 or bf16), in GFLOP/s (median over
    ``seconds``)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    times.sort()
    return 2 * size**3 / times[len(times) // 2] / 1e9


def _depth(plan, num_layers: int) -> float:
    """A plan's training cost relative to all-layer LoRA (layers run from its lowest up)."""
    return (num_layers - plan.lowest_layer + HEAD_LAYERS) / (num_layers + HEAD_LAYERS)


def _saved_step(run_dir: Path) -> int:
    """How many steps a pending run's saved training state has done (0 without a readable one):
    the run goes on from there."""
    import torch

    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["state"].step)
    except Exception:  # noqa: BLE001 - an unreadable state is trained again from step 0
        return 0


def _calibrate(bench, config) -> float:
    """All-layer LoRA training tokens/s on the study's own batches (after one warm-up step)."""
    from peft import get_peft_model

    # Deferred: importing it loads torch, transformers.
    from loraplace.training.loop import train_adapter

    plan = bench.planner.plan({"calibration": "all"}, config.lora.rank)[0]
    model = get_peft_model(bench.fresh_model(), plan.lora_config(config.lora.alpha, 0.0))
    times: list[tuple[int, float]] = []
    train_adapter(
        model,
        bench.train.features,
        steps=3,
        batch_size=config.training.batch_size,
        learning_rate=0.0,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=0,
        device=bench.device,
        dtype=bench.dtype,
        on_step=lambda row: times.append((row["tokens"], row["time_s"])),
        pad_token_id=bench.collator.pad_token_id,
    )
    (tokens_1, time_1), (tokens_3, time_3) = times[0], times[-1]
    return (tokens_3 - tokens_1) / max(time_3 - time_1, 1e-9)


def estimate_study(
    config, pending: list, bench, finished: list[dict], out: Path | None = None
) -> Estimate:
    """Estimate the wall time of ``pending`` runs.

    Args:
        config: the study config (with plans).
        pending: the run keys still to run.
        bench: the loaded workbench (for token counts, and for calibration).
        finished: complete final or selection records of this study (their measured rates).
        out: the study directory, to see whether an adopted final run's weights are still
            there (:meth:`~loraplace.config.StudyConfig.adopts`).
    """
    num_layers = bench.arch.num_layers
    mean_length = sum(len(f["input_ids"]) for f in bench.train.features) / len(bench.train.features)
    per_run_train = config.training.steps * config.training.batch_size * mean_length
    val_tokens = sum(len(f["input_ids"]) for f in bench.validation.features)
    eval_tokens = sum(len(f["input_ids"]) for f in bench.eval.features)
    # A final run also scores its task's accuracy, after its last eval (training/run.py).
    scored = _scoring_tokens(config, bench)
    checkpoints = len(config.eval.checkpoint_steps(config.training.steps))
    timed_here = [r for r in finished if r.get("status") == "finished" and not r.get("reused_from")]
    measured = [
        (
            r["tokens_per_s"],
            config.compiled_plan(RunKey(r["name"], r.get("seed", 0), r.get("rank"))),
        )
        for r in timed_here
        if r.get("tokens_per_s") and not r.get("adopted_from")
    ]
    rates = [tokens_per_s / _depth(plan, num_layers) for tokens_per_s, plan in measured if plan]
    if rates:
        rate, source = sorted(rates)[len(rates) // 2], f"median of {len(rates)} finished runs"
        # Their rates were measured that many at a time; the runs left will share it likewise.
        at_once = parallelism(timed_here)
    else:
        rate, source = _calibrate(bench, config), "3 calibration steps of all-layer LoRA"
        at_once = 1.0
    seconds = train_total = eval_total = 0.0
    for key in pending:
        plan = config.compiled_plan(key)
        depth = _depth(plan, num_layers) if plan is not None else 1.0
        if config.adopts(key, out):
            train = 0.0
        else:
            done = _saved_step(key.run_dir(out)) if out is not None else 0
            train = per_run_train * max(0, config.training.steps - done) / config.training.steps
        evaluated = val_tokens if key.stage == "selection" else checkpoints * eval_tokens + scored
        train_total += train
        eval_total += evaluated
        seconds += depth * (train / rate + evaluated / (EVAL_SPEEDUP * rate))
    if pending and not (out is not None and (Path(out) / store.BASE_FILE).is_file()):
        # The base model's eval loss and accuracy, measured once per study.
        eval_total += eval_tokens + scored
        seconds += (eval_tokens + scored) / (EVAL_SPEEDUP * rate)
    return Estimate(len(pending), int(train_total), int(eval_total), seconds, at_once, rate, source)


def _scoring_tokens(config, bench) -> int:
    """Tokens a final run's accuracy scoring runs: its task's problems
    (:func:`~loraplace.training.choices.scoring_tokens`), and the GSM8K-style problems of
    ``eval.accuracy_examples``, each prompt with its whole generation budget."""
    # Deferred: importing it loads torch, transformers.
    from loraplace.data.batching import encode_prompt
    from loraplace.training.choices import scoring_tokens

    examples = bench.eval.examples
    generated = [e for e in examples[: config.eval.accuracy_examples] if e.answer is not None]
    return scoring_tokens(examples, bench.tokenizer) + sum(
        len(encode_prompt(bench.tokenizer, e.prompt)) + config.eval.max_new_tokens
        for e in generated
    )


def print_estimate(config: StudyConfig, out: Path, todo: list[RunKey], bench) -> None:
    """Print how long ``todo`` will take on this machine (see :mod:`loraplace.estimate`)."""
    # Deferred: importing it loads torch.
    from loraplace.studies.selection import collect_results

    finished = collect_results(config, out) if out.is_dir() else []
    found = estimate_study(config, todo, bench, finished, out)
    precision = config.training.precision
    bf16 = precision == "bf16"
    matmul = machine_matmul_rate(precision="bf16") if bf16 else machine_matmul_rate()
    computed = " in bf16" if bf16 else ""
    if found.at_once > 1.05:
        when = (
            f"about {format_duration(found.seconds / found.at_once)} at the {found.at_once:.1f} "
            f"runs at a time they ran ({format_duration(found.seconds)} of run time)"
        )
    else:
        when = f"about {format_duration(found.seconds)} one run at a time"
    print(
        f"estimate: {found.runs} runs to go, {found.train_tokens / 1e6:.2f}M training and "
        f"{found.eval_tokens / 1e6:.2f}M eval tokens; at {found.rate:.0f} tokens/s of "
        f"all-layer training per run{computed} ({found.source}; {precision} matmul "
        f"{matmul:.0f} GFLOP/s now), {when}",
        flush=True,
    )


def estimate_only(config: StudyConfig, out: Path) -> int:
    """``loraplace study --estimate``: print the estimate, run nothing, write nothing."""
    # Deferred: importing it loads torch, transformers.
    from loraplace.studies.executors import load_bench
    from loraplace.studies.reuse import study_donors, without_copies

    out = Path(out)
    keys = config.run_keys()
    todo = [k for k in keys if not (out.is_dir() and store.read_result(k.run_dir(out)))]
    if out.is_dir():  # a started study: the placements it has already resolved
        resolve_automatic(config, out, workbench=None, probe=False)
    auto = [k for k in todo if config.compiled_plan(k) is None]
    if auto:
        print(
            f"note: {len(auto)} runs of automatic strategies are priced as all-layer runs "
            "(their placement is not resolved yet)",
            flush=True,
        )
    bench = load_bench(config)
    if config.reuse:
        # A started study knows its identity; hash the model files only for a new one.
        identity = store.read_json(out / store.IDENTITY_FILE) or study_identity(config)
        todo = without_copies(config, out, todo, study_donors(config, identity, bench.device))
    print_estimate(config, out, todo, bench)
    return 0
