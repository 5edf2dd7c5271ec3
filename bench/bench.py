"""Benchmark: how close loraplace's training is to this machine's limit, and what a study saves.

Prints, for the embedded default model (SmolLM2-135M):
1. the measured fp32 matmul peak of this machine (GFLOP/s, best of several large matmuls) and
   its sustained rate (mean over 5 s), which differ widely on a shared machine;
2. training tokens/s (after the first step), achieved GFLOP/s and the fraction of the peak and
   of the sustained matmul rate for all, attn, mlp and all@last:8 (FLOPs per token: see
   ``flops_per_token``);
3. the wall time of a small 3-strategy ``loraplace study`` against ``bench/naive_peft.py``
   (plain PEFT + Trainer: pad to max_length 512, reload the model for every run), run side by
   side as subprocesses, with the ratio and both sets of eval losses.

Run: python bench/bench.py            (about 10 minutes on a 2-core CPU at ~190 tokens/s)
     python bench/bench.py --quick    (fewer steps, for a first look)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["all", "attn", "mlp", "all@last:8"]
STUDY = {
    "baseline": ("all", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
    "attention-only": ("attn", "q_proj,k_proj,v_proj,o_proj"),
    "ffn-only": ("mlp", "gate_proj,up_proj,down_proj"),
}


def matmul_rates(size: int = 2048, repeats: int = 8, sustain_s: float = 5.0) -> tuple[float, float]:
    """``(peak, sustained)`` fp32 GFLOP/s: the best single ``size``^3 matmul of ``repeats``, and
    the mean rate over back-to-back matmuls for ``sustain_s`` seconds (what a long training run
    can count on when the machine is shared)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < sustain_s:
        a @ b
        count += 1
    return best, 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def flops_per_token(bench, plan) -> float:
    """Matmul FLOPs per training token actually computed.

    Forward: 2 x the block matmul parameters. Backward: input gradients only (the base is
    frozen), 2 x the matmul parameters of the layers from the lowest adapter up. The LM head
    runs forward and backward only at scored positions (the logits mask), so it counts for the
    scored fraction of the tokens. The adapters: forward, input grad and weight grad.
    """
    arch = bench.arch
    per_layer = [0] * arch.num_layers
    for proj in arch.projections:
        per_layer[proj.layer] += proj.in_features * proj.out_features
    scored = sum(sum(t != -100 for t in f["labels"][1:]) for f in bench.train_features)
    scored_fraction = scored / sum(len(f["input_ids"]) for f in bench.train_features)
    head = bench.model.get_output_embeddings().weight.numel() * scored_fraction
    forward = 2 * (sum(per_layer) + head)
    backward = 2 * (sum(per_layer[plan.lowest_layer :]) + head)
    return forward + backward + 6 * plan.trainable_params


def steady_tokens_per_s(run_dir: Path) -> float:
    """Tokens/s after the first step (whose one-off allocations and warm-up would dominate a short run)."""
    import json

    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return (curve[-1]["tokens"] - curve[0]["tokens"]) / (curve[-1]["time_s"] - curve[0]["time_s"])


def throughput(args, peak: float, sustained: float) -> None:
    from loraplace.data import DataConfig
    from loraplace.runner import train_one
    from loraplace.settings import EvalSettings, LoraSettings, TrainingSettings
    from loraplace.workbench import Workbench

    bench = Workbench.load(
        "smollm2-135m", DataConfig(train_examples=64, eval_examples=4, max_length=args.max_length)
    )
    lora, evaluation = LoraSettings(), EvalSettings(accuracy_examples=0)
    training = TrainingSettings(steps=args.steps, batch_size=4, warmup_steps=0)
    print(
        f"\ntraining throughput ({args.steps} steps of 4 length-grouped GSM8K examples, max_length {args.max_length}; "
        f"tokens/s after step 1):"
    )
    print(
        f"{'strategy':<12} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>8} {'of sustained':>13} {'GFLOP/token':>12}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for spec in STRATEGIES:
            plan = bench.planner.plan({spec: spec}, lora.rank)[0]
            run_dir = Path(scratch) / spec.replace(":", "_")
            train_one(
                bench,
                plan,
                0,
                run_dir,
                lora=lora,
                training=training,
                evaluation=evaluation,
                show_progress=False,
            )
            rate = steady_tokens_per_s(run_dir)
            per_token = flops_per_token(bench, plan)
            achieved = rate * per_token / 1e9
            print(
                f"{spec:<12} {rate:>9.1f} {achieved:>8.1f} {achieved / peak:>8.1%} {achieved / sustained:>13.1%} "
                f"{per_token / 1e9:>12.3f}",
                flush=True,
            )


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed: {' '.join(command)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout + proc.stderr


def study_vs_naive(args) -> None:
    import yaml

    with tempfile.TemporaryDirectory() as scratch:
        config = {
            "name": "bench",
            "model": "smollm2-135m",
            "data": {
                "dataset": "gsm8k",
                "train_examples": 64,
                "eval_examples": args.eval_examples,
                "max_length": 512,
            },
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "training": {
                "steps": args.steps,
                "batch_size": 4,
                "learning_rate": 2.0e-4,
                "warmup_steps": 2,
                "seeds": [0],
            },
            "eval": {"accuracy_examples": 0},
            "strategies": {name: spec for name, (spec, _) in STUDY.items()},
        }
        path = Path(scratch) / "bench.yaml"
        path.write_text(yaml.safe_dump(config))
        study_time, _ = timed(
            [
                sys.executable,
                "-m",
                "loraplace",
                "study",
                str(path),
                "--out",
                str(Path(scratch) / "out"),
                "--no-report",
            ]
        )
        losses = {}
        import json

        for name in STUDY:
            losses[name] = json.loads(
                (Path(scratch) / "out" / "runs" / f"{name}--seed0" / "result.json").read_text()
            )["eval_loss"]
        naive_time, output = timed(
            [
                sys.executable,
                str(ROOT / "bench" / "naive_peft.py"),
                "--steps",
                str(args.steps),
                "--eval-examples",
                str(args.eval_examples),
                "--max-length",
                "512",
            ]
            + [f"--targets={name}:{modules}" for name, (_, modules) in STUDY.items()]
        )
    naive = dict(re.findall(r"naive (\S+): eval_loss ([\d.]+)", output))
    print(
        f"\n3-strategy study ({args.steps} steps x 4 examples each, 1 seed, {args.eval_examples} eval examples):"
    )
    print(f"  loraplace study          : {study_time:7.1f} s")
    print(f"  naive PEFT + Trainer     : {naive_time:7.1f} s   (pad to 512, reload per run)")
    print(f"  speed-up                 : {naive_time / study_time:7.2f}x")
    print("  eval loss (loraplace / naive; same data, steps and targets, different batching):")
    for name in STUDY:
        print(f"    {name:<16} {losses[name]:.4f} / {float(naive.get(name, 'nan')):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and examples")
    parser.add_argument(
        "--skip-study", action="store_true", help="only the matmul peak and throughput"
    )
    args = parser.parse_args()
    args.steps = 3 if args.quick else 8
    args.max_length = 384
    args.eval_examples = 8 if args.quick else 16
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak, sustained = matmul_rates()
    print(
        f"fp32 matmul peak: {peak:.1f} GFLOP/s (best of 8 x 2048^3); sustained: {sustained:.1f} GFLOP/s "
        f"(mean over 5 s of back-to-back 2048^3)"
    )
    throughput(args, peak, sustained)
    if not args.skip_study:
        study_vs_naive(args)


if __name__ == "__main__":
    main()
