"""Benchmark: loraplace's speed on the embedded default model, each figure beside its target.

Everything is measured in this one process (or its children), fp32 and bf16 interleaved, so the
ratios hold on a machine whose absolute speed varies; the machine's fp32 and bf16 matmul rates
are printed beside the absolutes. ``--cpu-time`` measures one thread's CPU time instead of wall
time (torch on one thread): on a machine other processes share, that clock barely moves with
their load, so ratios stay readable there.

1. The machine: fp32 and bf16 matmul peak (best 2048^3) and sustained rate (mean over 5 s).
2. Training tokens/s (after a warm-up step) of all, all@last:15 and all@last:8 (the last two
   through the frozen-prefix cache) in fp32 and bf16: bf16 against fp32 (target for all:
   >= 2x), and each as a ratio of all in its precision (targets: >= 1.8x, >= 3x); all's
   achieved GFLOP/s as a share of the sustained matmul rate of its precision.
3. A plain PEFT reference in the same run: PEFT's LoRA on the same batches with a minimal
   loop of its own (forward with labels, backward, AdamW), in fp32 and under bf16 autocast.
4. The eval pass (forward only) against training, in each precision (target: >= 2x).
5. ``--changes``: each change of the bf16 step measured before and after, in the same run:
   autocast alone, the frozen base stored in bf16, LoRA updates added in fp32 (without PEFT's
   input casts), eager attention, the chunked LM head, fused AdamW, and (``--compile``)
   torch.compile of the decoder layers.
6. ``--profile``: where one training step of all goes, fp32 and bf16: base matmuls, LoRA
   matmuls, the LM head, attention, elementwise work and the optimizer.
7. ``--memory``: the peak memory (RSS) of training each strategy, fp32 against bf16 (target:
   bf16 <= fp32), each in a fresh process.
8. ``--estimate``: ``loraplace study examples/budget-curves.yaml --estimate`` in fp32 and in
   bf16 (target: bf16 <= half of fp32).
9. ``--parallel``: two single-thread training processes at once against one two-thread one.
10. ``--batching``: what training several adapters in one pass could gain at most: tokens/s of
    the base model's training step at 4x the batch (target for keeping it: >= 1.3x).
11. ``--study``: the wall time of ``loraplace study`` (the default study; target <= 10 min).
12. ``--models``: ``loraplace run --strategy all`` on SmolLM2-135M and Gemma 3 270M in fp32 and
    bf16, each in a fresh process: training tokens/s and peak memory as result.json records.
13. ``--stats``: the report's example-level bootstrap, 2,000 resamples of 3 seeds x 128 eval
    examples (target <= 1 s, so a report of many pairs stays interactive).

Run: python bench/bench.py [--steps 6] [--reps 2] [--cpu-time] [--changes [--compile]]
     [--profile] [--memory] [--estimate] [--parallel] [--batching] [--models] [--study] [--stats]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("all", "all@last:15", "all@last:8")
TARGETS = {"all@last:15": 1.8, "all@last:8": 3.0}
PRECISIONS = ("fp32", "bf16")
#: The clock rates are measured with: wall time, or (``--cpu-time``) this thread's CPU time.
CLOCK = {"now": time.perf_counter, "name": "wall"}


def matmul_rates(dtype=torch.float32, size: int = 2048, sustain_s: float = 5.0):
    """``(peak, sustained)`` GFLOP/s in ``dtype`` on :data:`CLOCK`: the best single ``size``^3
    matmul of 8, and the mean rate over back-to-back matmuls for ``sustain_s`` seconds."""
    now = CLOCK["now"]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(8):
        start = now()
        a @ b
        best = max(best, 2 * size**3 / (now() - start) / 1e9)
    count, start = 0, now()
    while now() - start < sustain_s:
        a @ b
        count += 1
    return best, 2 * size**3 * count / (now() - start) / 1e9


def load_bench(train: int = 64, evaluate: int = 32, precision: str = "fp32"):
    from loraplace.settings import DataConfig
    from loraplace.training.workbench import Workbench

    return Workbench.load(
        "smollm2-135m",
        DataConfig(train_examples=train, eval_examples=evaluate, max_length=384),
        precision=precision,
    )


def benches(train: int = 64) -> dict:
    """The fp32 workbench and a bf16 one sharing its data (the bf16 base a prepared copy)."""
    from loraplace.training.precision import prepare_base

    fp32 = load_bench(train)
    bf16 = copy.copy(fp32)
    bf16.model = copy.deepcopy(fp32.model)
    prepare_base(bf16.model, "cpu", torch.bfloat16)
    bf16.dtype, bf16.precision, bf16._prefix, bf16._base = torch.bfloat16, "bf16", {}, {}
    return {"fp32": fp32, "bf16": bf16}


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


def _model(bench, spec: str, seed: int = 0):
    from peft import get_peft_model

    plan = bench.planner.plan({spec: spec}, 8)[0]
    torch.manual_seed(seed)
    return plan, get_peft_model(bench.fresh_model(), plan.lora_config(16.0, 0.0))


def train_rate(bench, spec: str, steps: int, batch_size: int = 4, dtype=None) -> float:
    """Training tokens/s of ``spec`` (prefix cache where it applies), after 1 warm-up step, on
    :data:`CLOCK`. ``dtype`` overrides the workbench's (bf16 autocast on fp32 weights)."""
    from loraplace.training.loop import train_adapter

    plan, model = _model(bench, spec)
    cache, _ = bench.prefix(bench.train, plan.lowest_layer)
    marks: list[tuple[int, float]] = []
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
        dtype=dtype or bench.dtype,
        prefix=cache,
        on_step=lambda row: marks.append((row["tokens"], CLOCK["now"]())),
        pad_token_id=bench.collator.pad_token_id,
    )
    (tokens_1, time_1), (tokens_n, time_n) = marks[0], marks[-1]
    return (tokens_n - tokens_1) / (time_n - time_1)


