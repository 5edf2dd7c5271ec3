"""The study report: summary table, statistics against the reference, figures, findings.

Reads only the study directory (``study.yaml`` and ``runs/*/result.json`` + ``metrics.jsonl``)
and writes ``report/``: ``summary.csv``, ``summary.tex`` (booktabs), ``report.md``,
``report.html`` (one self-contained file), ``pareto.png``, ``curves.png`` and ``placement.png``.

Statistical rule used throughout: a strategy differs from the reference when Welch's t-test on
eval loss over seeds gives ``p < 0.05``; otherwise the difference is *within noise*. With fewer
than two finished seeds on either side no test is made and no claim is written.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraplace import figures
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
    "strategy", "n", "eval_loss_mean", "eval_loss_std", "eval_loss_ci95", "perplexity",
    "accuracy_mean", "trainable_params", "trainable_pct", "param_reduction_pct",
    "train_time_s_mean", "speedup_vs_reference", "p_value_vs_reference", "pareto",
)
SUMMARY_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + (
    "spec", "n_failed", "seeds", "eval_loss_delta_vs_reference", "vs_reference", "within_noise",
    "base_eval_loss", "accuracy_std", "accuracy_examples", "train_time_s_std", "tokens_per_s_mean",
    "peak_memory_mb_max", "total_params", "ranks",
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
        recs = [r for r in self.records if r.get("name") == name and status in (None, r.get("status"))]
        return sorted(recs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))

    def eval_losses(self, name: str) -> list[float]:
        """Eval loss of each finished run of one strategy."""
        return [r["eval_loss"] for r in self.runs(name, "finished") if _num(r.get("eval_loss")) is not None]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


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
    run_dirs = sorted(p for p in (root / "runs").glob("*") if p.is_dir()) if (root / "runs").is_dir() else []
    for run_dir in run_dirs:
        try:
            rec = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
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


def _first(recs: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in recs if r.get(key) is not None), None)


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
        "ranks": " ".join(f"{k}:{v}" for k, v in ranks.items()) if isinstance(ranks, dict) else str(ranks),
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _compare(row: dict[str, Any], ref: dict[str, Any] | None, p: float | None) -> None:
    """Fills the reference-relative columns of ``row`` in place."""
    is_ref = ref is not None and row["strategy"] == ref["strategy"]
    share = _ratio(row["trainable_params"], ref["trainable_params"]) if ref else None
    row["param_reduction_pct"] = 100.0 * (1.0 - share) if share is not None else None
    row["speedup_vs_reference"] = _ratio(ref["train_time_s_mean"], row["train_time_s_mean"]) if ref else None
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
        return head + " It has a single finished seed, so which cheaper strategies are within noise of it cannot be tested."
    best_loss = study.eval_losses(best["strategy"])
    close = [r for r in scored if r is best or (welch_p_value(study.eval_losses(r["strategy"]), best_loss) or 0.0) >= ALPHA]
    cheapest = min(close, key=lambda r: (r["trainable_params"] or math.inf, r["eval_loss_mean"]))
    if cheapest is best:
        return head + f" No strategy with fewer trainable parameters is within noise of it (p >= {ALPHA})."
    p = welch_p_value(study.eval_losses(cheapest["strategy"]), best_loss)
    return head + (
        f" The cheapest strategy within noise of it is `{cheapest['strategy']}` with "
        f"{cheapest['trainable_params']:,} trainable parameters vs {best['trainable_params']:,} "
        f"(loss {cheapest['eval_loss_mean']:.4f}, Welch p = {p:.3g} vs the best)."
    )


def _param_findings(study: Study, rows: list[dict[str, Any]], ref: dict[str, Any]) -> list[str]:
    out = []
    unequal = [r for r in rows if r is not ref and r["trainable_params"] and ref["trainable_params"]
               and abs(r["trainable_params"] / ref["trainable_params"] - 1.0) > PARAM_TOLERANCE]
    if unequal:
        detail = "; ".join(f"`{r['strategy']}` {r['trainable_params']:,} ({-r['param_reduction_pct']:+.0f}%)" for r in unequal)
        hint = ("" if study.config.get("match_params") else
                f" To compare placements at an equal budget, rerun with `match_params: {ref['strategy']}`.")
        out.append(
            f"Unequal parameter counts: vs `{ref['strategy']}` ({ref['trainable_params']:,} trainable), "
            f"{detail} differ by more than {PARAM_TOLERANCE:.0%}. Their loss differences mix the effect of "
            f"placement with that of adapter capacity.{hint}"
        )
    faster = [r for r in rows if r is not ref and (r["speedup_vs_reference"] or 0) >= 1.2]
    if faster:
        out.append("Faster to train than the reference (measured wall time, one machine): " + ", ".join(
            f"`{r['strategy']}` {r['speedup_vs_reference']:.2f}x" for r in faster) + ".")
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
        out.append(f"No strategy could be tested against the reference `{ref['strategy']}`: "
                   "that needs at least 2 finished seeds on both sides.")
    else:
        out.append(
            f"Rule: a strategy differs from the reference `{ref['strategy']}` when Welch's t-test on eval "
            f"loss over seeds gives p < {ALPHA}; otherwise the difference is within noise. 'Within noise' "
            f"means no difference was detected with these seeds, not that the strategies are equivalent. "
            f"The {n_tests} p-value(s) are not corrected for multiple comparisons."
        )
        for label, key in (("Within noise of the reference", "within noise"),
                           ("Significantly better (lower eval loss) than the reference", "better"),
                           ("Significantly worse (higher eval loss) than the reference", "worse")):
            group = [r for r in tested if r["vs_reference"] == key]
            if group:
                detail = ", ".join(f"`{r['strategy']}` (Δ {r['eval_loss_delta_vs_reference']:+.4f}, "
                                   f"p = {r['p_value_vs_reference']:.3g})" for r in group)
                out.append(f"{label}: {detail}.")
    single = [r for r in rows if r["n"] == 1]
    if rows and all(r["n"] < 2 for r in rows):
        out.append("Single seed: no statistical claim possible. Run several seeds to tell placement effects from noise.")
    elif single or (ref is not None and ref["n"] < 2):
        out.append(f"Fewer than 2 finished seeds, so no statistical claim is made for: "
                   f"{_names([r for r in rows if r['n'] < 2 and r is not ref] or [ref])}.")
    front = [r for r in rows if r["pareto"]]
    out.append(f"On the Pareto front of trainable parameters vs mean eval loss: {_names(front)} "
               "(computed on means; a point off the front may still be within noise of one on it).")
    out.append(_cheapest_within_noise(study, rows))
    if ref is not None:
        out.extend(_param_findings(study, rows, ref))
    acc_n = next((r["accuracy_examples"] for r in rows if r["accuracy_examples"]), None)
    if acc_n:
        out.append(f"Accuracy is measured on {acc_n} examples: one example is {100 / acc_n:.1f} points, "
                   "so small accuracy differences are noise.")
    failed = sum(r["n_failed"] for r in rows)
    if failed:
        out.append(f"{failed} run(s) failed and are excluded from the statistics (see Failed runs).")
    out.append("Perplexity is exp(mean eval loss over seeds), not the mean of per-seed perplexities.")
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


_DASH = "–"


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return _DASH if value is None else format(value, spec) + suffix


def _loss_text(row: dict[str, Any]) -> str:
    if row["eval_loss_mean"] is None:
        return _DASH
    ci = row["eval_loss_ci95"]
    return f"{row['eval_loss_mean']:.4f}" + (f" ± {ci:.4f}" if ci is not None else "")


def _p_text(p: float | None) -> str:
    return _DASH if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


_HEADERS = ("Strategy", "Spec", "n", "Trainable params", "% of model", "Reduction", "Eval loss ± 95% CI",
            "Perplexity", "Accuracy", "Train time (s)", "Speedup", "p vs ref", "vs ref", "Pareto")


def _display(row: dict[str, Any]) -> list[str]:
    acc = row["accuracy_mean"]
    return [
        row["strategy"], row["spec"] or "", str(row["n"]), _fmt(row["trainable_params"], ","),
        _fmt(row["trainable_pct"], ".3f", "%"), _fmt(row["param_reduction_pct"], ".1f", "%"), _loss_text(row),
        _fmt(row["perplexity"], ".3f"), _DASH if acc is None else f"{100 * acc:.1f}%",
        _fmt(row["train_time_s_mean"], ".1f"), _fmt(row["speedup_vs_reference"], ".2f", "×"),
        _p_text(row["p_value_vs_reference"]), row["vs_reference"] or _DASH, "yes" if row["pareto"] else "no",
    ]


_TEX = {ord(k): v for k, v in {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$",
    "–": "--", "<": r"$<$", ">": r"$>$", "Δ": r"$\Delta$"}.items()}


def tex_escape(text: str) -> str:
    """Escapes LaTeX special characters (``& % $ # _ { } ~ ^ \\``) and the report's symbols."""
    return str(text).translate(_TEX)


def render_tex(study: Study, rows: list[dict[str, Any]]) -> str:
    """A booktabs ``table`` fragment (needs ``\\usepackage{booktabs}``), ready to ``\\input``."""
    head = ["Strategy", "$n$", "Params", r"\%", "Reduction", "Eval loss", "PPL", "Acc.", "Time (s)", "Speedup", "$p$"]
    lines = []
    for row in rows:
        d = _display(row)
        name = tex_escape(d[0]) + (r"$^\dagger$" if row["pareto"] else "") + (" (ref.)" if row["vs_reference"] == "reference" else "")
        cells = [d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11]]
        lines.append(" & ".join([name] + [tex_escape(c) for c in cells]) + r" \\")
    name = tex_escape(study.config.get("name", study.root.name))
    caption = (rf"LoRA placement study \texttt{{{name}}}: eval loss as mean $\pm$ 95\% CI over $n$ seeds; "
               r"perplexity $=\exp(\text{mean eval loss})$; reduction and speedup relative to the reference; "
               r"$p$ from Welch's $t$-test vs the reference; $^\dagger$ Pareto-optimal (parameters vs loss).")
    return "\n".join([
        r"% Generated by loraplace. Requires \usepackage{booktabs} (and amsmath for \text).",
        r"\begin{table}[t]", r"\centering", r"\small",
        rf"\caption{{{caption}}}", rf"\label{{tab:loraplace-{re.sub(r'[^A-Za-z0-9-]', '-', str(study.config.get('name', 'study')))}}}",
        r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule",
        *lines, r"\bottomrule", r"\end{tabular}", r"\end{table}", "",
    ])


