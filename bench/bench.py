"""Benchmark: loraplace's speed on the embedded default model, each figure beside its target.

Everything is measured in this one process (or its children), so the ratios hold on a machine
whose absolute speed varies; the machine's fp32 matmul rate is printed beside the absolutes.

1. The machine: fp32 matmul peak (best 2048^3) and sustained rate (mean over 5 s).
2. Training tokens/s (steps after 2 warm-up steps) of all, all@last:15 and all@last:8 (the last
   two through the frozen-prefix cache), as ratios of all (targets: >= 1.8x, >= 3x); all's
   achieved GFLOP/s as a share of the sustained matmul rate (target 60%).
3. A plain PEFT reference in the same run: PEFT's LoRA on the same batches with a minimal
   loop of its own (forward with labels, backward, AdamW), as a ratio.
4. The eval pass (forward only) against training (target >= 2x).
5. ``--parallel``: two single-thread training processes at once against one two-thread one.
6. ``--batching``: what training several adapters in one pass could gain at most: tokens/s of
   the base model's training step at 4x the batch (target for keeping it: >= 1.3x).
7. ``--study``: the wall time of ``loraplace study`` (the default study; target <= 15 min).
8. ``--stats``: the report's example-level bootstrap, 2,000 resamples of 3 seeds x 128 eval
   examples (target <= 1 s, so a report of many pairs stays interactive).

Run: python bench/bench.py [--steps 6] [--parallel] [--batching] [--study] [--stats]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("all", "all@last:15", "all@last:8")
TARGETS = {"all@last:15": 1.8, "all@last:8": 3.0}


def matmul_rates(size: int = 2048, sustain_s: float = 5.0) -> tuple[float, float]:
    """``(peak, sustained)`` fp32 GFLOP/s: the best single ``size``^3 matmul of 8, and the mean
    rate over back-to-back matmuls for ``sustain_s`` seconds."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(8):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < sustain_s:
        a @ b
        count += 1
    return best, 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def load_bench(train: int = 64, evaluate: int = 32):
    from loraplace.settings import DataConfig
    from loraplace.training.workbench import Workbench

    return Workbench.load(
        "smollm2-135m", DataConfig(train_examples=train, eval_examples=evaluate, max_length=384)
    )


def flops_per_token(bench, plan) -> float:
    """Matmul FLOPs per training token actually computed: forward through the layers from the
    lowest adapted one up (below it the prefix cache stands in), input gradients through the
    same layers, the LM head forward and backward at scored positions only, and the adapters
    (forward, input and weight gradients)."""
    arch = bench.arch
    per_layer = [0] * arch.num_layers
    for proj in arch.projections:
        per_layer[proj.layer] += proj.in_features * proj.out_features
    features = bench.train.features
    scored = sum(sum(t != -100 for t in f["labels"][1:]) for f in features)
    share = scored / sum(len(f["input_ids"]) for f in features)
    head = bench.model.get_output_embeddings().weight.numel() * share
    run = sum(per_layer[plan.lowest_layer :])
    return 2 * (run + head) + 2 * (run + head) + 6 * plan.trainable_params


def train_rate(bench, spec: str, steps: int, batch_size: int = 4) -> float:
    """Training tokens/s of ``spec`` (prefix cache where it applies), after 2 warm-up steps."""
    from peft import get_peft_model

    from loraplace.training.loop import train_adapter

    plan = bench.planner.plan({spec: spec}, 8)[0]
    model = get_peft_model(bench.fresh_model(), plan.lora_config(16.0, 0.0))
    cache, _ = bench.prefix(bench.train, plan.lowest_layer)
    rows: list[dict] = []
    train_adapter(
        model,
        bench.train.features,
        steps=steps,
        batch_size=batch_size,
        learning_rate=2e-4,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=0,
        device="cpu",
        dtype=torch.float32,
        prefix=cache,
        on_step=rows.append,
        pad_token_id=bench.collator.pad_token_id,
    )
    first, last = rows[1], rows[-1]
    return (last["tokens"] - first["tokens"]) / (last["time_s"] - first["time_s"])


def plain_peft_rate(bench, steps: int) -> float:
    """A plain PEFT loop on the same batches: model(**batch, labels) -> backward -> AdamW."""
    from peft import LoraConfig, get_peft_model

    from loraplace.training.loop import batch_order

    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        bench.fresh_model(), LoraConfig(r=8, lora_alpha=16, target_modules=modules)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    features = bench.train.features
    order = batch_order([len(f["input_ids"]) for f in features], 4, steps, 0)
    model.train()
    tokens, start = 0, None
    for step, ids in enumerate(order):
        if step == 2:
            tokens, start = 0, time.perf_counter()
        batch = bench.collator([features[i] for i in ids])
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def eval_rate(bench, spec: str) -> float:
    from peft import get_peft_model

    from loraplace.training.evaluate import eval_losses

    plan = bench.planner.plan({spec: spec}, 8)[0]
    model = get_peft_model(bench.fresh_model(), plan.lora_config(16.0, 0.0))
    cache, _ = bench.prefix(bench.eval, plan.lowest_layer)
    start = time.perf_counter()
    rows = eval_losses(
        model, bench.eval.features, bench.collator, batch_size=8, device="cpu", prefix=cache
    )
    seconds = time.perf_counter() - start
    return sum(len(bench.eval.features[i]["input_ids"]) for i, _, _ in rows) / seconds