def plain_peft_rate(bench, steps: int, dtype=torch.float32) -> float:
    """A plain PEFT loop on the same batches: model(**batch, labels) -> backward -> AdamW,
    under bf16 autocast when ``dtype`` is bf16 (the frozen base as the workbench holds it)."""
    from peft import LoraConfig, get_peft_model

    from loraplace.training.loop import batch_order
    from loraplace.training.precision import autocast_for

    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    torch.manual_seed(0)
    model = get_peft_model(
        bench.fresh_model(), LoraConfig(r=8, lora_alpha=16, target_modules=modules)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    features = bench.train.features
    order = batch_order([len(f["input_ids"]) for f in features], 4, steps, 0)
    model.train()
    tokens, start = 0, None
    for step, ids in enumerate(order):
        if step == 1:
            tokens, start = 0, CLOCK["now"]()
        batch = bench.collator([features[i] for i in ids])
        with autocast_for("cpu", dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    return tokens / (CLOCK["now"]() - start)


def eval_rate(bench, spec: str) -> float:
    from loraplace.training.evaluate import eval_losses

    plan, model = _model(bench, spec)
    cache, _ = bench.prefix(bench.eval, plan.lowest_layer)
    features = bench.eval.features
    run = lambda: eval_losses(  # noqa: E731
        model, features, bench.collator, batch_size=8, device="cpu", dtype=bench.dtype, prefix=cache
    )
    run()  # warm-up: the first pass pays one-time costs (kernels, allocations)
    start = CLOCK["now"]()
    rows = run()
    seconds = CLOCK["now"]() - start
    return sum(len(features[i]["input_ids"]) for i, _, _ in rows) / seconds


def verdict(value: float, target: float, *, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return f"target {'<=' if at_most else '>='} {target:g}: {'met' if met else 'NOT met'}"


def interleaved(measure, keys, reps: int) -> dict:
    """``{key: median of reps}``, the keys measured in turn in each repetition."""
    found: dict = {k: [] for k in keys}
    for _ in range(reps):
        for key in keys:
            found[key].append(measure(key))
    return {k: statistics.median(v) for k, v in found.items()}


def section_training(args, both: dict, sustained: dict) -> None:
    rates = interleaved(
        lambda key: train_rate(both[key[1]], key[0], args.steps),
        [(s, p) for s in STRATEGIES for p in PRECISIONS],
        args.reps,
    )
    print(
        f"\ntraining, {args.steps} steps of 4 GSM8K examples, tokens/s ({CLOCK['name']} clock) "
        f"after 1 warm-up step, median of {args.reps}, fp32 and bf16 interleaved:"
    )
    print(f"  {'':<12} {'fp32':>8} {'bf16':>8}  bf16/fp32   x all (fp32, bf16)")
    for spec in STRATEGIES:
        f32, b16 = rates[spec, "fp32"], rates[spec, "bf16"]
        ratios = [rates[spec, p] / rates["all", p] for p in PRECISIONS]
        target = ""
        if spec in TARGETS:
            target = f"  ({verdict(min(ratios), TARGETS[spec])} in both)"
        elif spec == "all":
            target = f"  ({verdict(b16 / f32, 2.0)})"
        print(
            f"  {spec:<12} {f32:8.1f} {b16:8.1f}  {b16 / f32:8.2f}x   "
            f"{ratios[0]:.2f}x, {ratios[1]:.2f}x{target}"
        )
    plan = both["fp32"].planner.plan({"all": "all"}, 8)[0]
    flops = flops_per_token(both["fp32"], plan)
    for p in PRECISIONS:
        achieved = rates["all", p] * flops / 1e9
        print(
            f"  all in {p}: {achieved:.1f} GFLOP/s = {achieved / sustained[p]:.0%} of the "
            f"sustained {p} matmul rate"
        )
    plain = interleaved(
        lambda p: plain_peft_rate(both[p], args.steps, both[p].dtype), PRECISIONS, args.reps
    )
    print(
        f"  plain PEFT loop, same batches: fp32 {plain['fp32']:.1f}, bf16 autocast "
        f"{plain['bf16']:.1f} tokens/s ({plain['bf16'] / plain['fp32']:.2f}x); loraplace/plain "
        f"= {rates['all', 'fp32'] / plain['fp32']:.2f}x fp32, "
        f"{rates['all', 'bf16'] / plain['bf16']:.2f}x bf16"
    )
    evaluated = interleaved(lambda p: eval_rate(both[p], "all"), PRECISIONS, args.reps)
    for p in PRECISIONS:
        ratio = evaluated[p] / rates["all", p]
        print(
            f"  eval pass (all) in {p}: {evaluated[p]:.1f} tokens/s = {ratio:.2f}x {p} "
            f"training ({verdict(ratio, 2.0)})"
        )


def section_changes(args, both: dict) -> None:
    """Each change of the bf16 step, before and after, interleaved in one run."""
    import loraplace.training.loop as loop
    from loraplace.training.evaluate import scoring_head
    from loraplace.training.precision import store_frozen

    fp32 = both["fp32"]
    stored = copy.copy(fp32)  # the frozen base in bf16, attention as loaded (fused SDPA)
    stored.model = copy.deepcopy(fp32.model)
    store_frozen(stored.model, torch.bfloat16)
    stored.dtype, stored.precision, stored._prefix, stored._base = torch.bfloat16, "bf16", {}, {}
    sums = loop.adapter_sums

    @contextlib.contextmanager
    def patched(fp32_sums: bool = True, head: bool = True):
        loop.adapter_sums = sums if fp32_sums else (lambda m, d: contextlib.nullcontext())
        loop.scoring_head = scoring_head if head else (lambda *a, **k: None)
        try:
            yield
        finally:
            loop.adapter_sums, loop.scoring_head = sums, scoring_head

    def measure(variant: str) -> float:
        bench, dtype, fp32_sums, head = {
            "fp32": (fp32, None, True, True),
            "fp32, full logits": (fp32, None, True, False),
            "bf16 autocast on fp32 weights": (fp32, torch.bfloat16, False, True),
            "+ frozen base stored in bf16": (stored, None, False, True),
            "+ fp32 adapter sums, no PEFT casts": (stored, None, True, True),
            "+ eager attention (= bf16)": (both["bf16"], None, True, True),
            "bf16, full logits": (both["bf16"], None, True, False),
        }[variant]
        with patched(fp32_sums, head):
            return train_rate(bench, "all", args.steps, dtype=dtype)

    variants = [
        "fp32",
        "fp32, full logits",
        "bf16 autocast on fp32 weights",
        "+ frozen base stored in bf16",
        "+ fp32 adapter sums, no PEFT casts",
        "+ eager attention (= bf16)",
        "bf16, full logits",
    ]
    rates = interleaved(measure, variants, args.reps)
    print(
        f"\nchanges of the bf16 step, all, tokens/s ({CLOCK['name']} clock), median of "
        f"{args.reps}, interleaved; each against the line before it and against fp32:"
    )
    previous = None
    for name in variants:
        step = f"{rates[name] / rates[previous]:5.2f}x prev" if previous else " " * 10
        print(f"  {name:<32} {rates[name]:8.1f}  {step}  {rates[name] / rates['fp32']:5.2f}x fp32")
        previous = name
    print(
        "  chunked LM head against full logits: "
        f"fp32 {rates['fp32'] / rates['fp32, full logits']:.2f}x, "
        f"bf16 {rates['+ eager attention (= bf16)'] / rates['bf16, full logits']:.2f}x"
    )
    section_adamw(fp32)
    if args.compile:
        section_compile(args, both["bf16"])


def section_adamw(bench) -> None:
    """AdamW's step on all's fp32 adapter parameters: fused, foreach and one tensor at a time."""
    _, model = _model(bench, "all")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    times = {}
    for name, options in (
        ("fused", {"fused": True}),
        ("foreach", {"foreach": True}),
        ("for-loop", {"foreach": False}),
    ):
        optimizer = torch.optim.AdamW(params, lr=1e-4, **options)
        optimizer.step()
        start = CLOCK["now"]()
        for _ in range(10):
            optimizer.step()
        times[name] = (CLOCK["now"]() - start) / 10 * 1000
    print(
        f"  AdamW step on all's {sum(p.numel() for p in params):,} fp32 adapter parameters: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items())
        + " (loraplace uses fused)"
    )


def section_compile(args, bench) -> None:
    """torch.compile of the decoder layers: the first step (compilation) and the steps after."""
    from loraplace.training.loop import train_adapter

    results = {}
    for compiled in (False, True):
        _, model = _model(bench, "all")
        if compiled:
            for layer in model.get_base_model().model.layers:
                layer.compile(dynamic=True)
        marks: list[tuple[int, float]] = []
        start = CLOCK["now"]()
        train_adapter(
            model,
            bench.train.features,
            steps=args.steps,
            batch_size=4,
            learning_rate=2e-4,
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=0,
            device="cpu",
            dtype=bench.dtype,
            on_step=lambda row, marks=marks: marks.append((row["tokens"], CLOCK["now"]())),
            pad_token_id=bench.collator.pad_token_id,
        )
        rate = (marks[-1][0] - marks[0][0]) / (marks[-1][1] - marks[0][1])
        results[compiled] = (marks[0][1] - start, rate)
    (eager_first, eager_rate), (compiled_first, compiled_rate) = results[False], results[True]
    print(
        f"  torch.compile of the decoder layers (bf16): first step {compiled_first:.0f} s "
        f"against {eager_first:.0f} s; then {compiled_rate:.1f} against {eager_rate:.1f} tokens/s "
        f"({compiled_rate / eager_rate:.2f}x)"
    )


def _category(name: str, shapes) -> str:
    """The kind of work of a profiled op, from its name and input shapes."""
    four_d = bool(shapes) and len(shapes[0]) == 4
    if "attention" in name or name == "aten::bmm" or ("softmax" in name and four_d):
        return "attention"
    if name in ("aten::mm", "aten::addmm"):
        dims = [d for s in shapes[:2] for d in s]
        if 49152 in dims:
            return "LM head matmuls"
        if any(d <= 32 for d in dims):
            return "LoRA matmuls"
        return "base matmuls"
    if "adam" in name:
        return "optimizer"
    if name in ("aten::exp_", "aten::sub", "aten::logsumexp", "aten::gather") and any(
        49152 in s for s in shapes
    ):
        return "LM head softmax"
    if name.startswith("aten::") and name not in ("aten::matmul", "aten::linear"):
        return "elementwise, casts, copies"
    return "other"


def section_profile(args, both: dict) -> None:
    """Self CPU time of one training step of all, by kind of work."""
    from loraplace.training.loop import train_adapter

    threads = torch.get_num_threads()
    print(f"\nprofile of training steps 2-3 of all (self CPU time, {threads} thread(s)):")
    table = {}
    for p in PRECISIONS:
        bench = both[p]
        _, model = _model(bench, "all")
        profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
        )
        state = {"n": 0}

        def on_step(row, profiler=profiler, state=state):
            state["n"] += 1
            if state["n"] == 1:
                profiler.__enter__()

        train_adapter(
            model,
            bench.train.features,
            steps=3,
            batch_size=4,
            learning_rate=2e-4,
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=0,
            device="cpu",
            dtype=bench.dtype,
            on_step=on_step,
            pad_token_id=bench.collator.pad_token_id,
        )
        profiler.__exit__(None, None, None)
        kinds: dict[str, float] = {}
        for event in profiler.key_averages(group_by_input_shape=True):
            kind = _category(event.key, event.input_shapes or [])
            kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
        table[p] = kinds
    kinds = sorted({k for t in table.values() for k in t}, key=lambda k: -table["fp32"].get(k, 0))
    print(f"  {'':<28} {'fp32 s':>8} {'bf16 s':>8}  bf16/fp32")
    for kind in kinds:
        f32, b16 = table["fp32"].get(kind, 0.0), table["bf16"].get(kind, 0.0)
        print(f"  {kind:<28} {f32:8.2f} {b16:8.2f}  {f32 / b16 if b16 else 0:8.2f}x")
    total = {p: sum(table[p].values()) for p in PRECISIONS}
    print(
        f"  {'total':<28} {total['fp32']:8.2f} {total['bf16']:8.2f}  "
        f"{total['fp32'] / total['bf16']:8.2f}x"
    )


_MEMORY_CHILD = """
import json, sys, threading, psutil, torch
sys.path.insert(0, {bench!r})
import bench
torch.set_num_threads({threads})
work = bench.load_bench(precision={precision!r})
process, peak, stop = psutil.Process(), [0], threading.Event()
def sample():
    while not stop.wait(0.05):
        peak[0] = max(peak[0], process.memory_info().rss)
thread = threading.Thread(target=sample, daemon=True)
peak[0] = process.memory_info().rss
thread.start()
bench.train_rate(work, {spec!r}, {steps})
stop.set(); thread.join()
print(json.dumps(max(peak[0], process.memory_info().rss) / 2**20))
"""


def section_memory(args) -> None:
    print("\npeak memory (RSS) while training, each in a fresh process after loading:")
    for spec in STRATEGIES:
        peaks = {}
        for p in PRECISIONS:
            code = _MEMORY_CHILD.format(
                bench=str(ROOT / "bench"),
                threads=torch.get_num_threads(),
                precision=p,
                spec=spec,
                steps=min(args.steps, 4),
            )
            out = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            ).stdout
            peaks[p] = float(out.split()[-1])
        ok = verdict(peaks["bf16"], peaks["fp32"], at_most=True).replace(
            f"{peaks['fp32']:g}", "fp32"
        )
        print(f"  {spec:<12} fp32 {peaks['fp32']:6.0f} MB, bf16 {peaks['bf16']:6.0f} MB  ({ok})")


_DURATION = re.compile(r"about (?:(\d+) h )?(?:(\d+) min ?)?(?:(\d+) s)?")


def _seconds(line: str) -> float:
    hours, minutes, seconds = (int(x or 0) for x in _DURATION.search(line).groups())
    return 3600 * hours + 60 * minutes + seconds


def section_estimate(args) -> None:
    from loraplace.config.yamlio import dump_yaml, read_yaml

    raw = read_yaml(ROOT / "examples" / "budget-curves.yaml")
    lines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in PRECISIONS:
            config = Path(tmp) / f"budget-curves-{p}.yaml"
            config.write_text(dump_yaml({**raw, "training": {**raw["training"], "precision": p}}))
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "loraplace",
                    "study",
                    str(config),
                    "--estimate",
                    "--out",
                    str(Path(tmp) / f"out-{p}"),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
                env={**os.environ, "TQDM_DISABLE": "1"},
            ).stdout
            lines[p] = next(line for line in out.splitlines() if line.startswith("estimate:"))
    print("\nloraplace study examples/budget-curves.yaml --estimate, a fresh directory each:")
    for p in PRECISIONS:
        print(f"  {p}: {lines[p]}")
    ratio = _seconds(lines["bf16"]) / _seconds(lines["fp32"])
    print(f"  bf16 / fp32 = {ratio:.2f} ({verdict(ratio, 0.5, at_most=True)})")


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
    shutil.rmtree(out, ignore_errors=True)  # a finished study would resume and run nothing
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
        f"({'met' if minutes <= 10 else 'NOT met'}: target 10 min)"
    )


