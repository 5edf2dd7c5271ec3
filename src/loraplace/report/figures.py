"""Report figures of a study's results: the Pareto plot, training-loss curves, budget curves
and eval-loss checkpoints, and the saving shared with :mod:`loraplace.report.placement_map`.

Each function draws one PNG from plain data (summary rows, metric records, budget curves, eval
checkpoints), so the figures can be tested and reused without a study directory. Matplotlib runs
headless (Agg).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    EngFormatter,
    FuncFormatter,
    MaxNLocator,
    NullFormatter,
    ScalarFormatter,
    StrMethodFormatter,
)

from loraplace.store import write_atomic  # noqa: E402

__all__ = [
    "plot_budget",
    "plot_curves",
    "plot_eval_curves",
    "plot_pareto",
    "save_figure",
]


def _plain_ticks(fig: plt.Figure) -> None:
    """Every tick label states its value: no offset ("+5.936") and no scientific notation.

    Losses of nearby strategies differ in the third or fourth decimal, where matplotlib would
    otherwise label the ticks relative to an offset, which cannot be read in print.
    """
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for fmt in (axis.get_major_formatter(), axis.get_minor_formatter()):
                if isinstance(fmt, ScalarFormatter):  # EngFormatter is one too
                    fmt.set_useOffset(False)
                    fmt.set_scientific(False)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (plain tick labels, parents created) and close it.

    The PNG is written atomically and never through a link (:func:`loraplace.store.write_atomic`):
    a link in ``path``'s place is replaced, not followed, and a reader never sees half a figure.
    """
    _plain_ticks(fig)
    try:
        write_atomic(
            Path(path),
            lambda handle: fig.savefig(handle, format="png", dpi=130, bbox_inches="tight"),
        )
    finally:
        plt.close(fig)
    return Path(path)