def _unique(values: list[str]) -> str:
    seen = list(dict.fromkeys(v for v in values if v))
    return "; ".join(seen) if seen else _DASH


def _provenance(study: Study) -> list[tuple[str, str]]:
    recs = study.records
    model = _unique([f"{(r.get('model') or {}).get('id', '?')} ({(r.get('model') or {}).get('source', '?')})" for r in recs])
    data = _unique([json.dumps(r.get("dataset"), sort_keys=True) for r in recs if r.get("dataset")])
    keys = list(dict.fromkeys(k for r in recs for k in (r.get("versions") or {})))
    versions = ", ".join(f"{k} {_unique([str((r.get('versions') or {}).get(k, '')) for r in recs])}" for k in keys)
    hw = _unique([" / ".join(str((r.get("hardware") or {}).get(k, "?")) for k in ("device", "name", "cpus")) for r in recs])
    starts = sorted(str(r["started_at"]) for r in recs if r.get("started_at"))
    ends = sorted(str(r["finished_at"]) for r in recs if r.get("finished_at"))
    total = sum(_num(r.get("train_time_s")) or 0.0 for r in recs)
    span = f"{len(recs)} runs, {starts[0] if starts else '?'} to {ends[-1] if ends else '?'}, {total:.0f} s of training"
    return [("Model", model), ("Dataset", data), ("Versions", versions or _DASH),
            ("Hardware (device / name / cpus)", hw), ("Runs", span)]


