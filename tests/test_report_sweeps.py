"""Report sections beyond one comparison per strategy: budget curves, learning-rate selection,
eval checkpoints, the "lowest" finding and the training budget, on hand-made study directories
whose answers are worked out in the test."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import ATTN, MLP, PNG_SIGNATURE, make_study, placement_of, record, write_config
from scipy.stats import kendalltau, ttest_rel

from loraplace import store
from loraplace.report.build import build_report, load_study, write_report
from loraplace.report.render import plain_text

ALL = {**ATTN, **MLP}

# Budget curves: {params: per-seed losses}. "all" costs 100 per unit of rank, "attn" 40.
CURVE_ALL = {200: [1.00, 1.05, 0.98], 400: [0.95, 0.99, 0.94], 800: [0.90, 0.96, 0.91]}
CURVE_ATTN = {80: [1.10, 1.16, 1.08], 160: [1.04, 1.10, 1.03], 320: [0.97, 1.04, 0.99]}


def _sweep(root: Path, curves=(("all", 100, CURVE_ALL), ("attn", 40, CURVE_ATTN))) -> Path:
    """A rank sweep over ranks 2, 4, 8 and seeds 0-2: ``(name, params per unit of rank,
    {params: per-seed losses})`` per placement, each name also its strategy string."""
    write_config(
        root, {name: name for name, _, _ in curves}, ranks=[2, 4, 8], training={"seeds": [0, 1, 2]}
    )
    for name, per_rank, curve in curves:
        for params, losses in curve.items():
            rank = params // per_rank
            for seed, loss in enumerate(losses):
                placement = placement_of(dict.fromkeys(ALL, rank))
                rec = record(name, name, seed, params, placement, loss, 1.0 + seed, rank=rank)
                store.write_result(store.RunKey(name, seed, rank).run_dir(root), rec)
    return root


def _log_interp(p0: float, v0: list, p1: float, v1: list, at: float) -> np.ndarray:
    w = (math.log(at) - math.log(p0)) / (math.log(p1) - math.log(p0))
    return np.add(v0, w * np.subtract(v1, v0))


def _holm_two(p: list[float]) -> list[float]:
    """Holm for two tests by hand: the smaller doubled, the larger at least that."""
    small = min(1.0, 2 * min(p))
    return [small if q == min(p) else max(small, q) for q in p]


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    root = _sweep(tmp_path_factory.mktemp("sweep") / "s")
    return root, write_report(root)


def test_equal_budget_compares_only_where_the_curves_overlap(sweep_report):
    root, out = sweep_report
    report = build_report(load_study(root))
    rows = {r.budget: r for r in report.budget.rows}
    assert sorted(rows) == [80, 160, 200, 320, 400, 800]
    assert {b for b, r in rows.items() if r.status == "compared"} == {200, 320}
    for b in (80, 160, 400, 800):
        assert rows[b].mean is None and rows[b].p is None and rows[b].verdict is None
    # At 200 "all" is measured and "attn" interpolated between its ranks at 160 and 320; at 320
    # the other way round, "all" between 200 and 400.
    attn_200 = _log_interp(160, CURVE_ATTN[160], 320, CURVE_ATTN[320], 200)
    all_320 = _log_interp(200, CURVE_ALL[200], 400, CURVE_ALL[400], 320)
    cases = {200: (attn_200, CURVE_ALL[200]), 320: (CURVE_ATTN[320], all_320)}
    ps = []
    for budget, (a, b) in cases.items():
        r = rows[budget]
        test = ttest_rel(a, b)
        ps.append(test.pvalue)
        assert r.n == 3 and r.mean == pytest.approx(np.mean(np.subtract(a, b)))
        assert r.p == pytest.approx(test.pvalue)
        assert (r.t_low, r.t_high) == tuple(pytest.approx(x) for x in test.confidence_interval())
    assert (rows[200].measured, rows[320].measured) == ("all", "attn")
    assert [rows[200].p_holm, rows[320].p_holm] == pytest.approx(_holm_two(ps))
    assert report.budget.family_size == 2
    text = " ".join(plain_text(f) for f in report.findings)
    assert "Holm over 2 compared budget(s)" in text
    assert "would need extrapolation beyond a measured curve: `attn` vs `all` at 80" in text
    # The interpolation check: each curve's chord gauge, from its mean losses by hand.
    for name, curve in (("all", CURVE_ALL), ("attn", CURVE_ATTN)):
        x = [math.log(p) for p in sorted(curve)]
        v = [np.mean(curve[p]) for p in sorted(curve)]
        c = ((v[2] - v[1]) / (x[2] - x[1]) - (v[1] - v[0]) / (x[1] - x[0])) / (x[2] - x[0])
        gauge = max((c * (x[1] - x[0]) ** 2 / 4, c * (x[2] - x[1]) ** 2 / 4), key=abs)
        assert report.budget.chord[name] == pytest.approx(gauge)
        assert f"`{name}` {gauge:+.4f}" in text
    assert "Interpolation check" in text
    assert "`attn` vs `all` at 800" in text
    md = (out / "report.md").read_text()
    assert "## Equal-budget comparison" in md and "| extrapolation |" in md
    assert (out / "budget.png").read_bytes()[:8] == PNG_SIGNATURE
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 4 and "Equal-budget comparison" in page
    assert (
        r"\label{tab:loraplace-toy-study-equal-budget-comparison}"
        in (out / "summary.tex").read_text()
    )


def test_the_other_placements_are_compared_with_each_other_in_a_family_of_their_own(tmp_path):
    # "mlp" costs 60 per unit of rank: its curve lies between the other two in cost.
    curve_mlp = {120: [1.02, 1.09, 1.01], 240: [0.99, 1.03, 0.97], 480: [0.93, 0.99, 0.95]}
    root = _sweep(
        tmp_path / "s", (("all", 100, CURVE_ALL), ("attn", 40, CURVE_ATTN), ("mlp", 60, curve_mlp))
    )
    report = build_report(load_study(root))
    budget = report.budget
    # The family with the reference is each placement against "all" only, as before.
    assert {(r.strategy, r.reference) for r in budget.rows} == {("attn", "all"), ("mlp", "all")}
    pairs = {r.budget: r for r in budget.pairs}
    assert {(r.strategy, r.reference) for r in budget.pairs} == {("attn", "mlp")}
    # attn spans 80-320 and mlp 120-480: compared at 120, 160, 240 and 320 only.
    assert {b for b, r in pairs.items() if r.status == "compared"} == {120, 160, 240, 320}
    assert budget.pairs_family_size == 4
    # At 160 "attn" is measured and "mlp" interpolated between 120 and 240.
    mlp_160 = _log_interp(120, curve_mlp[120], 240, curve_mlp[240], 160)
    test = ttest_rel(CURVE_ATTN[160], mlp_160)
    row = pairs[160]
    assert row.measured == "attn" and row.mean == pytest.approx(
        np.mean(np.subtract(CURVE_ATTN[160], mlp_160))
    )
    assert row.p == pytest.approx(test.pvalue) and row.p_holm >= row.p
    md = (write_report(root) / "report.md").read_text()
    assert "## Equal budgets, other pairs" in md and "Holm over 4 compared budget(s)" in md
    # One finding per placement against the reference, each listing its own compared budgets;
    # the method and the family are said once, in the first.
    budget_findings = [
        plain_text(f) for f in report.findings if plain_text(f).startswith("At equal budgets")
    ]
    pairs_named = [re.search(r"`(\w+)` vs `(\w+)`: ", f).groups() for f in budget_findings]
    assert pairs_named == [("attn", "all"), ("mlp", "all")]
    assert ["interpolated" in f for f in budget_findings] == [True, False]
    for (strategy, _), finding in zip(pairs_named, budget_findings):
        listed = [int(b.replace(",", "")) for b in re.findall(r"at ([\d,]+) parameters", finding)]
        assert listed == [
            r.budget for r in budget.rows if r.strategy == strategy and r.status == "compared"
        ]
        assert listed


def test_a_sweep_compares_each_rank_with_the_reference_at_that_rank(sweep_report):
    root, _ = sweep_report
    report = build_report(load_study(root))
    rows = report.analysis.rows
    assert [(r["strategy"], r["rank"]) for r in rows] == [
        (n, r) for r in (2, 4, 8) for n in ("all", "attn")
    ]
    comps = report.analysis.comparisons
    assert comps["attn r4"].reference == "all r4" and comps["all r4"].verdict == "reference"
    pvalues = [ttest_rel(CURVE_ATTN[40 * r], CURVE_ALL[100 * r]).pvalue for r in (2, 4, 8)]
    assert [comps[f"attn r{r}"].p for r in (2, 4, 8)] == pytest.approx(pvalues)
    # No best-vs-others over ranks: the family is the three reference comparisons.
    assert report.analysis.best is None and report.analysis.family_size == 3
    text = " ".join(plain_text(f) for f in report.findings)
    assert "Caution: LoRA scaling convention: standard" in text and "Ranks differ" in text
    # The placement question (equal budgets) comes before the same-rank comparisons, which say
    # that they mix placement with capacity; the table's note names its own Holm family.
    findings = [plain_text(f) for f in report.findings]
    first_budget = next(i for i, f in enumerate(findings) if f.startswith("At equal budgets"))
    same_rank = next(i for i, f in enumerate(findings) if f.startswith("Comparisons with"))
    assert first_budget < same_rank and "mix where the adapters are" in findings[same_rank]
    md = (root / "report" / "report.md").read_text()
    note = md.split("## Comparison with the reference")[1].split("##")[0]
    assert "adjusted over this table's 3 test(s), at the same rank" in note
    assert "| Verdict vs ref (same rank) |" in md.split("## Summary")[1].split("##")[0]


def _selection(root: Path) -> Path:
    strategies = {
        "baseline": ("all", 1000, placement_of(ALL), [(1.0, 1.0), (1.1, 1.0), (1.2, 1.0)]),
        "mlp": ("mlp", 600, placement_of(MLP), [(1.05, 1.0), (1.16, 1.0), (1.24, 1.0)]),
    }
    grid = [1e-4, 3e-4, 1e-3]
    make_study(
        root,
        strategies,
        training={"learning_rates": grid, "selection_seeds": [0, 1]},
        data={"validation_examples": 4},
    )
    validation = {
        "baseline": {1e-4: [1.20, 1.22], 3e-4: [1.10, 1.12], 1e-3: [1.15, 1.13]},
        "mlp": {1e-4: [1.30, 1.31], 3e-4: [1.35, 1.36], 1e-3: [None, 1.40]},  # diverged once
    }
    for name, per_lr in validation.items():
        spec = strategies[name][0]
        for lr, losses in per_lr.items():
            for seed, loss in enumerate(losses):
                rec = record(name, spec, seed, 600, {}, 0.0, 1.0, stage="selection")
                rec.update(learning_rate=lr, validation_loss=loss, eval_loss=None)
                if loss is None:
                    rec.update(status="failed", error="nan_loss")
                store.write_result(
                    store.RunKey(name, seed, None, "selection", lr).run_dir(root), rec
                )
    return root


def test_learning_rate_selection_table(tmp_path):
    report = build_report(load_study(_selection(tmp_path / "s")))
    table = {r.condition.name: r for r in report.selection.rows}
    # Chosen = lowest mean validation loss (means worked out here; a failure is infinite).
    assert table["baseline"].losses == pytest.approx({1e-4: 1.21, 3e-4: 1.11, 1e-3: 1.14})
    assert (table["baseline"].chosen, table["baseline"].at_edge) == (3e-4, False)
    assert table["mlp"].losses[1e-3] is None and table["mlp"].losses[1e-4] == pytest.approx(1.305)
    assert (table["mlp"].chosen, table["mlp"].at_edge) == (1e-4, True)
    assert report.selection.runs == 12 and report.selection.validation_examples == 4
    text = [plain_text(f) for f in report.findings]
    edge = next(f for f in text if "edge of the grid" in f)
    assert "`mlp` (0.0001, the smallest)" in edge and "baseline" not in edge
    assert any("on the validation split only" in f for f in text)
    assert not any("one learning rate" in f for f in text)  # a grid, not a shared value
    # The diverged selection run is listed with the failures, with its rate and reason.
    md = (write_report(tmp_path / "s") / "report.md").read_text()
    failed = md.split("## Failed and unfinished runs")[1].split("##")[0]
    assert "selection `mlp` lr 0.001 seed 0: nan\\_loss" in failed  # markdown-escaped


def _checkpoints(root: Path) -> Path:
    # Mean eval loss at steps 2, 4, 6: a < b < c twice, then b < a < c (a late flip).
    means = {"a": [1.30, 1.20, 1.15], "b": [1.32, 1.22, 1.10], "c": [1.35, 1.25, 1.18]}
    strategies = {
        name: (spec, 500, placement_of(ATTN), [(m[-1] + 0.01 * s, 1.0) for s in range(3)])
        for name, spec, m in zip(means, ("all", "attn", "mlp"), means.values())
    }
    strategies["c"][3][2] = (None, 1.0)  # c's seed 2 failed: every curve averages seeds 0, 1
    make_study(root, strategies, reference="a", eval={"checkpoints": [1 / 3, 2 / 3]})
    for name, m in means.items():
        for seed in range(3):
            run = store.RunKey(name, seed).run_dir(root)
            lines = [{"step": s, "eval_loss": v + 0.01 * seed} for s, v in zip((2, 4, 6), m)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_ranking_stability_between_checkpoints_shows_a_late_flip(tmp_path):
    root = _checkpoints(tmp_path / "s")
    out = write_report(root)
    report = build_report(load_study(root))
    cp = report.checkpoints
    assert cp.steps == [2, 4, 6] and cp.seeds == [0, 1]
    assert cp.means["b"] == pytest.approx({2: 1.325, 4: 1.225, 6: 1.105})
    at = {s: [cp.means[k][s] for k in ("a", "b", "c")] for s in cp.steps}
    taus = [kendalltau(at[x], at[y]).statistic for x, y in ((2, 4), (4, 6))]
    assert [s.tau for _, _, s in cp.pairs] == pytest.approx(taus)
    assert taus == pytest.approx([1.0, 1 / 3])
    last = next(plain_text(f) for f in report.findings if f.startswith("Ranking stability"))
    assert "Last pair (steps 4→6): tau +0.33" in last
    assert "mean eval losses of the 3 conditions scored at both" in last
    assert "changed from `a` to `b`" in last and "The ranking changed late" in last
    # The one pair that changed order is named, with its gap at the last checkpoint.
    assert "Pairs whose order changed (1," in last
    assert f"`b` now lower than `a` by {1.15 + 0.005 - 1.105:.4f}" in last
    assert (out / "eval_curves.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "](eval_curves.png)" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()
    assert "every condition finished (0, 1)" in md and "## Ranking stability" in md
    assert "| 4 | 6 | 3 of 3 | +0.33 |" in md


# Per-seed eval loss at steps 2 and 4 (4 seeds). b is well above a at step 2 and well below it
# at step 4: a swap the seeds resolve at both checkpoints. c swaps with a by less than its
# seed-to-seed noise: a swap they cannot order. d stays last: it is no change of order.
ORDER = {
    "a": {2: [1.00, 1.01, 1.02, 1.03], 4: [0.90, 0.92, 0.91, 0.93]},
    "b": {2: [1.050, 1.061, 1.069, 1.080], 4: [0.870, 0.889, 0.881, 0.900]},
    "c": {2: [1.030, 1.000, 1.040, 1.025], 4: [0.880, 0.930, 0.895, 0.935]},
    "d": {2: [1.20, 1.22, 1.21, 1.25], 4: [1.10, 1.13, 1.12, 1.14]},
}


def _holm_by_definition(ps: list[float]) -> list[float]:
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def test_pairs_that_changed_order_are_tested_at_both_checkpoints(tmp_path):
    root = tmp_path / "s"
    strategies = {
        name: (spec, 500, placement_of(ATTN), [(loss, 1.0) for loss in by_step[4]])
        for (name, by_step), spec in zip(ORDER.items(), ("all", "attn", "mlp", "q,v"))
    }
    make_study(root, strategies, reference="a", eval={"checkpoints": [0.5]})
    for name, by_step in ORDER.items():
        for seed in range(4):
            lines = [{"step": s, "eval_loss": by_step[s][seed]} for s in (2, 4)]
            run = store.RunKey(name, seed).run_dir(root)
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = build_report(load_study(root))
    pairs = list(itertools.combinations(ORDER, 2))
    expected = {}  # pair -> {step: (mean difference, Holm p)}, from scipy and Holm's definition
    for step in (2, 4):
        ps = [ttest_rel(ORDER[x][step], ORDER[y][step]).pvalue for x, y in pairs]
        for (x, y), p_holm in zip(pairs, _holm_by_definition(ps)):
            diff = np.mean(np.subtract(ORDER[x][step], ORDER[y][step]))
            expected.setdefault((x, y), {})[step] = (diff, p_holm)
    swapped = {k for k, v in expected.items() if v[2][0] * v[4][0] < 0}
    assert swapped == {("a", "b"), ("a", "c"), ("b", "c")}  # no pair with d changes order
    changes = report.checkpoints.changes
    assert {(x.before.strategy, x.before.reference) for x in changes} == swapped
    for x in changes:
        want = expected[(x.before.strategy, x.before.reference)]
        assert (x.from_step, x.to_step) == (2, 4) and x.before.n == 4
        assert (x.before.mean, x.before.p_holm) == pytest.approx(want[2])
        assert (x.after.mean, x.after.p_holm) == pytest.approx(want[4])
    by_pair = {(x.before.strategy, x.before.reference): x for x in changes}
    ab, ac = by_pair[("a", "b")], by_pair[("a", "c")]
    assert expected[("a", "b")][2][1] < 0.05 and expected[("a", "b")][4][1] < 0.05
    assert (ab.before.direction, ab.after.direction) == ("better", "worse")
    assert ab.before.verdict in ("clear", "supported") and ab.after.verdict in (
        "clear",
        "supported",
    )
    assert expected[("a", "c")][2][1] > 0.1 and expected[("a", "c")][4][1] > 0.1
    assert ac.before.verdict == ac.after.verdict == "unresolved"
    finding = next(plain_text(f) for f in report.findings if f.startswith("Ranking stability"))
    unordered = sum(
        1 for x in changes if not {x.before.verdict, x.after.verdict} & {"clear", "supported"}
    )
    assert f"The report tests {len(changes)} of them" in finding
    assert f"{unordered} had no clear or supported difference at either checkpoint" in finding
    assert "`a` vs `b` (" in finding and "`a` vs `c` (" not in finding
    md = (write_report(root) / "report.md").read_text()
    table = md.split("## Pairs that changed order")[1].split("##")[0]
    assert "| 2 | 4 | `a` | `c` | 4 |" in table and "| unresolved |" in table


def _eval_study(root: Path, evals: dict[str, dict[int, list]], specs=("all", "attn", "mlp")):
    """A study whose runs logged ``evals[name][step][seed]`` (``None``: no eval at that step);
    a strategy with no steps has no runs at all."""
    strategies = {
        name: (spec, 500, placement_of(ATTN), [(loss, 1.0) for loss in by_step.get(4, [])])
        for (name, by_step), spec in zip(evals.items(), specs)
    }
    make_study(root, strategies, reference=next(iter(evals)), eval={"checkpoints": [0.5]})
    for name, by_step in evals.items():
        for seed in range(len(by_step.get(4, []))):
            lines = [
                {"step": step, "eval_loss": by_step[step][seed]}
                for step in (2, 4)
                if by_step[step][seed] is not None
            ]
            run = store.RunKey(name, seed).run_dir(root)
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_a_condition_without_runs_leaves_the_order_changes_to_the_others(tmp_path):
    evals = {name: ORDER[name] for name in ("a", "b")} | {"none": {}}
    report = build_report(load_study(_eval_study(tmp_path / "s", evals)))
    changes = report.checkpoints.changes
    assert [(x.before.strategy, x.before.reference) for x in changes] == [("a", "b")]
    assert "## Pairs that changed order" in (write_report(tmp_path / "s") / "report.md").read_text()


def test_a_change_of_order_is_read_from_the_means_the_ranking_uses(tmp_path):
    # Seed 2 of a has no eval at step 2. By the means the ranking uses, a is below b at both
    # steps (1.05 < 1.10, then 0.90 < 0.95); paired over their common seeds 0 and 1, a is
    # above b at step 2 (+0.05). That is no change of order in the ranking, so none is listed.
    evals = {
        "a": {2: [1.05, 1.05, None], 4: [0.90, 0.90, 0.90]},
        "b": {2: [1.00, 1.00, 1.30], 4: [0.95, 0.95, 0.95]},
        "c": {2: [1.40, 1.40, 1.40], 4: [1.30, 1.30, 1.30]},
    }
    report = build_report(load_study(_eval_study(tmp_path / "s", evals)))
    cp = report.checkpoints
    assert cp.means["a"][2] < cp.means["b"][2] and cp.means["a"][4] < cp.means["b"][4]
    assert [s.tau for _, _, s in cp.pairs] == [pytest.approx(1.0)]
    assert cp.changes == []
    evals["a"][4] = [1.00, 1.00, 1.00]  # now a ends above b: one change, and it is listed
    report = build_report(load_study(_eval_study(tmp_path / "t", evals)))
    [change] = report.checkpoints.changes
    assert (change.before.strategy, change.before.reference) == ("a", "b")
    assert change.before.n == 2 and change.after.n == 3
    md = (write_report(tmp_path / "t") / "report.md").read_text()
    assert "| 2 | 4 | `a` | `b` | 2 → 3 |" in md


def test_no_pair_changed_order_no_table(tmp_path):
    root = tmp_path / "s"
    steady = {"a": [1.0, 1.1, 1.2], "b": [1.05, 1.16, 1.24]}
    strategies = {
        name: (spec, 500, placement_of(ATTN), [(v - 0.1, 1.0) for v in values])
        for (name, values), spec in zip(steady.items(), ("all", "attn"))
    }
    make_study(root, strategies, reference="a", eval={"checkpoints": [0.5]})
    for name, values in steady.items():
        for seed, v in enumerate(values):
            lines = [{"step": 2, "eval_loss": v}, {"step": 4, "eval_loss": v - 0.1}]
            run = store.RunKey(name, seed).run_dir(root)
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = build_report(load_study(root))
    assert report.checkpoints.steps == [2, 4] and report.checkpoints.changes == []
    md = (write_report(root) / "report.md").read_text()
    assert "## Ranking stability" in md and "## Pairs that changed order" not in md


def test_lowest_is_claimed_only_when_every_rival_is_beaten(tmp_path):
    ref = [1.0, 1.1, 1.2]
    best = [x - d for x, d in zip(ref, (0.3, 0.31, 0.29))]
    other = [x + d for x, d in zip(ref, (0.01, 0.03, 0.02))]
    clear = {
        "baseline": ("all", 1000, placement_of(ALL), [(x, 1.0) for x in ref]),
        "best": ("attn", 1000, placement_of(ATTN), [(x, 1.0) for x in best]),
        "other": ("mlp", 1000, placement_of(MLP), [(x, 1.0) for x in other]),
    }
    report = build_report(load_study(make_study(tmp_path / "a", clear)))
    assert report.analysis.best.lowest
    assert any("it is the lowest" in plain_text(f) for f in report.findings)
    blocked = {**clear, "rival": ("q,v", 1000, placement_of(ATTN), [(0.5, 1.0), (0.6, 1.0)])}
    report = build_report(load_study(make_study(tmp_path / "b", blocked)))
    note = next(plain_text(f) for f in report.findings if "lowest mean eval loss" in plain_text(f))
    assert "`rival` has the lowest mean eval loss" in note
    assert "not established" in note and "`best`" in note


def test_report_lowest_false_keeps_the_family_to_the_reference_comparisons(tmp_path):
    ref = [1.0, 1.1, 1.2]
    losses = {
        "baseline": ref,
        "best": [x - d for x, d in zip(ref, (0.03, 0.05, 0.02))],
        "other": [x + d for x, d in zip(ref, (0.01, 0.04, 0.02))],
    }
    specs = {"baseline": ("all", ALL), "best": ("attn", ATTN), "other": ("mlp", MLP)}
    strategies = {
        n: (spec, 1000, placement_of(units), [(x, 1.0) for x in losses[n]])
        for n, (spec, units) in specs.items()
    }
    joint = build_report(load_study(make_study(tmp_path / "a", strategies))).analysis
    assert joint.family_size == 3  # best vs other joins the two reference tests
    root = make_study(tmp_path / "b", strategies, report={"lowest": False})
    report = build_report(load_study(root))
    assert report.analysis.family_size == 2 and report.analysis.best is None
    raw = [ttest_rel(losses[n], losses["baseline"]).pvalue for n in ("best", "other")]
    for name, p_holm in zip(("best", "other"), _holm_by_definition(raw)):
        assert report.analysis.comparisons[name].p_holm == pytest.approx(p_holm)
    text = [plain_text(f) for f in report.findings]
    assert any(
        "The lowest mean eval loss is not tested (`report.lowest: false`)" in f for f in text
    )
    assert not any("has the lowest mean eval loss" in f for f in text)
    assert any("Holm-adjusted over the 2 test(s)" in f for f in text)
    alone = {"baseline": strategies["baseline"]}  # nothing to compare: nothing to say of it
    report = build_report(load_study(make_study(tmp_path / "c", alone, report={"lowest": False})))
    assert not any("lowest" in plain_text(f) for f in report.findings)


def test_the_training_budget_is_stated(tmp_path):
    strategies = {"baseline": ("all", 1000, placement_of(ALL), [(1.0, 1.0), (1.1, 1.0)])}
    out = write_report(make_study(tmp_path / "s", strategies))
    md = (out / "report.md").read_text()
    budget = md.split("## Training budget")[1].split("##")[0]
    # 4 steps of 4 examples from 8 kept training examples: 16 / 8 = 2 epochs.
    assert "4 optimizer steps of 4 examples" in budget and "4,000 tokens trained" in budget
    assert "2.00 epochs of the training pool (16 examples drawn / 8 kept" in budget
    assert "Trainable parameters: 1,000 to 1,000" in budget


def test_adopted_final_runs_are_stated_in_the_training_budget(tmp_path):
    strategies = {"baseline": ("all", 1000, placement_of(ALL), [(1.0, 1.0), (1.1, 1.0)])}
    root = make_study(tmp_path / "s", strategies)
    run = store.RunKey("baseline", 0).run_dir(root)
    rec = json.loads((run / "result.json").read_text())
    rec["adopted_from"] = "selection/baseline--lr1e-03--seed0"
    store.write_result(run, rec)
    md = (write_report(root) / "report.md").read_text()
    budget = md.split("## Training budget")[1].split("##")[0]
    assert "1 final run(s) are the selection run of their condition" in budget
    assert "(seed 0)" in budget
    # Its training is its selection run's: the provenance total counts it once, not twice.
    runs = md.split("**Runs**:")[1].splitlines()[0]
    seed1 = json.loads((store.RunKey("baseline", 1).run_dir(root) / "result.json").read_text())
    assert f"; {seed1['train_time_s']:.0f} s of training in all (1 adopted" in runs


def test_a_sweeps_all_pairs_share_a_rank_or_a_placement(sweep_report):
    root, _ = sweep_report
    pairs = build_report(load_study(root)).analysis.pairwise
    got = [(c.strategy, c.reference) for c in pairs]
    # Same rank first, then each placement over its ranks; "all r2" against "attn r4" differs
    # in both and is left out. The 9 tests are one Holm family.
    assert got == [
        ("all r2", "attn r2"),
        ("all r4", "attn r4"),
        ("all r8", "attn r8"),
        ("all r2", "all r4"),
        ("all r2", "all r8"),
        ("all r4", "all r8"),
        ("attn r2", "attn r4"),
        ("attn r2", "attn r8"),
        ("attn r4", "attn r8"),
    ]
    assert {c.family_size for c in pairs} == {9}
    p = ttest_rel(CURVE_ALL[200], CURVE_ALL[800]).pvalue
    assert pairs[4].p == pytest.approx(p)
    md = (root / "report" / "report.md").read_text()
    assert "pairs that differ in both placement and rank are left out" in md


def test_a_sweep_with_two_seeds_says_nothing_is_tested_yet(tmp_path):
    two = tuple(
        (name, per_rank, {params: losses[:2] for params, losses in curve.items()})
        for name, per_rank, curve in (("all", 100, CURVE_ALL), ("attn", 40, CURVE_ATTN))
    )
    root = _sweep(tmp_path / "s", curves=two)
    write_report(root)
    md = (root / "report" / "report.md").read_text()
    assert "Holm over 0" not in md
    none = "nothing tested yet (no comparison has 3 paired seeds and a defined p)"
    assert f"paired t over seeds, {none})" in md
    note = md.split("## Equal-budget comparison")[1].split("##")[0]
    assert "nothing tested yet (no comparison has 3 paired seeds and a defined p)." in note
    # The same-rank comparison table and the LaTeX caption say so too, not "over 0 test(s)".
    note = md.split("## Comparison with the reference")[1].split("##")[0]
    assert "Holm p: nothing tested yet (no comparison has 3 paired seeds and a defined p)." in note
    tex = (root / "report" / "summary.tex").read_text()
    assert "over 0 test" not in md + tex and "p: nothing tested yet" in tex


def test_a_condition_with_no_finished_seed_has_no_verdict_and_no_pareto_mark(tmp_path):
    import shutil

    root = _sweep(tmp_path / "s")
    for seed in (0, 1, 2):
        shutil.rmtree(store.RunKey("attn", seed, 8).run_dir(root))
    write_report(root)
    md = (root / "report" / "report.md").read_text()
    summary = md.split("## Summary")[1].split("##")[0]
    row = next(line for line in summary.splitlines() if line.startswith("| `attn` | r8 |"))
    assert row.split("|")[4:-1] == [" 0 "] + [" – "] * 7
    compared = md.split("## Comparison with the reference")[1].split("##")[0]
    row = next(line for line in compared.splitlines() if line.startswith("| `attn` | r8 |"))
    assert "exploratory" not in row and row.split("|")[-3] == " – "


# "attn" above "all" by about 0.1 in every seed: both compared budgets are found different.
CURVE_ATTN_WORSE = {80: [1.20, 1.25, 1.18], 160: [1.12, 1.17, 1.10], 320: [1.05, 1.11, 1.03]}


@pytest.mark.parametrize(
    ("attn", "found"), [(CURVE_ATTN, [False, False]), (CURVE_ATTN_WORSE, [True, True])]
)
def test_the_budget_figure_shows_each_equal_budget_difference_with_its_paired_interval(
    tmp_path, monkeypatch, attn, found
):
    from matplotlib.colors import to_rgba

    from loraplace.report import figures

    kept: list = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    root = _sweep(tmp_path / "s", (("all", 100, CURVE_ALL), ("attn", 40, attn)))
    write_report(root)
    report = build_report(load_study(root))
    (fig,) = [f for f in kept if len(f.axes) == 2]
    top, low = fig.axes
    assert top.get_title().startswith("Budget curves")
    compared = [r for r in report.budget.rows if r.status == "compared"]
    drawn = []
    for container in low.containers:
        line, _caps, (bars,) = container
        (x, y), face = line.get_xydata()[0], to_rgba(line.get_markerfacecolor())
        (lo, hi) = bars.get_segments()[0][:, 1]
        drawn.append((x, y, lo, hi, face != to_rgba("white")))
    # One placement against the reference: no sideways nudge, so x is the budget itself.
    assert drawn == [
        pytest.approx((r.budget, r.mean, r.t_low, r.t_high, r.verdict in ("clear", "supported")))
        for r in compared
    ]
    assert [d[-1] for d in drawn] == found and "vs all" in low.get_ylabel()
    md = (root / "report" / "report.md").read_text()
    assert "a filled marker is a difference the Holm-corrected test found" in md