def _empty(ax: plt.Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _base_line(ax: plt.Axes, pts: Sequence[Mapping[str, Any]], base: float | None) -> None:
    """Dashed line at the base model's loss; kept off-scale when it would squash the data."""
    if base is None:
        return
    lo = min(r["eval_loss_mean"] - (r.get("eval_loss_std") or 0.0) for r in pts)
    hi = max(r["eval_loss_mean"] + (r.get("eval_loss_std") or 0.0) for r in pts)
    span = max(hi - lo, 0.05 * max(abs(hi), 1e-9))
    label = f"base model, no adapter ({base:.3f})"
    if lo - 3 * span <= base <= hi + 3 * span:
        ax.axhline(base, ls="--", color="gray", lw=1.2, label=label)
        return
    ax.set_ylim(lo - 0.6 * span, hi + 0.6 * span)
    where = "above" if base > hi else "below"
    ax.axhline(base, ls="--", color="gray", lw=1.2, label=f"{label}: {where} the plotted range")


#: Where a point's label may go, in points from the point: right, left, or centred above and
#: below (``dx`` 0); the nearest free place wins.
_LABEL_OFFSETS = tuple(
    (dx, dy) for dx in (7, -7, 0) for dy in (-4, 6, -14, 16, -24, 26, -34, 36, -44, 46)
)
_ALIGN = {1: "left", -1: "right", 0: "center"}


def _place(label, dx: float, dy: float) -> None:
    """Moves a point's label to ``(dx, dy)`` points from it, aligned away from the point."""
    label.set_position((dx, dy))
    label.set_horizontalalignment(_ALIGN[(dx > 0) - (dx < 0)])


def _label_points(ax: plt.Axes, pts: Sequence[Mapping[str, Any]], with_n: bool) -> None:
    """Labels each point at the nearest place where its text covers no other label, point,
    error bar or step of the front and stays inside the axes; where none is free, at the place
    that covers least (another label counts three times, leaving the axes ten times)."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the axis limits, so data -> display is final
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    pad = 4 * fig.dpi / 72.0
    marks = []  # (x0, y0, x1, y1) in display units: error bars and markers, front steps
    for r in pts:
        std = r.get("eval_loss_std") or 0.0
        x, lo = to_display((r["trainable_params"], r["eval_loss_mean"] - std))
        _, hi = to_display((r["trainable_params"], r["eval_loss_mean"] + std))
        marks.append((x - pad, min(lo, hi) - pad, x + pad, max(lo, hi) + pad))
    front = [
        to_display((r["trainable_params"], r["eval_loss_mean"])) for r in pts if r.get("pareto")
    ]
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        marks.append((x0, y0 - 1, x1, y0 + 1))
        marks.append((x1 - 1, min(y0, y1), x1 + 1, max(y0, y1)))
    labels = []

    def overlap(box, other) -> float:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        return w * h if w > 0 and h > 0 else 0.0

    for r in pts:
        text = f"{r['strategy']} (n={r['n']})" if with_n else str(r["strategy"])
        label = ax.annotate(
            text,
            (r["trainable_params"], r["eval_loss_mean"]),
            xytext=(0, 0),
            textcoords="offset points",
            fontsize=8,
            va="bottom",
        )
        best = None
        for dx, dy in _LABEL_OFFSETS:
            _place(label, dx, dy)
            e = label.get_window_extent(renderer)
            box = (e.x0, e.y0, e.x1, e.y1)
            outside = (
                max(frame.x0 - box[0], 0)
                + max(box[2] - frame.x1, 0)
                + max(frame.y0 - box[1], 0)
                + max(box[3] - frame.y1, 0)
            ) * (box[3] - box[1])
            cost = (
                10 * outside
                + 3 * sum(overlap(box, other) for other in labels)
                + sum(overlap(box, other) for other in marks)
                + math.hypot(dx, dy) * fig.dpi / 72.0
            )
            if best is None or cost < best[0]:
                best = (cost, dx, dy, box)
        _, dx, dy, box = best
        _place(label, dx, dy)
        labels.append(box)
        _leader(ax, (r["trainable_params"], r["eval_loss_mean"]), box)


#: A label further than this from its point (in points, to the nearest edge of its text) gets a
#: thin line to it, so it is read as that point's.
_LEADER_FROM = 12


def _leader(ax: plt.Axes, xy: tuple[float, float], box: tuple[float, ...]) -> None:
    """Draws a thin line from the nearest edge of a label's ``box`` (display units) to its point
    ``xy`` (data) when the label sits further than :data:`_LEADER_FROM` points from it."""
    fig = ax.figure
    px, py = ax.transData.transform(xy)
    sx, sy = min(max(px, box[0]), box[2]), min(max(py, box[1]), box[3])
    if math.hypot(px - sx, py - sy) <= _LEADER_FROM * fig.dpi / 72.0:
        return
    to_points = 72.0 / fig.dpi
    ax.annotate(
        "",
        xy,
        xytext=((sx - px) * to_points, (sy - py) * to_points),
        textcoords="offset points",
        arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.55", "shrinkA": 0, "shrinkB": 4},
    )


def plot_pareto(
    rows: Sequence[Mapping[str, Any]], path: str | Path, base_eval_loss: float | None = None
) -> Path:
    """Trainable parameters (log x) against eval loss, mean ± std over seeds, front highlighted.

    Args:
        rows: Summary rows with ``strategy``, ``trainable_params``, ``eval_loss_mean``,
            ``eval_loss_std``, ``n`` and ``pareto``.
        path: Where to write the PNG.
        base_eval_loss: Eval loss of the base model without adapters; drawn as a dashed line.

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(8, 5.2))
    pts = sorted(
        (
            r
            for r in rows
            if r.get("eval_loss_mean") is not None and (r.get("trainable_params") or 0) > 0
        ),
        key=lambda r: (r["trainable_params"], r["eval_loss_mean"]),
    )
    for r in pts:
        on_front = bool(r.get("pareto"))
        ax.errorbar(
            r["trainable_params"],
            r["eval_loss_mean"],
            yerr=r.get("eval_loss_std") or 0.0,
            fmt="o",
            ms=9 if on_front else 7,
            capsize=4,
            zorder=3,
            color="#d62728" if on_front else "#1f77b4",
            mec="black" if on_front else None,
        )
    front = [(r["trainable_params"], r["eval_loss_mean"]) for r in pts if r.get("pareto")]
    if front:
        xs, ys = zip(*front)
        ax.step(
            xs,
            ys,
            where="post",
            color="#d62728",
            lw=1.5,
            alpha=0.8,
            zorder=2,
            label="Pareto front (non-dominated)",
        )
    ax.plot([], [], "o", color="#1f77b4", label="dominated strategy")
    # Every point over the same number of seeds: say it once, on the axis, not in each label.
    seeds = {r.get("n") for r in pts}
    if pts:
        _base_line(ax, pts, base_eval_loss)
        _log_params_axis(ax, [r["trainable_params"] for r in pts])
        _label_points(ax, pts, with_n=len(seeds) > 1)
        ax.legend(fontsize=8, loc="best")
        ax.grid(True, which="both", alpha=0.3)
    else:
        _empty(ax, "no finished runs")
    ax.set_xlabel("trainable parameters (log scale)")
    over = f"{next(iter(seeds))} seeds" if len(seeds) == 1 else "seeds (n per point)"
    ax.set_ylabel(f"eval loss (mean ± std over {over})")
    ax.set_title("Parameters vs quality: lower-left is better")
    return save_figure(fig, path)


