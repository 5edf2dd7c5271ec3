"""The task screen: which built-in accuracy tasks each model can do, and which move with LoRA.

For each model and candidate task: the base model's accuracy on the task's validation split,
and the accuracy after one short all-linear LoRA run per seed (the recipe of the atlas,
docs/ATLAS-PLAN.md: r8, rsLoRA alpha 8, 128 steps of batch 4 on 512 training problems, warm-up
8, one learning rate), scored on the same validation problems. The eval split is never read:
the screen chooses a task, and the atlas measures on eval. Each (model, task) writes its
records as it goes into OUT/<model>/<task>/ (``base.json``, ``seed<k>.json``, with every
problem's answer), so an interrupted screen goes on where it stopped. ``--report DIR`` writes
the table (``README.md``) and the numbers (``screen.json``) from whatever is finished.

Run (in the background; hours on 2 CPU cores)::

    nohup .venv/bin/python tools/task_screen.py --out runs/task-screen > runs/task-screen.log 2>&1 &
    .venv/bin/python tools/task_screen.py --out runs/task-screen --report docs/results/task-screen
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

MODELS = ["smollm2-135m", "gemma3-270m"]
TASKS = ["piqa", "tweet-sentiment", "asdiv", "boolq"]
CHOICES = {"piqa": 2, "boolq": 2, "tweet-sentiment": 3, "asdiv": None}
EVAL_EXAMPLES = 500
"""The atlas's eval split (never read here): validation and train are carved after it."""


def _log(text: str) -> None:
    print(time.strftime("%H:%M:%S"), text, flush=True)


def _score(model, bench, batch_size: int):
    from loraplace.training.choices import score_task
    from loraplace.training.evaluate import eval_losses

    return score_task(
        model,
        bench.tokenizer,
        bench.validation.examples,
        bench.collator,
        loss_pass=eval_losses,
        batch_size=batch_size,
        device=bench.device,
        dtype=bench.dtype,
    )


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def screen_cell(model_name: str, task: str, out: Path, args) -> None:
    """Base model and one LoRA run per seed on one task, each record written when done."""
    import torch
    from peft import get_peft_model
    from transformers import set_seed

    from loraplace.settings import DataConfig
    from loraplace.training.loop import train_adapter
    from loraplace.training.workbench import Workbench

    cell = out / model_name / task
    wanted = [cell / "base.json"] + [cell / f"seed{s}.json" for s in args.seeds]
    if all(p.is_file() for p in wanted):
        return
    data = DataConfig(
        dataset=task,
        train_examples=args.train_examples,
        validation_examples=args.validation_examples,
        eval_examples=EVAL_EXAMPLES,
        max_length=args.max_length,
    )
    if (cell / "base.json").is_file():
        # One cell is never scored in two precisions (a record from before the option is fp32).
        done = json.loads((cell / "base.json").read_text()).get("precision", "fp32")
        if done != args.precision:
            raise SystemExit(
                f"{cell} was screened in {done}; go on with --precision {done} "
                "(or move the cell away)"
            )
    start = time.perf_counter()
    bench = Workbench.load(
        model_name, data, device=args.device, min_train=args.batch_size, precision=args.precision
    )
    _log(
        f"{model_name} {task}: loaded in {time.perf_counter() - start:.0f} s; "
        f"{len(bench.train.features)} train, {len(bench.validation.examples)} validation "
        f"problems; train tokens {bench.train.stats['tokens']}"
    )
    common = {
        "model": model_name,
        "task": task,
        "data": bench.data,
        "split": "validation",
        "device": bench.device,
        "precision": bench.precision,
        "torch_threads": torch.get_num_threads(),
    }
    if not (cell / "base.json").is_file():
        start = time.perf_counter()
        score = _score(bench.model, bench, args.eval_batch_size)
        _write(
            cell / "base.json",
            {
                **common,
                "metric": score.metric,
                "accuracy": score.accuracy,
                "accuracy_norm": score.accuracy_norm,
                "problems": len(score.rows),
                "time_s": round(time.perf_counter() - start, 1),
                "rows": score.rows,
            },
        )
        _log(f"{model_name} {task}: base accuracy {score.accuracy:.3f}")
    plan = bench.planner.plan({"all": "all"}, args.rank)[0]
    for seed in args.seeds:
        path = cell / f"seed{seed}.json"
        if path.is_file():
            continue
        set_seed(seed)
        model = get_peft_model(bench.fresh_model(), plan.lora_config(args.alpha, 0.0, "rslora"))
        start = time.perf_counter()
        outcome = train_adapter(
            model,
            bench.train.features,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=seed,
            device=bench.device,
            dtype=bench.dtype,
            pad_token_id=bench.collator.pad_token_id,
        )
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        score = _score(model, bench, args.eval_batch_size)
        _write(
            path,
            {
                **common,
                "seed": seed,
                "strategy": "all",
                "rank": args.rank,
                "alpha": args.alpha,
                "scaling": "rslora",
                "steps": outcome.steps,
                "learning_rate": args.learning_rate,
                "nonfinite": bool(outcome.nonfinite),
                "train_time_s": round(train_s, 1),
                "train_tokens": outcome.train_tokens,
                "tokens_per_s": round(outcome.train_tokens / train_s, 1),
                "metric": score.metric,
                "accuracy": score.accuracy,
                "accuracy_norm": score.accuracy_norm,
                "problems": len(score.rows),
                "eval_time_s": round(time.perf_counter() - start, 1),
                "rows": score.rows,
            },
        )
        _log(
            f"{model_name} {task} seed {seed}: accuracy {score.accuracy:.3f} after "
            f"{outcome.steps} steps ({train_s:.0f} s, {outcome.train_tokens / train_s:.0f} tok/s)"
        )
        del model