def _failures(study: Study) -> list[str]:
    out = [f"`{r['name']}` seed {r.get('seed')}: {r.get('error') or 'no error recorded'}"
           for r in study.records if r.get("status") != "finished"]
    return out + [f"`{d}`: no readable result.json (in progress, interrupted or corrupt); not included"
                  for d in study.incomplete]


_RUN_HEADERS = ("Strategy", "Seed", "Status", "Eval loss", "Accuracy", "Train time (s)", "Tokens/s", "Peak memory (MB)", "Error")


def _run_rows(study: Study) -> list[list[str]]:
    return [[r["name"], str(r.get("seed")), str(r.get("status")), _fmt(_num(r.get("eval_loss")), ".4f"),
             _fmt(_num(r.get("accuracy")), ".3f"), _fmt(_num(r.get("train_time_s")), ".1f"),
             _fmt(_num(r.get("tokens_per_s")), ".0f"), _fmt(_num(r.get("peak_memory_mb")), ".0f"),
             str(r.get("error") or "")] for name in study.strategies for r in study.runs(name)]


_TABLE_NOTE = ("n = finished seeds. Reduction = 1 − trainable / reference trainable. Speedup = reference train "
               "time / strategy train time. p = Welch's t-test on eval loss vs the reference (p < 0.05: "
               "significant; otherwise within noise). Perplexity = exp(mean eval loss).")


