"""The study report: summary table, statistics against the reference, figures, findings.

Reads only the study directory (``study.yaml`` and ``runs/*/result.json`` + ``metrics.jsonl``)
and writes ``report/``: ``summary.csv``, ``summary.tex`` (booktabs), ``report.md``,
``report.html`` (one self-contained file), ``pareto.png``, ``curves.png`` and ``placement.png``.

Statistical rule used throughout: a strategy differs from the reference when Welch's t-test on
eval loss over seeds gives ``p < 0.05``; otherwise the difference is *within noise*. With fewer
than two finished seeds on either side no test is made and no claim is written.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraplace import figures
from loraplace.store import read_json
from loraplace.report_render import (
    FAILURES_HEADING,
    _first,
    _num,
    render_html,
    render_markdown,
    render_tex,
    tex_escape,
)
from loraplace.stats import ci95, mean, pareto_front, std, welch_p_value

__all__ = [
    "ALPHA",
    "PARAM_TOLERANCE",
    "REQUIRED_COLUMNS",
    "SUMMARY_COLUMNS",
    "Study",
    "load_study",
    "summarize",
    "summarize_study",
    "findings",
    "write_summary_csv",
    "tex_escape",
    "render_tex",
    "render_markdown",
    "render_html",
    "write_report",
]

#: Significance level of the Welch t-tests.
ALPHA = 0.05
#: Relative difference in trainable parameters above which comparisons are flagged as unequal.
PARAM_TOLERANCE = 0.10

REQUIRED_COLUMNS: tuple[str, ...] = (
    "strategy",
    "n",
    "eval_loss_mean",
    "eval_loss_std",
    "eval_loss_ci95",
    "perplexity",
    "accuracy_mean",
    "trainable_params",
    "trainable_pct",
    "param_reduction_pct",
    "train_time_s_mean",
    "speedup_vs_reference",
    "p_value_vs_reference",
    "pareto",
)
SUMMARY_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + (
    "spec",
    "n_failed",
    "seeds",
    "eval_loss_delta_vs_reference",
    "vs_reference",
    "within_noise",
    "base_eval_loss",
    "accuracy_std",
    "accuracy_examples",
    "train_time_s_std",
    "tokens_per_s_mean",
    "peak_memory_mb_max",
    "total_params",
    "ranks",
)


@dataclass
class Study:
    """Everything the report reads from a study directory."""

    root: Path
    """The study directory."""
    config: dict[str, Any]
    """Parsed ``study.yaml`` (empty when the file is missing)."""
    config_text: str
    """``study.yaml`` verbatim, for the report."""
    strategies: dict[str, str]
    """Strategy name -> spec, in report order (``study.yaml`` order, then any extra names)."""
    reference: str | None
    """Name of the reference strategy, or ``None`` when it has no records."""
    records: list[dict[str, Any]]
    """All ``result.json`` records, finished and failed."""
    metrics: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    """Training curve of each run, keyed by ``(strategy, seed)``."""
    incomplete: list[str] = field(default_factory=list)
    """Run directories without a (readable) ``result.json``: in progress, interrupted or corrupt."""

    def runs(self, name: str, status: str | None = None) -> list[dict[str, Any]]:
        """Records of one strategy, optionally only those with the given status, by seed."""
        recs = [
            r for r in self.records if r.get("name") == name and status in (None, r.get("status"))
        ]
        return sorted(recs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))

    def eval_losses(self, name: str) -> list[float]:
        """Eval loss of each finished run of one strategy."""
        return [
            r["eval_loss"]
            for r in self.runs(name, "finished")
            if _num(r.get("eval_loss")) is not None
        ]


def _config_strategies(config: dict[str, Any]) -> dict[str, str]:
    raw = config.get("strategies") or {}
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    out: dict[str, str] = {}
    for item in raw:  # a list of names/specs, or of {name: ..., spec: ...}
        if isinstance(item, dict):
            out[str(item.get("name", item.get("spec")))] = str(item.get("spec", item.get("name")))
        else:
            out[str(item)] = str(item)
    return out


def _config_seeds(config: dict[str, Any]) -> set[int] | None:
    seeds = (config.get("training") or {}).get("seeds")
    try:
        return {int(seed) for seed in seeds} if isinstance(seeds, list) and seeds else None
    except (TypeError, ValueError):
        return None


def _dir_seed(name: str) -> int | None:
    try:
        return int(name.rsplit("--seed", 1)[1])
    except (IndexError, ValueError):
        return None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: the rest of the curve is still good
            if isinstance(rec, dict):
                out.append(rec)
    return out


def load_study(study_dir: str | Path) -> Study:
    """Reads a study directory.

    Args:
        study_dir: Directory holding ``study.yaml`` and ``runs/``.

    Returns:
        The :class:`Study`. Run directories without a readable ``result.json`` are listed in
        ``incomplete``, not silently dropped.

    Raises:
        FileNotFoundError: If ``study_dir`` does not exist.
    """
    root = Path(study_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"study directory not found: {root}")
    cfg_path = root / "study.yaml"
    text = cfg_path.read_text(encoding="utf-8") if cfg_path.is_file() else ""
    config = yaml.safe_load(text) or {} if text else {}
    records, metrics, incomplete = [], {}, []
    run_dirs = (
        sorted(p for p in (root / "runs").glob("*") if p.is_dir())
        if (root / "runs").is_dir()
        else []
    )
    seeds = _config_seeds(config)
    for run_dir in run_dirs:
        if seeds is not None and _dir_seed(run_dir.name) not in seeds:
            continue  # a seed taken out of the study's list: on disk, not part of this study
        rec = read_json(run_dir / "result.json")
        if rec is None:
            incomplete.append(run_dir.name)
            continue
        rec.setdefault("name", run_dir.name.split("--seed")[0])
        records.append(rec)
        metrics[(rec["name"], rec.get("seed"))] = _read_metrics(run_dir / "metrics.jsonl")
    strategies = _config_strategies(config)
    for rec in records:
        strategies.setdefault(rec["name"], str(rec.get("spec", rec["name"])))
    names_with_runs = {r["name"] for r in records}
    reference = config.get("reference") or ("baseline" if "baseline" in strategies else None)
    if reference not in names_with_runs:
        if reference is not None:
            warnings.warn(f"reference strategy {reference!r} has no results; no comparisons made")
        reference = None
    return Study(root, config, text, strategies, reference, records, metrics, incomplete)


def _strategy_row(study: Study, name: str) -> dict[str, Any]:
    done, every = study.runs(name, "finished"), study.runs(name)
    loss = study.eval_losses(name)
    acc = [r.get("accuracy") for r in done]
    times = [r.get("train_time_s") for r in done]
    params = _first(done, "trainable_params") or _first(every, "trainable_params")
    ranks = _first(done, "ranks") or _first(every, "ranks") or {}
    mem = [m for m in (_num(r.get("peak_memory_mb")) for r in done) if m is not None]
    loss_mean = mean(loss)
    return {
        "strategy": name,
        "n": len(done),
        "eval_loss_mean": loss_mean,
        "eval_loss_std": std(loss),
        "eval_loss_ci95": ci95(loss),
        "perplexity": math.exp(loss_mean) if loss_mean is not None and loss_mean < 700 else None,
        "accuracy_mean": mean(acc),
        "trainable_params": int(params) if params is not None else None,
        "trainable_pct": _num(_first(done, "trainable_pct") or _first(every, "trainable_pct")),
        "train_time_s_mean": mean(times),
        "pareto": False,
        "spec": study.strategies.get(name, _first(every, "spec")),
        "n_failed": sum(1 for r in every if r.get("status") != "finished"),
        "seeds": " ".join(str(r.get("seed")) for r in done),
        "base_eval_loss": mean([r.get("base_eval_loss") for r in every]),
        "accuracy_std": std(acc),
        "accuracy_examples": _first(done, "accuracy_examples") if mean(acc) is not None else None,
        "train_time_s_std": std(times),
        "tokens_per_s_mean": mean([r.get("tokens_per_s") for r in done]),
        "peak_memory_mb_max": max(mem) if mem else None,
        "total_params": _first(done, "total_params") or _first(every, "total_params"),
        "ranks": " ".join(f"{k}:{v}" for k, v in ranks.items())
        if isinstance(ranks, dict)
        else str(ranks),
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _compare(row: dict[str, Any], ref: dict[str, Any] | None, p: float | None) -> None:
    """Fills the reference-relative columns of ``row`` in place."""
    is_ref = ref is not None and row["strategy"] == ref["strategy"]
    share = _ratio(row["trainable_params"], ref["trainable_params"]) if ref else None
    row["param_reduction_pct"] = 100.0 * (1.0 - share) if share is not None else None
    row["speedup_vs_reference"] = (
        _ratio(ref["train_time_s_mean"], row["train_time_s_mean"]) if ref else None
    )
    row["p_value_vs_reference"] = None if is_ref else p
    m, rm = row["eval_loss_mean"], ref["eval_loss_mean"] if ref else None
    row["eval_loss_delta_vs_reference"] = m - rm if m is not None and rm is not None else None
    if is_ref:
        row["vs_reference"], row["within_noise"] = "reference", None
    elif row["p_value_vs_reference"] is None:
        row["vs_reference"], row["within_noise"] = ("untested" if ref else None), None
    elif row["p_value_vs_reference"] >= ALPHA:
        row["vs_reference"], row["within_noise"] = "within noise", True
    else:
        row["vs_reference"] = "better" if row["eval_loss_delta_vs_reference"] < 0 else "worse"
        row["within_noise"] = False


def summarize_study(study: Study) -> list[dict[str, Any]]:
    """One summary row per strategy (see :data:`SUMMARY_COLUMNS`), in report order.

    Args:
        study: A loaded study.

    Returns:
        Rows as dicts of plain values; ``None`` marks a value that cannot be computed.
    """
    rows = [_strategy_row(study, name) for name in study.strategies]
    ref = next((r for r in rows if r["strategy"] == study.reference), None)
    ref_loss = study.eval_losses(ref["strategy"]) if ref else []
    for row in rows:
        p = welch_p_value(study.eval_losses(row["strategy"]), ref_loss) if ref else None
        _compare(row, ref, p)
    flags = pareto_front([(r["trainable_params"], r["eval_loss_mean"]) for r in rows])
    for row, flag in zip(rows, flags):
        row["pareto"] = flag
    return [{col: row.get(col) for col in SUMMARY_COLUMNS} for row in rows]


def summarize(study_dir: str | Path) -> list[dict[str, Any]]:
    """Summarises a study directory: one row per strategy (see :func:`summarize_study`)."""
    return summarize_study(load_study(study_dir))


def _names(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"`{r['strategy']}`" for r in rows) if rows else "none"


def _cheapest_within_noise(study: Study, rows: list[dict[str, Any]]) -> str:
    scored = [r for r in rows if r["eval_loss_mean"] is not None]
    if not scored:
        return "No strategy has a finished run, so no best strategy can be named."
    best = min(scored, key=lambda r: r["eval_loss_mean"])
    head = f"Lowest mean eval loss: `{best['strategy']}` ({best['eval_loss_mean']:.4f})."
    if best["n"] < 2:
        return (
            head
            + " It has a single finished seed, so which cheaper strategies are within noise of it cannot be tested."
        )
    best_loss = study.eval_losses(best["strategy"])
    p_values = {
        r["strategy"]: welch_p_value(study.eval_losses(r["strategy"]), best_loss)
        for r in scored
        if r is not best
    }
    close = [best] + [
        r for r in scored if r is not best and (p_values[r["strategy"]] or 0.0) >= ALPHA
    ]
    cheapest = min(close, key=lambda r: (r["trainable_params"] or math.inf, r["eval_loss_mean"]))

    def cheaper(r: dict[str, Any]) -> bool:
        return r is not best and (r["trainable_params"] or math.inf) < (
            cheapest["trainable_params"] or math.inf
        )

    # A strategy with fewer than 2 finished seeds has no p-value: it is neither within noise
    # nor significantly worse, and the sentence must not imply either.
    untested = [r for r in scored if cheaper(r) and p_values[r["strategy"]] is None]
    caveat = (
        f" Whether the cheaper {_names(untested)} {'is' if len(untested) == 1 else 'are'} within noise of it "
        f"cannot be tested (fewer than 2 finished seeds)."
        if untested
        else ""
    )
    if cheapest is best:
        if any(cheaper(r) and p_values[r["strategy"]] is not None for r in scored):
            return (
                head
                + f" No tested strategy with fewer trainable parameters is within noise of it (p < {ALPHA})."
                + caveat
            )
        return head + (caveat or " No strategy has fewer trainable parameters.")
    p = p_values[cheapest["strategy"]]
    return head + (
        f" The cheapest strategy within noise of it is `{cheapest['strategy']}` with "
        f"{cheapest['trainable_params']:,} trainable parameters vs {best['trainable_params']:,} "
        f"(loss {cheapest['eval_loss_mean']:.4f}, Welch p = {p:.3g} vs the best)." + caveat
    )


def _match_hint(rows: list[dict[str, Any]], ref: dict[str, Any]) -> str:
    """How to rerun at an equal budget: match to the reference, or to the smallest strategy,
    which keeps every rank at or below the configured one."""
    hint = (
        f" To compare placements at an equal budget, rerun with `match_params: {ref['strategy']}`"
    )
    smallest = min((r for r in rows if r["trainable_params"]), key=lambda r: r["trainable_params"])
    if smallest is ref:
        return hint + "."
    return (
        hint
        + f" (every strategy at the reference's count) or `match_params: {smallest['strategy']}` "
        f"(at the smallest strategy's count, so no rank exceeds the configured one)."
    )


def _param_findings(study: Study, rows: list[dict[str, Any]], ref: dict[str, Any]) -> list[str]:
    out = []
    unequal = [
        r
        for r in rows
        if r is not ref
        and r["trainable_params"]
        and ref["trainable_params"]
        and abs(r["trainable_params"] / ref["trainable_params"] - 1.0) > PARAM_TOLERANCE
    ]
    if unequal:
        detail = "; ".join(
            f"`{r['strategy']}` {r['trainable_params']:,} ({-r['param_reduction_pct']:+.0f}%)"
            for r in unequal
        )
        hint = "" if study.config.get("match_params") else _match_hint(rows, ref)
        out.append(
            f"Unequal parameter counts: vs `{ref['strategy']}` ({ref['trainable_params']:,} trainable), "
            f"{detail} differ by more than {PARAM_TOLERANCE:.0%}. Their loss differences mix the effect of "
            f"placement with that of adapter capacity.{hint}"
        )
    faster = [r for r in rows if r is not ref and (r["speedup_vs_reference"] or 0) >= 1.2]
    if faster:
        out.append(
            "Faster to train than the reference (measured wall time, one machine): "
            + ", ".join(f"`{r['strategy']}` {r['speedup_vs_reference']:.2f}x" for r in faster)
            + "."
        )
    return out


def findings(study: Study, rows: list[dict[str, Any]]) -> list[str]:
    """Plain-language findings drawn only from the numbers, with the statistical rule stated.

    Args:
        study: The loaded study.
        rows: Its summary rows (:func:`summarize_study`).

    Returns:
        Sentences, with strategy names in backticks.
    """
    out = []
    ref = next((r for r in rows if r["strategy"] == study.reference), None)
    tested = [r for r in rows if r["p_value_vs_reference"] is not None]
    n_tests = len(tested)
    if ref is None:
        out.append("No reference strategy has results, so no strategy is compared against one.")
    elif not tested:
        out.append(
            f"No strategy could be tested against the reference `{ref['strategy']}`: "
            "that needs at least 2 finished seeds on both sides."
        )
    else:
        out.append(
            f"Rule: a strategy differs from the reference `{ref['strategy']}` when Welch's t-test on eval "
            f"loss over seeds gives p < {ALPHA}; otherwise the difference is within noise. 'Within noise' "
            f"means no difference was detected with these seeds, not that the strategies are equivalent. "
            f"The {n_tests} p-value(s) are not corrected for multiple comparisons."
        )
        for label, key in (
            ("Within noise of the reference", "within noise"),
            ("Significantly better (lower eval loss) than the reference", "better"),
            ("Significantly worse (higher eval loss) than the reference", "worse"),
        ):
            group = [r for r in tested if r["vs_reference"] == key]
            if group:
                detail = ", ".join(
                    f"`{r['strategy']}` (Δ {r['eval_loss_delta_vs_reference']:+.4f}, "
                    f"p = {r['p_value_vs_reference']:.3g})"
                    for r in group
                )
                out.append(f"{label}: {detail}.")
    single = [r for r in rows if r["n"] == 1]
    if rows and all(r["n"] < 2 for r in rows):
        out.append(
            "Single seed: no statistical claim possible. Run several seeds to tell placement effects from noise."
        )
    elif single or (ref is not None and ref["n"] < 2):
        out.append(
            f"Fewer than 2 finished seeds, so no statistical claim is made for: "
            f"{_names([r for r in rows if r['n'] < 2 and r is not ref] or [ref])}."
        )
    front = [r for r in rows if r["pareto"]]
    out.append(
        f"On the Pareto front of trainable parameters vs mean eval loss: {_names(front)} "
        "(computed on means; a point off the front may still be within noise of one on it)."
    )
    out.append(_cheapest_within_noise(study, rows))
    if ref is not None:
        out.extend(_param_findings(study, rows, ref))
    acc_n = next((r["accuracy_examples"] for r in rows if r["accuracy_examples"]), None)
    if acc_n:
        out.append(
            f"Accuracy is measured on {acc_n} examples: one example is {100 / acc_n:.1f} points, "
            "so small accuracy differences are noise."
        )
    failed = sum(r["n_failed"] for r in rows)
    if failed:
        out.append(
            f"{failed} run(s) failed and are excluded from the statistics (see {FAILURES_HEADING})."
        )
    out.append(
        "Perplexity is exp(mean eval loss over seeds), not the mean of per-seed perplexities."
    )
    return out


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, ".10g") if isinstance(value, float) else str(value)


def write_summary_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Writes summary rows as CSV (:data:`SUMMARY_COLUMNS`); missing values are empty cells."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SUMMARY_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(col)) for col in SUMMARY_COLUMNS])
    return path


def curve_seeds(study: Study) -> tuple[set | None, str]:
    """The seeds the training curves average over, and the figure's caption.

    All strategies of a seed train on the same batches, and the per-step loss depends mostly on
    the batch. While strategies have different finished seeds (a study in progress), only the
    seeds every strategy finished are drawn, so each curve averages the same batches.
    ``None`` means every finished seed.
    """
    finished = [{r.get("seed") for r in study.runs(name, "finished")} for name in study.strategies]
    finished = [s for s in finished if s]
    common = set.intersection(*finished) if finished else set()
    if not finished or all(s == common for s in finished):
        return None, "Training loss per step: mean over finished seeds, band = min–max."
    if not common:
        return None, (
            "Training loss per step: mean over finished seeds, band = min–max. The strategies have no "
            "finished seed in common, so their curves average different batches."
        )
    listed = ", ".join(str(s) for s in sorted(common))
    return common, (
        f"Training loss per step over the seeds every strategy finished ({listed}), band = min–max; "
        "other finished seeds are left out so that every curve sees the same batches."
    )


def _write_figures(study: Study, rows: list[dict[str, Any]], out: Path) -> list[tuple[str, str]]:
    base = mean([r.get("base_eval_loss") for r in study.records])
    figures.plot_pareto(rows, out / "pareto.png", base)
    seeds, caption = curve_seeds(study)
    curves = {
        name: [
            study.metrics.get((name, r.get("seed")), [])
            for r in study.runs(name, "finished")
            if seeds is None or r.get("seed") in seeds
        ]
        for name in study.strategies
    }
    figures.plot_curves(curves, out / "curves.png")
    placements = []
    for name, spec in study.strategies.items():
        placement = (
            _first(study.runs(name, "finished"), "placement")
            or _first(study.runs(name), "placement")
            or {}
        )
        placements.append(
            figures.PlacementRow(f"{name}  ({spec})" if spec != name else name, placement)
        )
    layers = max(
        [int(r.get("num_layers") or 0) for r in study.records]
        + [int(k) + 1 for p in placements for k in p.placement],
        default=1,
    )
    figures.plot_placement(placements, layers, out / "placement.png")
    return [
        (
            "pareto.png",
            "Trainable parameters vs eval loss (mean ± std over seeds); the red line is the non-dominated front.",
        ),
        ("curves.png", caption),
        ("placement.png", "Placement map: which roles carry an adapter in each decoder layer."),
    ]


def write_report(study_dir: str | Path) -> Path:
    """Writes the full report of a study into ``<study_dir>/report/``.

    Args:
        study_dir: Directory holding ``study.yaml`` and ``runs/``.

    Returns:
        The report directory.

    Raises:
        FileNotFoundError: If ``study_dir`` does not exist.
    """
    study = load_study(study_dir)
    rows = summarize_study(study)
    out = study.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_summary_csv(rows, out / "summary.csv")
    figs = _write_figures(study, rows, out)
    notes = findings(study, rows)
    (out / "summary.tex").write_text(render_tex(study, rows), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(study, rows, notes, figs), encoding="utf-8")
    (out / "report.html").write_text(render_html(study, rows, notes, figs, out), encoding="utf-8")
    return out
