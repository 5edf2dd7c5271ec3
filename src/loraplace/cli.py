"""The ``loraplace`` command: each subcommand maps to one function.

User errors (:class:`~loraplace.errors.LoraplaceError`) print one line and exit with status 2;
nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from loraplace.errors import LoraplaceError

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def cmd_inspect(args) -> int:
    from loraplace.placement import ModelPlanner, inspect_table

    print(inspect_table(ModelPlanner.for_model(args.model)))
    return 0


def _named_strategies(specs: list[str]) -> dict[str, str]:
    named: dict[str, str] = {}
    for spec in specs:
        name, eq, value = spec.partition("=")
        if eq:
            named[name.strip()] = value.strip()
        else:
            named[spec.strip()] = spec.strip()
    return named


def cmd_plan(args) -> int:
    from loraplace.placement import ModelPlanner, plan_table

    planner = ModelPlanner.for_model(args.model)
    match = args.match_params
    plans = planner.plan(_named_strategies(args.strategy), args.rank, match)
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "total_params": planner.base_params,
                    "strategies": [
                        {
                            **plan.to_json(),
                            **({"matched_to": plan.matched_to} if plan.matched_to else {}),
                        }
                        for plan in plans
                    ],
                },
                indent=2,
            )
        )
    else:
        print(plan_table(planner, plans))
    return 0


def cmd_run(args) -> int:
    from loraplace.run import run_command

    return run_command(args)


def cmd_study(args) -> int:
    from loraplace.study import study_command

    return study_command(args)


def cmd_report(args) -> int:
    from loraplace.report import write_report

    report_dir = write_report(args.study_dir)
    print(f"report written to {report_dir}")
    return 0


def add_run_arguments(p) -> None:
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="built-in alias, local directory or hub id (default smollm2-135m)",
    )
    p.add_argument(
        "--strategy", required=True, help="strategy string or preset, e.g. all, attn, mlp@last:8"
    )
    p.add_argument("--name", default=None, help="run name (default: the strategy's canonical spec)")
    p.add_argument("--rank", type=_positive_int, default=8, help="global LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for LoRA init, dropout and data order (default 0)"
    )
    p.add_argument("--steps", type=_positive_int, default=24, help="optimizer steps (default 24)")
    p.add_argument(
        "--batch-size", type=_positive_int, default=4, help="examples per step (default 4)"
    )
    p.add_argument(
        "--learning-rate", type=float, default=2e-4, help="peak learning rate (default 2e-4)"
    )
    p.add_argument(
        "--dataset", default="gsm8k", help="gsm8k, a local .json/.jsonl/.txt file, or a hub id"
    )
    p.add_argument("--train-examples", type=_positive_int, default=256)
    p.add_argument("--eval-examples", type=_positive_int, default=64)
    p.add_argument(
        "--max-length",
        type=_positive_int,
        default=384,
        help="truncate examples to this many tokens",
    )
    p.add_argument(
        "--accuracy-examples",
        type=int,
        default=16,
        help="eval problems scored by greedy decoding (0 skips)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=256,
        help="generation budget for accuracy (default 256)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--out", default=None, help="run directory (default runs/single/<name>--seed<k>)"
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite an existing finished run directory"
    )


def add_study_arguments(p) -> None:
    p.add_argument(
        "config", nargs="?", default=None, help="study YAML (default: the built-in default study)"
    )
    p.add_argument(
        "--preset", default=None, help="a built-in study instead of a config file (default, smoke)"
    )
    p.add_argument("--out", default=None, help="study directory (default runs/<name>)")
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: runs in this process; ray: one Ray task per run (needs loraplace[ray])",
    )
    p.add_argument("--seeds", default=None, help="override training.seeds, e.g. 0,1,2")
    p.add_argument(
        "--retry-failed", action="store_true", help="run failed runs again instead of keeping them"
    )
    p.add_argument("--no-report", action="store_true", help="skip writing the report at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplace",
        description="Where should the LoRA adapters go? Plan, run and report LoRA placement studies.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="show the roles found in each decoder layer of a model")
    p.add_argument(
        "--model", required=True, help="built-in alias (smollm2-135m), local directory or hub id"
    )
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "plan", help="compile strategies for a model: targets, ranks, trainable parameters"
    )
    p.add_argument(
        "--model", required=True, help="built-in alias (smollm2-135m), local directory or hub id"
    )
    p.add_argument(
        "--strategy",
        action="append",
        required=True,
        help="strategy string or preset; NAME=SPEC names it (repeatable)",
    )
    p.add_argument("--rank", type=_positive_int, default=8, help="global LoRA rank (default 8)")
    p.add_argument(
        "--match-params",
        default=None,
        metavar="B",
        help="choose ranks so every strategy has about B trainable parameters "
        "(an integer, or a strategy name/spec whose count is the budget)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="train and evaluate one strategy with one seed")
    add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("study", help="run a placement study (the default study without a config)")
    add_study_arguments(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("report", help="write the report of a study directory")
    p.add_argument("study_dir", help="a study output directory (holding study.yaml and runs/)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LoraplaceError as exc:
        print(f"loraplace: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loraplace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