def verdict(value: float, target: float) -> str:
    return f"target {target:g}: {'met' if value >= target else 'NOT met'}"


def section_training(args, sustained: float) -> None:
    bench = load_bench()
    rates = {
        spec: statistics.median(train_rate(bench, spec, args.steps) for _ in range(2))
        for spec in STRATEGIES
    }
    plain = plain_peft_rate(bench, args.steps)
    plan = bench.planner.plan({"all": "all"}, 8)[0]
    achieved = rates["all"] * flops_per_token(bench, plan) / 1e9
    print(f"\ntraining, {args.steps} steps of 4 GSM8K examples, tokens/s after 2 warm-up steps:")
    for spec, rate in rates.items():
        ratio = rate / rates["all"]
        target = f"  ({verdict(ratio, TARGETS[spec])})" if spec in TARGETS else ""
        print(f"  {spec:<12} {rate:8.1f} tokens/s  {ratio:5.2f}x all{target}")
    share = achieved / sustained
    print(
        f"  all: {achieved:.1f} GFLOP/s = {share:.0%} of the sustained matmul rate "
        f"({verdict(100 * share, 60)} %; the profile in README 'Speed' shows where the rest goes)"
    )
    print(
        f"  plain PEFT loop, same batches: {plain:.1f} tokens/s; loraplace/plain = "
        f"{rates['all'] / plain:.2f}x"
    )
    evaluated = eval_rate(bench, "all")
    ratio = evaluated / rates["all"]
    print(
        f"  eval pass (all): {evaluated:.1f} tokens/s = {ratio:.2f}x training "
        f"({verdict(ratio, 2.0)})"
    )


def _child(threads: int, steps: int) -> subprocess.Popen:
    code = (
        f"import sys, torch; sys.path.insert(0, {str(ROOT / 'bench')!r}); "
        f"torch.set_num_threads({threads}); import bench; "
        f"print(bench.train_rate(bench.load_bench(), 'all', {steps}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def section_parallel(args) -> None:
    one = _child(2, args.steps)
    two_threads = float(one.communicate()[0].split()[-1])
    pair = [_child(1, args.steps) for _ in range(2)]
    singles = [float(p.communicate()[0].split()[-1]) for p in pair]
    print(
        f"\nparallel: one 2-thread run {two_threads:.1f} tokens/s; two 1-thread runs at once "
        f"{singles[0]:.1f} + {singles[1]:.1f} = {sum(singles):.1f} tokens/s "
        f"({sum(singles) / two_threads:.2f}x)"
    )


def section_batching(args) -> None:
    bench = load_bench(train=128)
    small = train_rate(bench, "all", args.steps, batch_size=4)
    large = train_rate(bench, "all", args.steps, batch_size=16)
    print(
        f"\nseveral adapters in one pass, at most: all at batch 16 {large:.1f} tokens/s vs batch "
        f"4 {small:.1f} ({large / small:.2f}x; {verdict(large / small, 1.3)} to be worth it)"
    )


def section_study(args) -> None:
    out = ROOT / "runs" / "bench-default-study"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "loraplace", "study", "--out", str(out), "--no-report"],
        check=True,
        cwd=ROOT,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    minutes = (time.perf_counter() - start) / 60
    results = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    print(
        f"\ndefault study: {minutes:.1f} min wall, {len(results)} runs "
        f"({'met' if minutes <= 15 else 'NOT met'}: target 15 min)"
    )


def section_stats(args) -> None:
    import numpy as np

    from loraplace.stats.measures import bootstrap_paired_examples

    rng = np.random.default_rng(0)

    def runs():  # per seed: (eval examples, [tokens, loss sum])
        return {
            s: np.column_stack([rng.integers(5, 60, 128), rng.gamma(2.0, 10.0, 128)]).astype(float)
            for s in range(3)
        }

    a, b = runs(), runs()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        bootstrap_paired_examples(a, b, n_boot=2000, seed=0)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(
        f"\nexample-level bootstrap (2,000 resamples, 3 seeds x 128 examples): {seconds:.3f} s, "
        f"median of 5 ({'met' if seconds <= 1.0 else 'NOT met'}: target 1 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="training steps per measurement")
    parser.add_argument("--parallel", action="store_true", help="2 x 1 thread vs 1 x 2 threads")
    parser.add_argument("--batching", action="store_true", help="batch 16 vs 4 (mLoRA bound)")
    parser.add_argument("--study", action="store_true", help="time the default study")
    parser.add_argument("--stats", action="store_true", help="time the report's bootstrap")
    args = parser.parse_args()
    peak, sustained = matmul_rates()
    print(
        f"fp32 matmul: peak {peak:.1f} GFLOP/s (best 2048^3), sustained {sustained:.1f} GFLOP/s "
        f"(5 s); torch threads {torch.get_num_threads()}",
        flush=True,
    )
    section_training(args, sustained)
    if args.parallel:
        section_parallel(args)
    if args.batching:
        section_batching(args)
    if args.study:
        section_study(args)
    if args.stats:
        section_stats(args)


if __name__ == "__main__":
    main()