def _title(study: Study) -> tuple[str, str]:
    cfg = study.config
    seeds = (cfg.get("training") or {}).get("seeds") or sorted({r.get("seed") for r in study.records} - {None})
    model = cfg.get("model") or (_first(study.records, "model") or {}).get("id", "?")
    ref = f"`{study.reference}`" if study.reference else "none"
    return (f"LoRA placement study: {cfg.get('name', study.root.name)}",
            f"Model `{model}`, {len(study.strategies)} strategies, seeds {seeds}, reference {ref}.")


def _md_table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(map(esc, r)) + " |" for r in rows)]


def render_markdown(study: Study, rows: list[dict[str, Any]], notes: list[str], figs: list[tuple[str, str]]) -> str:
    """``report.md``: findings, summary table, figures (by relative file name), failures, provenance."""
    title, sub = _title(study)
    md = [f"# {title}", "", sub, "", "## Findings", "", *(f"- {n}" for n in notes), "", "## Summary", "",
          *_md_table(_HEADERS, [_display(r) for r in rows]), "", _TABLE_NOTE, "", "## Figures", ""]
    for file, caption in figs:
        md += [f"![{caption}]({file})", "", f"*{caption}*", ""]
    md += ["## Failed runs", "", *([f"- {f}" for f in _failures(study)] or ["None."]), "",
           "## Per-run results", "", *_md_table(_RUN_HEADERS, _run_rows(study)), "", "## Provenance", "",
           *(f"- **{k}**: {v}" for k, v in _provenance(study)), "", "## Study config", "", "```yaml",
           study.config_text.rstrip() or "# study.yaml not found", "```", ""]
    return "\n".join(md)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;font-size:.85em;
margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:right}th:first-child,
td:first-child{text-align:left}thead th{border-bottom:2px solid #444}code,pre{background:#f5f5f5;
border-radius:3px}pre{padding:.8em;overflow:auto}figure{margin:1.5em 0}img{max-width:100%}
figcaption{color:#555;font-size:.9em}.note{color:#555;font-size:.85em}"""


def render_html(study: Study, rows: list[dict[str, Any]], notes: list[str], figs: list[tuple[str, str]],
                fig_dir: Path) -> str:
    """``report.html``: the same content as ``report.md`` in one file, figures as base64 data URIs."""
    title, sub = _title(study)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{_inline(sub)}</p>",
             "<h2>Findings</h2><ul>", *(f"<li>{_inline(n)}</li>" for n in notes), "</ul>",
             "<h2>Summary</h2>", _html_table(_HEADERS, [_display(r) for r in rows]),
             f"<p class='note'>{html.escape(_TABLE_NOTE)}</p><h2>Figures</h2>"]
    for file, caption in figs:
        data = base64.b64encode((fig_dir / file).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    fails = _failures(study)
    parts += ["<h2>Failed runs</h2>", "<ul>" + "".join(f"<li>{_inline(f)}</li>" for f in fails) + "</ul>" if fails else "<p>None.</p>",
              "<h2>Per-run results</h2>", _html_table(_RUN_HEADERS, _run_rows(study)), "<h2>Provenance</h2><ul>",
              *(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in _provenance(study)), "</ul>",
              "<h2>Study config</h2>", f"<pre>{html.escape(study.config_text or '# study.yaml not found')}</pre>",
              "</body></html>", ""]
    return "\n".join(parts)


def _write_figures(study: Study, rows: list[dict[str, Any]], out: Path) -> list[tuple[str, str]]:
    base = mean([r.get("base_eval_loss") for r in study.records])
    figures.plot_pareto(rows, out / "pareto.png", base)
    curves = {name: [study.metrics.get((name, r.get("seed")), []) for r in study.runs(name, "finished")]
              for name in study.strategies}
    figures.plot_curves(curves, out / "curves.png")
    placements = []
    for name, spec in study.strategies.items():
        placement = _first(study.runs(name, "finished"), "placement") or _first(study.runs(name), "placement") or {}
        placements.append(figures.PlacementRow(f"{name}  ({spec})" if spec != name else name, placement))
    layers = max([int(r.get("num_layers") or 0) for r in study.records]
                 + [int(k) + 1 for p in placements for k in p.placement], default=1)
    figures.plot_placement(placements, layers, out / "placement.png")
    return [("pareto.png", "Trainable parameters vs eval loss (mean ± std over seeds); the red line is the non-dominated front."),
            ("curves.png", "Training loss per step: mean over finished seeds, band = min–max."),
            ("placement.png", "Placement map: which roles carry an adapter in each decoder layer.")]


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