def section_models(args) -> None:
    """``loraplace run --strategy all`` on each built-in model, fp32 and bf16, each a fresh
    process: its training tokens/s and peak memory as the run records them (result.json)."""
    print("\nloraplace run --strategy all, each a fresh process (figures from result.json):")
    for model in ("smollm2-135m", "gemma3-270m"):
        figures = {}
        for p in PRECISIONS:
            with tempfile.TemporaryDirectory() as tmp:
                command = [
                    sys.executable, "-m", "loraplace", "run", "--strategy", "all",
                    "--model", model, "--precision", p, "--steps", str(max(args.steps, 8)),
                    "--train-examples", "64", "--eval-examples", "8", "--out", f"{tmp}/run",
                ]  # fmt: skip
                subprocess.run(
                    command,
                    check=True,
                    cwd=ROOT,
                    capture_output=True,
                    env={**os.environ, "TQDM_DISABLE": "1"},
                )
                figures[p] = json.loads(Path(tmp, "run", "result.json").read_text())
        fp32, bf16 = figures["fp32"], figures["bf16"]
        print(
            f"  {model:<13} fp32 {fp32['tokens_per_s']:6.1f} tokens/s, peak "
            f"{fp32['peak_memory_mb']:6.0f} MB; bf16 {bf16['tokens_per_s']:6.1f} tokens/s "
            f"({bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}x), peak "
            f"{bf16['peak_memory_mb']:6.0f} MB"
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
    parser.add_argument("--reps", type=int, default=2, help="repetitions (the median is shown)")
    parser.add_argument(
        "--cpu-time", action="store_true", help="one torch thread, timed by its CPU time"
    )
    parser.add_argument("--changes", action="store_true", help="each bf16 change before/after")
    parser.add_argument("--compile", action="store_true", help="with --changes: torch.compile")
    parser.add_argument("--profile", action="store_true", help="where a training step goes")
    parser.add_argument("--memory", action="store_true", help="peak RSS, fp32 against bf16")
    parser.add_argument("--estimate", action="store_true", help="budget-curves --estimate")
    parser.add_argument("--parallel", action="store_true", help="2 x 1 thread vs 1 x 2 threads")
    parser.add_argument("--batching", action="store_true", help="batch 16 vs 4 (mLoRA bound)")
    parser.add_argument("--study", action="store_true", help="time the default study")
    parser.add_argument("--stats", action="store_true", help="time the report's bootstrap")
    parser.add_argument("--models", action="store_true", help="loraplace run on each model")
    parser.add_argument("--no-training", action="store_true", help="skip the training section")
    args = parser.parse_args()
    if args.cpu_time:
        torch.set_num_threads(1)
        CLOCK.update(now=time.thread_time, name="one thread's CPU")
    sustained = {}
    for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peak, sustained[p] = matmul_rates(dtype)
        print(
            f"{p} matmul: peak {peak:.1f} GFLOP/s (best 2048^3), sustained {sustained[p]:.1f} "
            f"GFLOP/s (5 s); torch threads {torch.get_num_threads()}",
            flush=True,
        )
    print(f"machine load (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if not args.no_training or args.changes or args.profile:
        both = benches()
        if not args.no_training:
            section_training(args, both, sustained)
        if args.changes:
            section_changes(args, both)
        if args.profile:
            section_profile(args, both)
    sections = (
        (args.memory, section_memory),
        (args.estimate, section_estimate),
        (args.parallel, section_parallel),
        (args.batching, section_batching),
        (args.models, section_models),
        (args.study, section_study),
        (args.stats, section_stats),
    )
    for wanted, section in sections:
        if wanted:
            section(args)
    print(f"machine load (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