# --- the report ---------------------------------------------------------------------------------


def _majority(rows: list[dict], metric: str) -> float | None:
    """The accuracy of always giving the most frequent correct answer: by label position for a
    multiple-choice task, by the reference number for an exact-match task (ASDiv)."""
    key = {"acc": "label", "exact_match": "number"}.get(metric)
    if key is None or not rows:
        return None
    counts: dict = {}
    for row in rows:
        counts[row[key]] = counts.get(row[key], 0) + 1
    return max(counts.values()) / len(rows)


def summarize(out: Path, seeds: list[int]) -> list[dict]:
    from loraplace.stats.measures import wilson_interval
    from loraplace.stats.tests import paired_difference

    cells = []
    for model_name in MODELS:
        for task in TASKS:
            cell = out / model_name / task
            base_path = cell / "base.json"
            if not base_path.is_file():
                continue
            base = json.loads(base_path.read_text())
            runs = [
                json.loads((cell / f"seed{s}.json").read_text())
                for s in seeds
                if (cell / f"seed{s}.json").is_file()
            ]
            n = base["problems"]
            k = sum(r["correct"] for r in base["rows"])
            chance = 1 / CHOICES[task] if CHOICES[task] else 0.0
            majority = _majority(base["rows"], base["metric"])
            low, high = wilson_interval(k, n)
            moved = paired_difference(
                {r["seed"]: r["accuracy"] for r in runs},
                {r["seed"]: base["accuracy"] for r in runs},
            )
            pooled = (
                wilson_interval(
                    sum(sum(x["correct"] for x in r["rows"]) for r in runs), n * len(runs)
                )
                if runs
                else None
            )
            above = low > max(chance, majority or 0.0)
            moves = (
                moved.n >= 3
                and moved.mean is not None
                and abs(moved.mean) >= 0.03
                and moved.ci_low is not None
                and (moved.ci_low > 0 or moved.ci_high < 0)
            )
            cells.append(
                {
                    "model": model_name,
                    "task": task,
                    "metric": base["metric"],
                    "problems": n,
                    "chance": chance,
                    "majority": majority,
                    "base": base["accuracy"],
                    "base_norm": base.get("accuracy_norm"),
                    "base_ci95": [low, high],
                    "seeds": [r["seed"] for r in runs],
                    "lora": [r["accuracy"] for r in runs],
                    "lora_norm": [r.get("accuracy_norm") for r in runs],
                    "lora_pooled_ci95": list(pooled) if pooled else None,
                    "moved_mean": moved.mean,
                    "moved_ci95": [moved.ci_low, moved.ci_high],
                    "train_tokens": runs[0]["train_tokens"] if runs else None,
                    "tokens_per_s": [r["tokens_per_s"] for r in runs],
                    "above_chance_and_majority": above,
                    "moves": moves,
                }
            )
    return cells


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def write_report(out: Path, report: Path, seeds: list[int], args) -> None:
    cells = summarize(out, seeds)
    report.mkdir(parents=True, exist_ok=True)
    (report / "screen.json").write_text(json.dumps(cells, indent=1) + "\n")
    lines = [
        "# Task screen",
        "",
        "Which built-in accuracy task each model can do, and whether one short LoRA run moves "
        "it (docs/ATLAS-PLAN.md, the task-2 rule). Written by `tools/task_screen.py` from the "
        f"records in `{out}`; scored on each task's **validation** split "
        f"({args.validation_examples} problems, after the {EVAL_EXAMPLES}-problem eval split, "
        "which is never read), base model and all-linear LoRA r8 (rsLoRA, alpha "
        f"{args.alpha:g}) trained {args.steps} steps of batch {args.batch_size} on "
        f"{args.train_examples} problems at learning rate {args.learning_rate:g}, one run per "
        "seed. Accuracy is `acc` (multiple choice, summed log-likelihood) or exact match of the "
        "generated number (ASDiv).",
        "",
        "| model | task | chance | majority | base acc [Wilson 95%] | base acc_norm | LoRA acc "
        "per seed | LoRA − base, mean [paired t 95%] | above chance and majority | moves ≥ 3 "
        "points | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        low, high = c["base_ci95"]
        moved = (
            f"{100 * c['moved_mean']:+.1f}"
            + (
                f" [{100 * c['moved_ci95'][0]:+.1f}, {100 * c['moved_ci95'][1]:+.1f}]"
                if c["moved_ci95"][0] is not None
                else ""
            )
            if c["moved_mean"] is not None
            else "–"
        )
        speed = c["tokens_per_s"]
        lines.append(
            f"| {c['model']} | {c['task']} | {_pct(c['chance'])} | {_pct(c['majority'])} | "
            f"{_pct(c['base'])} [{_pct(low)}, {_pct(high)}] | {_pct(c['base_norm'])} | "
            f"{', '.join(_pct(x) for x in c['lora']) or '–'} | {moved} | "
            f"{'yes' if c['above_chance_and_majority'] else 'no'} | "
            f"{'yes' if c['moves'] else 'no'} | "
            f"{round(sum(speed) / len(speed)) if speed else '–'} |"
        )
    lines += [
        "",
        "Percentages of the validation problems. Majority: always the most frequent correct "
        "answer (multiple choice: by its position among the choices; ASDiv: the most frequent "
        "reference number, a model that always answered it). A movement needs all "
        f"{len(seeds)} seeds and a paired interval that excludes 0. Tokens/s: training, on the "
        "development host's 2 CPU cores shared with other work.",
        "",
    ]
    (report / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/task-screen"))
    parser.add_argument("--report", type=Path, default=None, help="write the table here and stop")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-examples", type=int, default=512)
    parser.add_argument("--validation-examples", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        # A long screen that stops should say why in its log.
        signal.signal(signum, lambda n, _: (_log(f"stopped by signal {n}"), sys.exit(128 + n)))
    if args.report is not None:
        write_report(args.out, args.report, args.seeds, args)
        return
    # Task by task, both models each, so the cheapest tasks are decided first.
    for task in args.tasks.split(","):
        for model_name in args.models.split(","):
            screen_cell(model_name, task, args.out, args)
    _log("screen complete")


if __name__ == "__main__":
    main()