_RANKED = re.compile(r"^(?P<name>.+) r(?P<rank>\d+)$")
_DASHES = ("-", "--", ":", "-.")


def _styles(labels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{label: (colour, line style)}``. Conditions of a rank sweep (``"attn r8"``) take one
    colour per placement and one line style per rank, so a dozen curves stay distinguishable;
    other labels take one colour each."""
    parsed = [_RANKED.match(label) for label in labels]
    if not all(parsed):
        return {label: (f"C{i % 10}", "-") for i, label in enumerate(labels)}
    names = list(dict.fromkeys(m["name"] for m in parsed))
    ranks = sorted({int(m["rank"]) for m in parsed})
    return {
        label: (
            f"C{names.index(m['name']) % 10}",
            _DASHES[ranks.index(int(m["rank"])) % len(_DASHES)],
        )
        for label, m in zip(labels, parsed)
    }


def _legend(ax: plt.Axes, entries: int) -> None:
    """A legend inside the axes when small, beside them when it would cover the lines."""
    if entries > 6:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)


def _step_axis(ax: plt.Axes, drawn: int, empty: str) -> None:
    """A training-step x axis for ``drawn`` curves, or ``empty`` said in the axes without any."""
    if drawn:
        _legend(ax, drawn)
        ax.grid(True, alpha=0.3)
        # Whole steps with thousands separators ("12,000"), never "0.5" or an offset.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    else:
        _empty(ax, empty)
    ax.set_xlabel("training step")


def _aggregate(runs: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[np.ndarray, ...]:
    per_step: dict[int, list[float]] = {}
    for records in runs:
        for rec in records:
            loss = rec.get("loss")
            if rec.get("step") is not None and loss is not None and np.isfinite(loss):
                per_step.setdefault(int(rec["step"]), []).append(float(loss))
    steps = np.array(sorted(per_step))
    vals = [per_step[s] for s in steps]
    return (
        steps,
        np.array([np.mean(v) for v in vals]),
        np.array([min(v) for v in vals]),
        np.array([max(v) for v in vals]),
    )


def plot_curves(
    curves: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], path: str | Path
) -> Path:
    """Training loss against step per strategy: mean over seeds with a min–max band.

    Args:
        curves: ``{strategy: [run metrics, ...]}``, each run's metrics being the records of its
            ``metrics.jsonl`` (``step``, ``loss``, ...).
        path: Where to write the PNG.

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    styles = _styles(list(curves))
    for name, runs in curves.items():
        steps, mid, lo, hi = _aggregate(runs)
        if len(steps) == 0:
            continue
        color, dashes = styles[name]
        n = sum(1 for r in runs if r)
        ax.plot(
            steps,
            mid,
            color=color,
            ls=dashes,
            lw=1.6,
            marker="." if len(steps) < 30 else None,
            label=f"{name} (n={n})",
        )
        if n > 1:
            ax.fill_between(
                steps, lo, hi, color=color, alpha=0.18 if len(curves) <= 6 else 0.08, lw=0
            )
        drawn += 1
    _step_axis(ax, drawn, "no training metrics recorded")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss: mean over seeds, band = min–max across seeds")
    return save_figure(fig, path)


def _log_params_axis(ax: plt.Axes, xs: Sequence[float]) -> None:
    ax.set_xscale("log")
    eng = EngFormatter(sep="")
    ax.xaxis.set_major_formatter(eng)
    # Within one decade the major ticks are too few: label the minor ones too. Over a few
    # decades, label 2x and 5x so that the axis still reads without crowding.
    span = max(xs) / min(xs)
    if span < 10:
        ax.xaxis.set_minor_formatter(EngFormatter(sep=""))
    elif span < 1000:

        def two_five(x: float, pos: int | None = None) -> str:
            mantissa = x / 10 ** math.floor(math.log10(x))
            return eng(x, pos) if min(abs(mantissa - 2), abs(mantissa - 5)) < 1e-6 else ""

        ax.xaxis.set_minor_formatter(FuncFormatter(two_five))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_budget(
    curves: Mapping[str, Sequence[tuple[int, float, float, float | None]]],
    path: str | Path,
    base_eval_loss: float | None = None,
    differences: Mapping[str, Sequence[tuple[float, float, float, float, bool]]] | None = None,
    reference: str | None = None,
) -> Path:
    """Eval loss against trainable parameters (log x), one line per placement through its ranks;
    with ``differences``, a second panel below: each placement minus the reference at equal
    budgets, with its paired interval.

    Args:
        curves: ``{strategy: [(rank, trainable params, mean eval loss, 95% CI half-width or
            None), ...]}``.
        path: Where to write the PNG.
        base_eval_loss: Eval loss of the base model; drawn as a dashed line.
        differences: ``{strategy: [(budget, mean difference, 95% low, 95% high, whether the
            corrected test found a difference), ...]}``, strategy minus ``reference``; a found
            difference is a filled marker, any other an open one.
        reference: The placement the differences are taken from.

    Returns:
        ``path``.
    """
    panels = bool(differences) and any(differences.values())
    if panels:
        fig, (ax, low) = plt.subplots(
            2, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
        )
    else:
        fig, ax = plt.subplots(figsize=(8, 5.2))
    colors = {name: f"C{i % 10}" for i, name in enumerate(curves)}
    xs = []
    for name, points in curves.items():
        pts = sorted(points, key=lambda p: p[1])
        if not pts:
            continue
        ranks, params, means, cis = zip(*pts)
        yerr = [c if c is not None else 0.0 for c in cis]
        color = colors[name]
        ax.errorbar(params, means, yerr=yerr, fmt="o-", color=color, capsize=4, label=name)
        for rank, x, y in zip(ranks, params, means):
            ax.annotate(f"r{rank}", (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7)
        xs += list(params)
    if xs:
        rows = [{"eval_loss_mean": m} for pts in curves.values() for _, _, m, _ in pts]
        _base_line(ax, rows, base_eval_loss)
        _log_params_axis(ax, xs)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    else:
        _empty(ax, "no finished runs")
    ax.set_ylabel("eval loss (mean ± 95% CI over seeds)")
    ax.set_title("Budget curves: each placement through its ranks")
    if panels:
        _differences(low, differences, colors, reference)
        low.set_xlabel("trainable parameters (log scale)")
    else:
        ax.set_xlabel("trainable parameters (log scale)")
    return save_figure(fig, path)


def _differences(
    ax: plt.Axes,
    differences: Mapping[str, Sequence[tuple[float, float, float, float, bool]]],
    colors: Mapping[str, str],
    reference: str | None,
) -> None:
    """The lower panel of :func:`plot_budget`: differences at equal budgets, each placement's
    points nudged sideways a little so that placements compared at one budget stay apart."""
    shown = [name for name, rows in differences.items() if rows]
    for i, name in enumerate(shown):
        nudge = 1.04 ** (i - (len(shown) - 1) / 2)
        for budget, mean, lo, hi, found in differences[name]:
            ax.errorbar(
                budget * nudge,
                mean,
                yerr=[[mean - lo], [hi - mean]],
                fmt="o",
                color=colors.get(name, "C0"),
                mfc=colors.get(name, "C0") if found else "white",
                capsize=3,
                label=name if budget == differences[name][0][0] else None,
            )
    ax.axhline(0.0, color="gray", lw=1)
    ax.grid(True, which="both", alpha=0.3)
    against = f"{reference}" if reference else "the reference"
    ax.set_ylabel(f"Δ eval loss vs {against}\n(paired 95% t CI)")
    ax.set_title(
        "At equal budgets: filled = a difference the corrected test found, open = not found",
        fontsize=9,
    )
    ax.legend(fontsize=8)


def plot_eval_curves(curves: Mapping[str, Mapping[int, float]], path: str | Path) -> Path:
    """Eval loss at each checkpoint step, one line per condition (mean over seeds).

    Args:
        curves: ``{condition: {step: mean eval loss}}``.
        path: Where to write the PNG.

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    styles = _styles(list(curves))
    for name, points in curves.items():
        if not points:
            continue
        steps = sorted(points)
        color, dashes = styles[name]
        values = [points[s] for s in steps]
        ax.plot(steps, values, marker="o", ls=dashes, color=color, lw=1.6, label=name)
        drawn += 1
    _step_axis(ax, drawn, "no eval checkpoints recorded")
    ax.set_ylabel("eval loss (mean over seeds)")
    ax.set_title("Eval loss at checkpoints: a late crossing means an unstable ranking")
    return save_figure(fig, path)
