"""The ``loraplace`` command: each subcommand turns its arguments into typed objects and calls
one domain function.

The options of ``run`` that set hyperparameters are derived from the settings dataclasses
(:mod:`loraplace.settings`) by :mod:`loraplace.cli_options`, so each default has one source.
User errors (:class:`~loraplace.errors.LoraplaceError`) print one line and exit with status 2;
nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from loraplace.api import run, study
from loraplace.cli.options import (
    add_model_options,
    add_settings_options,
    int_list,
    positive_int,
    settings_overrides,
    word_list,
)
from loraplace.config.study import (
    load_study_config,
    preset_names,
    preset_path,
    read_study_mapping,
)
from loraplace.config.templates import apply_pilot, describe_strategies
from loraplace.errors import LoraplaceError, short_repr
from loraplace.lmeval.bridge import BUILTIN_LMEVAL_TASKS, DEFAULT_BATCH_SIZE, evaluate_study
from loraplace.report.load import placement_spread
from loraplace.report.render import span
from loraplace.settings import MATCH_TOLERANCE, PRECISIONS, AutoSpec, field_help
from loraplace.store import write_json_atomic
from loraplace.studies.export import export_study
from loraplace.studies.status import study_status

__all__ = ["main", "build_parser"]


# --- commands ---------------------------------------------------------------------------------


def cmd_inspect(args) -> int:
    # Deferred: importing it loads torch.
    from loraplace.placement.planner import ModelPlanner, inspect_table

    planner = ModelPlanner.for_model(args.model, trust_remote_code=args.trust_remote_code)
    print(inspect_table(planner))
    return 0


def _named_strategies(specs: list[str]) -> dict[str, str]:
    named: dict[str, str] = {}
    for spec in specs:
        name, eq, value = spec.partition("=")
        key, value = (name.strip(), value.strip()) if eq else (spec.strip(), spec.strip())
        if key in named:
            raise LoraplaceError(f"strategy name '{key}' is given twice")
        named[key] = value
    return named


def cmd_plan(args) -> int:
    # Deferred: importing it loads torch.
    from loraplace.placement.planner import ModelPlanner, plan_table

    planner = ModelPlanner.for_model(args.model, trust_remote_code=args.trust_remote_code)
    named = _named_strategies(args.strategy)
    if args.ranks and args.match_params:
        raise LoraplaceError("--ranks and --match-params both choose ranks; use one of them")
    groups = (
        [(rank, planner.plan(named, rank)) for rank in args.ranks]
        if args.ranks
        else [
            (
                args.rank,
                planner.plan(
                    named,
                    args.rank,
                    args.match_params,
                    tolerance=args.match_tolerance if args.match_params else None,
                ),
            )
        ]
    )
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "total_params": planner.base_params,
                    "strategies": [
                        {
                            **plan.to_json(),
                            **({"rank": rank} if args.ranks else {}),
                            **({"matched_to": plan.matched_to} if plan.matched_to else {}),
                        }
                        for rank, plans in groups
                        for plan in plans
                    ],
                },
                indent=2,
            )
        )
    else:
        print(
            "\n\n".join(
                (f"rank {rank}:\n" if args.ranks else "") + plan_table(planner, plans)
                for rank, plans in groups
            )
        )
    return 0


def _base_config_mapping(args) -> dict:
    """The mapping a ``run`` starts from: ``--config``/``--preset`` or nothing (the defaults)."""

    if args.config and args.preset:
        raise LoraplaceError("give --config or --preset, not both")
    source = preset_path(args.preset) if args.preset else Path(args.config) if args.config else None
    if source is None:
        return {}
    if not source.is_file():
        raise LoraplaceError(f"study config '{source}' not found")
    return read_study_mapping(source)


def cmd_run(args) -> int:

    if args.config and args.preset:
        raise LoraplaceError("give --config or --preset, not both")
    config = preset_path(args.preset) if args.preset else args.config
    if config is not None and not Path(config).is_file():
        raise LoraplaceError(f"study config '{config}' not found")
    overrides = settings_overrides(args)
    for key, value in (("model", args.model), ("device", args.device)):
        if value is not None:
            overrides[key] = value
    if args.trust_remote_code:
        overrides["trust_remote_code"] = True
    result = run(
        args.strategy,
        args.seed,
        config=config,
        out=args.out,
        force=args.force,
        name=args.name,
        **overrides,
    )
    return 0 if result["status"] == "finished" else 1


def cmd_study(args) -> int:

    if args.config and args.preset:
        raise LoraplaceError("give a config file or --preset, not both")
    source = args.config or preset_path(args.preset or "default")
    raw = _study_mapping(source)
    if args.pilot:
        where = (
            short_repr(args.config, 200)
            if args.config
            else f"the preset '{args.preset or 'default'}'"
        )
        raw = apply_pilot(raw, where)
    _override(raw, args)
    config = load_study_config(raw)
    if config.resolved:  # what the preset's markers became for this model, before the estimate
        print(describe_strategies(config), flush=True)
    return study(
        config,
        out=args.out,
        executor=args.executor,
        retry_failed=args.retry_failed,
        report=not args.no_report,
        estimate=args.estimate,
    )


def _override(raw: dict, args) -> None:
    """The options of `study` that change its config, applied to the raw mapping."""
    if args.model is not None:
        raw["model"] = args.model
    if args.dataset is not None:
        raw["data"] = {**(raw.get("data") or {}), "dataset": args.dataset}
    if (args.model or args.dataset) and isinstance(raw.get("name"), str):
        # Another model or dataset is another study: by default, in a directory of its own.
        raw["name"] = cell_name(raw["name"], args.model, args.dataset)
    if args.seeds is not None:
        raw["training"] = {**(raw.get("training") or {}), "seeds": args.seeds}
    if args.precision is not None:
        raw["training"] = {**(raw.get("training") or {}), "precision": args.precision}
    if args.track is not None:
        raw["tracking"] = args.track
    if args.trust_remote_code:
        raw["trust_remote_code"] = True


def cell_name(name: str, model: str | None, dataset: str | None) -> str:
    """``name`` with the model and dataset given on the command line appended, each as its
    last path part without a suffix and in file-name characters:
    ``placement-gemma3-270m-piqa``."""
    parts = [name]
    for given in (model, dataset):
        if given:
            stem = Path(given.rstrip("/")).stem or given
            parts.append(re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "x")
    return "-".join(parts)[:100]


def _study_mapping(source) -> dict:

    path = Path(source)
    if not path.is_file():
        raise LoraplaceError(
            f"study config {short_repr(str(source), 200)} not found; presets: "
            f"{', '.join(preset_names())}"
        )
    return read_study_mapping(path)


def cmd_place(args) -> int:  # noqa: C901 (one branch per option of `place`, read top to bottom)
    # Deferred: importing it loads torch, transformers.
    from loraplace.autoplace.choose import check_budget
    from loraplace.autoplace.probe import ModelOnly, auto_place, resolve_budget
    from loraplace.training.workbench import Workbench

    raw = _base_config_mapping(args)
    fixed = {n: s for n, s in (raw.get("strategies") or {}).items() if isinstance(s, str)}
    for key, value in (("model", args.model), ("device", args.device)):
        if value is not None:
            raw[key] = value
    if args.trust_remote_code:
        raw["trust_remote_code"] = True
    for section, values in settings_overrides(args).items():
        raw[section] = {**(raw.get(section) or {}), **values}
    raw.update({"strategies": {"probe": "all"}, "reference": None, "ranks": None})
    raw.pop("match_params", None)
    config = load_study_config(raw)  # validates model and data settings like a study's
    budget_text = args.budget.strip()
    budget = int(budget_text) if budget_text.isdigit() else budget_text
    spec = AutoSpec(
        method=args.method,
        budget=budget,
        seed=args.seed,
        **{k: v for k, v in vars(args).items() if k.startswith("probe_") and v is not None},
    )
    rank = args.rank or config.lora.rank
    # Deferred: importing it loads torch.
    from loraplace.placement.planner import ModelPlanner

    planner = ModelPlanner.for_model(config.model, trust_remote_code=config.trust_remote_code)
    budget = resolve_budget(spec.budget, planner, rank, fixed)
    check_budget(planner.arch, budget, rank=rank)  # before loading weights or data
    if spec.method == "grad":  # only the probe reads data
        print(f"loading {config.model} and {config.data.dataset} ...", flush=True)
        bench = Workbench.for_config(config)
    elif spec.method == "snr":  # the base weights alone
        # Deferred: importing it loads torch.
        from loraplace.models import load_model
        from loraplace.placement.arch import classify

        print(f"loading {config.model} ...", flush=True)
        model = load_model(planner.source)
        bench = ModelOnly(model, classify(model))
    else:  # the architecture alone
        bench = ModelOnly(None, planner.arch)
    out = Path(args.out) if args.out else None
    seeds = list(dict.fromkeys(args.seeds or [args.seed]))
    results = []
    for seed in seeds:
        # Several seeds: each one's files in its own folder, seed<N>.
        where = out / f"seed{seed}" if out is not None and args.seeds else out
        result = auto_place(
            bench,
            spec,
            rank=rank,
            budget=budget,
            seed=seed,
            batch_size=config.training.batch_size,
            out_dir=where,
        )
        placement = result.placement
        print(
            f"method {spec.method}, seed {seed}, rank {rank}: {placement.trainable_params:,} of "
            f"a {budget:,}-parameter budget ({100 * placement.fill:.1f}%), "
            f"{len(placement.chosen)} modules; took {result.cost.time_s:.1f} s"
            + (
                f" ({result.cost.steps} probe steps, {result.cost.tokens:,} tokens)"
                if result.cost.steps
                else ""
            ),
            flush=True,
        )
        if where is not None:
            write_json_atomic(where / "placement.json", result.to_json())
            print(f"importance.csv, importance.png and placement.json written to {where}")
        results.append(result)
    if len(results) > 1:
        print(_placement_agreement(results))
    for result in results:
        print(result.placement.strategy)
    return 0


def _placement_agreement(results) -> str:
    """How far the placements of several seeds agree, in one line."""
    spread = placement_spread(
        {r.seed: set(r.placement.chosen) for r in results},
        {r.seed: r.scores for r in results if r.scores is not None},
    )

    pairs = len(results) * (len(results) - 1) // 2
    text = (
        f"agreement over {len(results)} seeds: Jaccard index of the chosen modules "
        f"{span(spread.jaccard)} over {pairs} pairs of seeds"
    )
    if spread.tau:
        text += f", Kendall tau-b of the module scores {span(spread.tau)}"
    return text + (
        f"; {spread.in_all} modules chosen by every seed, {spread.in_any} by some "
        "(the strategies follow, one a line, in seed order)"
    )


def cmd_report(args) -> int:
    # Deferred: importing it loads matplotlib, scipy.
    from loraplace.report.atlas import write_atlas
    from loraplace.report.build import write_report

    if args.atlas is not None:
        out = write_atlas([args.study_dir, *args.more], args.atlas)
        print(f"atlas written to {out / 'atlas.md'} and {out / 'atlas.png'}")
        return 0
    if args.more:
        raise LoraplaceError("several study directories make an atlas: add --atlas OUT")
    report_dir = write_report(args.study_dir)
    print(f"report written to {report_dir}")
    return 0


def cmd_export(args) -> int:

    count = export_study(Path(args.study_dir), Path(args.dest), states=args.states)
    left = "no adapters, checkpoints or tracker stores"
    if args.states:
        left += "; saved training states of runs in progress included"
    print(f"{count} files copied to {args.dest} ({left})")
    return 0


def cmd_status(args) -> int:

    print(study_status(Path(args.study_dir)))
    return 0


def cmd_evaluate(args) -> int:
    evaluate_study(
        args.study_dir,
        args.lm_eval,
        limit=args.limit,
        include=args.include,
        batch_size=args.batch_size,
        device=args.device,
        force=args.force,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplace",
        description="Where should the LoRA adapters go? Plan, run and report placement studies.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="show the roles found in each decoder layer of a model")
    add_model_options(p, required=True)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "plan", help="compile strategies for a model: targets, ranks, trainable parameters"
    )
    add_model_options(p, required=True)
    p.add_argument(
        "--strategy",
        action="append",
        required=True,
        help="strategy string or preset; NAME=SPEC names it (repeatable)",
    )
    p.add_argument("--rank", type=positive_int, default=8, help="global LoRA rank (default 8)")
    p.add_argument("--ranks", type=int_list, default=None, help="several ranks, e.g. 2,8,32")
    p.add_argument(
        "--match-params",
        default=None,
        metavar="B",
        help="choose ranks so every strategy has about B trainable parameters "
        "(an integer, or a strategy name/spec whose count is the budget)",
    )
    p.add_argument(
        "--match-tolerance",
        type=float,
        default=MATCH_TOLERANCE,
        metavar="T",
        help="with --match-params: when one rank for every module misses the budget by more "
        f"than T (relative; default {MATCH_TOLERANCE}), give attention and MLP modules a rank "
        "each (e.g. attn:r5+mlp:r2)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="train and evaluate one strategy with one seed")
    p.add_argument(
        "--strategy", required=True, help="strategy string, preset, or a name in --config"
    )
    p.add_argument("--config", default=None, help="take every setting from this study YAML")
    p.add_argument("--preset", default=None, help="take every setting from a built-in study")
    add_model_options(p, required=False)
    p.add_argument("--name", default=None, help="run name (default: the strategy's spec)")
    p.add_argument(
        "--seed", type=int, default=0, help="LoRA init, dropout and data order (default 0)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--out", default=None, help="run directory (default runs/single/<name>--seed<k>)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing finished run")
    add_settings_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("study", help="run a placement study (the default study without a config)")
    p.add_argument(
        "config", nargs="?", default=None, help="study YAML (default: the default study)"
    )
    p.add_argument(
        "--preset", default=None, help="a built-in study (default, smoke, pilot, placement)"
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="override the config's model: a built-in alias, local directory or hub id",
    )
    p.add_argument(
        "--dataset",
        default=None,
        metavar="D",
        help="override data.dataset: gsm8k, a task scored by accuracy (piqa, boolq, asdiv, "
        "tweet-sentiment), a local file or a hub id",
    )
    p.add_argument(
        "--pilot",
        action="store_true",
        help="run the config's pilot, a small exploratory version of it (its 'pilot:' key; "
        "the placement preset: 2 seeds, 32 steps, one learning rate)",
    )
    p.add_argument("--out", default=None, help="study directory (default runs/<name>)")
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: runs in this process; ray: one Ray task per run (needs loraplace[ray])",
    )
    p.add_argument(
        "--seeds", type=int_list, default=None, help="override training.seeds, e.g. 0,1,2"
    )
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=None,
        help="override training.precision: fp32, bf16 or auto (see CONCEPTS, Precision)",
    )
    p.add_argument("--track", type=word_list, default=None, help="trackers: mlflow,tensorboard")
    p.add_argument("--trust-remote-code", action="store_true", help="let the model's own code run")
    p.add_argument("--retry-failed", action="store_true", help="rerun failed runs")
    p.add_argument(
        "--estimate", action="store_true", help="print how long the study will take; run nothing"
    )
    p.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("place", help="choose a placement automatically under a parameter budget")
    p.add_argument(
        "--budget",
        required=True,
        help="trainable parameters: an integer, or a strategy whose count at --rank is the budget",
    )
    p.add_argument("--method", choices=["grad", "snr", "random"], default="grad")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="seed of the probe or the random draw")
    seeds.add_argument(
        "--seeds",
        type=int_list,
        default=None,
        help="place once per seed and print how far the placements agree, e.g. 0,1,2",
    )
    p.add_argument("--rank", type=positive_int, default=None, help="rank of each chosen module")
    p.add_argument(
        "--out",
        default=None,
        help="write importance.csv/.png and placement.json here (with --seeds, in seed<N>/)",
    )
    p.add_argument("--config", default=None, help="take model and data settings from a study YAML")
    p.add_argument("--preset", default=None, help="take model and data settings from a preset")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_model_options(p, required=False)
    # The probe's options and their defaults are AutoSpec's fields (one source of defaults).
    for f in fields(AutoSpec):
        if f.name.startswith("probe_") and f.name != "probe_per_seed":
            p.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=type(f.default),
                help=field_help(AutoSpec, f.name),
            )
    add_settings_options(p, sections=("data",))
    p.set_defaults(func=cmd_place)

    p = sub.add_parser("report", help="write the report of a study directory")
    p.add_argument("study_dir", help="a study directory (holding study.yaml and runs/)")
    p.add_argument(
        "more",
        nargs="*",
        metavar="STUDY_DIR",
        help="with --atlas: further study directories, one per (model, task) cell",
    )
    p.add_argument(
        "--atlas",
        metavar="OUT",
        default=None,
        help="write one table and one heatmap across the studies (atlas.md, atlas.png) into "
        "OUT: each placement against the reference per model and task; the studies must "
        "differ in nothing but model and task",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="copy a study's records without its weights (to commit)")
    p.add_argument("study_dir", help="a study directory")
    p.add_argument("dest", help="where to copy it")
    p.add_argument(
        "--states",
        action="store_true",
        help="also copy the saved training state of each run in progress, so that a copy of "
        "the study goes on from it (tens of MB a run)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("status", help="finished, failed and pending runs of a study, and an ETA")
    p.add_argument("study_dir", help="a study directory")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "evaluate",
        help="score the base model and every finished run's adapter with lm-evaluation-harness "
        "(the optional extra [lmeval])",
    )
    p.add_argument("study_dir", help="a study directory")
    p.add_argument(
        "--lm-eval",
        dest="lm_eval",
        type=word_list,
        required=True,
        metavar="TASK[,TASK...]",
        help=f"loraplace's built-in tasks ({', '.join(BUILTIN_LMEVAL_TASKS)}: the eval split a "
        "study on the task scores, read from local files) or lm-eval tasks whose data is on "
        "this machine",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="problems per task (all)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of your own lm-eval task YAMLs (repeatable)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"sequences per forward pass (default {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: the study's)")
    p.add_argument(
        "--force", action="store_true", help="score again runs already scored on these tasks"
    )
    p.set_defaults(func=cmd_evaluate)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """loraplace's own warnings as one ``loraplace: warning:`` line; others as Python does."""
    if issubclass(category, UserWarning) and "loraplace" in Path(filename).parts:
        print(f"loraplace: warning: {message}", file=file or sys.stderr, flush=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    # PEFT calls a transformers API that warns of its own renaming; nothing a user can act on.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LoraplaceError as exc:
        print(f"loraplace: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"loraplace: error: disk full ({exc.filename or exc.strerror}): free space, then run "
            "the same command again (finished runs are kept)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("loraplace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
