"""Planned comparisons (``report.comparisons``): one Holm family over exactly the planned
t-tests and one over the planned TOSTs, the difference of differences taken per seed, and the
recommendation that opens the report, on hand-made studies checked against scipy."""

from __future__ import annotations

import json

import pytest
from helpers import ATTN, MLP, holm_by_definition, make_study, placement_of
from scipy.stats import ttest_1samp, ttest_rel

from loraplace import store
from loraplace.config.study import load_study_config
from loraplace.errors import ConfigError
from loraplace.report.analysis import analyse
from loraplace.report.atlas import build_atlas, write_atlas
from loraplace.report.build import build_report, load_study, write_report
from loraplace.report.findings import recommendation
from loraplace.report.render import plain_text

BLOCK = [1.0, 1.05, 0.98, 1.1, 1.02]
"""Each seed's shared effect: every strategy of a seed moves with it."""
ALL = {**ATTN, **MLP}


def _runs(shift: float, noise: list[float], accuracy: list[float] | None = None) -> list:
    acc = accuracy or [None] * len(BLOCK)
    return [(b + shift + e, 10.0, a) for b, e, a in zip(BLOCK, noise, acc)]


#: The atlas design on a toy model: the reference, three placements at its rank and the two
#: all-linear conditions matched to attention-only and FFN-only.
DESIGN = {
    "all": ("all", 2000, placement_of(ALL), _runs(0.0, [0.0] * 5)),
    "attn": ("attn", 800, placement_of(ATTN), _runs(0.02, [0.001, -0.002, 0.0015, -0.0005, 0.0])),
    "mlp": ("mlp", 1200, placement_of(MLP), _runs(0.001, [0.0005, -0.0005, 0.0003, -0.0002, 0])),
    "upper": (
        "all@last:2",
        1000,
        placement_of(ALL, range(2, 4)),
        _runs(0.004, [0.01, -0.012, 0.008, 0.0, -0.006]),
    ),
    "all-r3": ("all:r3", 790, placement_of(ALL), _runs(0.012, [0.001, 0.0, -0.001, 0.0005, 0])),
    "all-r5": ("all:r5", 1210, placement_of(ALL), _runs(0.0, [0.0, 0.001, -0.001, 0.0, 0.0005])),
}
DOD = [["attn", "all-r3"], ["mlp", "all-r5"]]
PLAN = [
    ["attn", "all"],
    ["mlp", "all"],
    ["upper", "all"],
    ["attn", "all-r3"],
    ["mlp", "all-r5"],
    ["attn", "mlp", "t-only"],
    DOD,
]
MARGIN = 0.01


def _study(tmp_path, strategies=DESIGN, plan=PLAN, **report):
    return make_study(
        tmp_path / "study", strategies, reference="all", report={"comparisons": plan, **report}
    )


def _losses(strategies) -> dict[str, dict[int, float]]:
    return {
        name: {s: run[0] for s, run in enumerate(runs) if run[0] is not None}
        for name, (_, _, _, runs) in strategies.items()
    }


def _tost_p(d: list[float], margin: float) -> float:
    lower = ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = ttest_1samp(d, margin, alternative="less").pvalue
    return max(lower, upper)


def _expected(strategies, plan, margin=MARGIN):
    """Raw paired t and TOST p-values of each planned comparison, worked out with scipy."""
    losses = _losses(strategies)
    ps, tosts, diffs = [], [], []
    for entry in plan:
        if isinstance(entry[0], list):
            (a, b), (c, d) = entry
            seeds = sorted(set(losses[a]) & set(losses[b]) & set(losses[c]) & set(losses[d]))
            diff = [(losses[a][s] - losses[b][s]) - (losses[c][s] - losses[d][s]) for s in seeds]
            ps.append(ttest_1samp(diff, 0.0).pvalue)
            tosts.append(None)
        else:
            a, b = entry[:2]
            seeds = sorted(set(losses[a]) & set(losses[b]))
            diff = [losses[a][s] - losses[b][s] for s in seeds]
            ps.append(
                ttest_rel([losses[a][s] for s in seeds], [losses[b][s] for s in seeds]).pvalue
            )
            tosts.append(_tost_p(diff, margin) if len(entry) == 2 else None)
        diffs.append(diff)
    return ps, tosts, diffs


def test_holm_runs_over_exactly_the_planned_t_tests_and_the_planned_tosts(tmp_path):
    a = analyse(load_study(_study(tmp_path)))
    ps, tosts, diffs = _expected(DESIGN, PLAN)
    assert len(a.planned) == len(PLAN)
    assert {c.family_size for c in a.planned} == {7}
    assert {c.tost_family_size for c in a.planned} == {5}
    for c, p, p_holm, diff in zip(a.planned, ps, holm_by_definition(ps), diffs):
        assert c.p == pytest.approx(p, rel=1e-9)
        assert c.p_holm == pytest.approx(p_holm, rel=1e-6)
        assert c.mean == pytest.approx(sum(diff) / len(diff))
    planned_tosts = [p for p in tosts if p is not None]
    adjusted = iter(holm_by_definition(planned_tosts))
    for c, p in zip(a.planned, tosts):
        if p is None:
            assert c.tost_p is None and c.tost_p_holm is None
        else:
            assert c.tost_p == pytest.approx(p, rel=1e-9)
            assert c.tost_p_holm == pytest.approx(next(adjusted), rel=1e-6)
    # The comparisons with the reference keep their own family (5 tests), apart from the plan.
    assert a.family_size == 5 and a.best is None


def test_the_difference_of_differences_is_taken_per_seed_over_the_seeds_all_four_finished(
    tmp_path,
):
    # FFN-only's seed 4 failed: the difference of differences uses seeds 0-3 only, while the
    # simple differences keep every seed they share.
    strategies = dict(DESIGN)
    spec, params, placement, runs = strategies["mlp"]
    strategies["mlp"] = (spec, params, placement, [*runs[:4], (None, 10.0, None)])
    a = analyse(load_study(_study(tmp_path, strategies)))
    dod = a.planned[-1]
    losses = _losses(strategies)
    per_seed = [
        (losses["attn"][s] - losses["all-r3"][s]) - (losses["mlp"][s] - losses["all-r5"][s])
        for s in range(4)
    ]
    assert dod.terms == (("attn", "all-r3"), ("mlp", "all-r5"))
    assert (dod.strategy, dod.reference) == ("attn − all-r3", "mlp − all-r5")
    assert dod.n == 4 and dod.mean == pytest.approx(sum(per_seed) / 4)
    assert dod.p == pytest.approx(ttest_1samp(per_seed, 0.0).pvalue, rel=1e-9)
    assert dod.tost_p is None and dod.verdict == "clear" and dod.direction == "worse"
    # Not the difference of the two mean differences over their own seeds (5 and 4).
    att = sum(losses["attn"][s] - losses["all-r3"][s] for s in range(5)) / 5
    assert dod.mean != pytest.approx(att - a.planned[4].mean, abs=1e-6)


def test_verdicts_follow_the_ladder_with_equivalence_only_by_a_passing_tost(tmp_path):
    found = {(c.strategy, c.reference): c for c in analyse(load_study(_study(tmp_path))).planned}
    assert (found["attn", "all"].verdict, found["attn", "all"].direction) == ("clear", "worse")
    # Inside the margin and TOST passes, but the difference is supported: never "equivalent".
    mlp = found["mlp", "all"]
    assert mlp.tost_p_holm < 0.05 and (mlp.verdict, mlp.direction) == ("supported", "worse")
    assert found["mlp", "all-r5"].verdict == "equivalent"
    assert found["upper", "all"].verdict == "unresolved"
    assert found["attn", "mlp"].tost_p is None and found["attn", "mlp"].verdict == "clear"


def test_the_report_shows_the_planned_table_and_findings_and_leaves_the_lowest_untested(
    tmp_path,
):
    out = write_report(_study(tmp_path))
    md = (out / "report.md").read_text()
    assert "## Planned comparisons" in md and "Holm over 7 planned t-test(s)" in md
    assert "over the 5 TOST(s)" in md
    assert "(`attn` − `all-r3`) − (`mlp` − `all-r5`)" in md
    assert "The lowest mean eval loss is not tested: the planned comparisons" in md
    assert "a family of its own (the findings use the planned comparisons)" in md
    # The summary's verdict column is that other family too, and says so.
    assert "Verdict: see the comparison table (a family of its own: the findings and" in md
    lines = md.splitlines()
    assert lines[4].startswith("Recommendation (the planned comparisons with `all`, on eval loss)")
    html = (out / "report.html").read_text()
    assert html.index("Recommendation (") < html.index("<h2>Findings</h2>")


def _line(tmp_path, strategies=DESIGN, plan=PLAN, **report) -> str:
    study = load_study(_study(tmp_path, strategies, plan, **report))
    line = recommendation(study, build_report(study).analysis)
    return _words(line) if line else line


def _words(rich: str) -> str:
    """A rich-text sentence without its code marks."""
    return plain_text(rich).replace("`", "")


def test_recommendation_names_the_smallest_placement_shown_equivalent(tmp_path):
    # FFN-only and the upper half both within the margin of all-linear, tightly: the upper
    # half (1,000 parameters) has fewer than FFN-only (1,200), so it is the one named.
    tight = [0.0005, -0.0005, 0.0003, -0.0002, 0.0]
    strategies = dict(DESIGN)
    strategies["mlp"] = (*DESIGN["mlp"][:3], _runs(0.0, tight))
    strategies["upper"] = (*DESIGN["upper"][:3], _runs(0.0, [-x for x in tight]))
    line = _line(tmp_path, strategies)
    assert line.startswith(
        "Recommendation (the planned comparisons with all, on eval loss): upper is equivalent to "
        "all within ±0.01 nats of eval loss with 50% fewer trainable parameters (1,000 vs 2,000; "
        "TOST Holm p "
    )


def test_recommendation_says_which_placements_are_shown_worse_when_none_is_equivalent(tmp_path):
    line = _line(tmp_path)
    att = [x - y for x, y in zip(_losses(DESIGN)["attn"].values(), BLOCK)]
    low, high = ttest_1samp(att, 0.0).confidence_interval(0.95)
    assert line.startswith(
        "Recommendation (the planned comparisons with all, on eval loss): no placement with "
        "fewer parameters is shown equivalent to all; attn is worse than all by 0.0200 nats "
        f"[{low:.4f}, {high:.4f}] (clear, Holm p < 0.001); mlp is worse than all by 0.0010 nats"
    )
    assert "upper" not in line  # unresolved: not named


def test_recommendation_turns_a_comparison_written_with_the_reference_first(tmp_path):
    # [all, attn] is all − attn: attention-only is still the one worse, by a positive amount.
    line = _line(tmp_path, plan=[["all", "attn"]])
    assert "attn is worse than all by 0.0200 nats [0.01" in line


def test_recommendation_is_unresolved_without_a_difference_or_an_equivalence(tmp_path):
    noisy = {
        name: (spec, params, placement, _runs(0.0, [0.03, -0.03, 0.02, -0.01, -0.01]))
        if name != "all"
        else entry
        for name, entry in DESIGN.items()
        for spec, params, placement, _ in [entry]
    }
    line = _line(tmp_path, noisy)
    assert line == (
        "Recommendation (the planned comparisons with all, on eval loss): unresolved: no "
        "placement is shown equivalent to or different from all."
    )
    two_seeds = {name: (*entry[:3], entry[3][:2]) for name, entry in DESIGN.items()}
    assert _line(tmp_path / "two", two_seeds).endswith(
        "(no planned comparison with it has 3 paired seeds yet)."
    )
    assert _line(tmp_path / "none", plan=[DOD]).endswith("(no planned comparison names all).")


def _score_by_choice(root) -> None:
    """Mark every run as scored by multiple choice (a task scored by accuracy)."""
    for path in (root / "runs").glob("*/result.json"):
        record = json.loads(path.read_text())
        scored = {"accuracy_metric": "acc", "accuracy_examples": 1000}  # 0.1 points each
        store.write_result(path.parent, {**record, **scored})


ACCURACY = {
    "all": [0.60, 0.62, 0.58, 0.64, 0.61],
    "attn": [0.55, 0.56, 0.54, 0.58, 0.555],
    "mlp": [0.602, 0.618, 0.583, 0.641, 0.608],
    "upper": [0.5, 0.7, 0.55, 0.66, 0.6],
    "all-r3": [0.58, 0.6, 0.57, 0.62, 0.6],
    "all-r5": [0.6, 0.62, 0.58, 0.64, 0.61],
}
#: The design with each run's accuracy.
SCORED = {
    name: (spec, params, placement, [(*run[:2], a) for run, a in zip(runs, ACCURACY[name])])
    for name, (spec, params, placement, runs) in DESIGN.items()
}


def test_accuracy_is_tested_in_its_own_planned_families_and_leads_the_recommendation(tmp_path):
    acc = ACCURACY
    root = _study(tmp_path, SCORED, accuracy_margin=1.5)
    _score_by_choice(root)
    study = load_study(root)
    a = build_report(study).analysis
    assert len(a.planned_accuracy) == len(PLAN)
    raw = [ttest_rel(acc[x], acc[y]).pvalue for x, y in (e[:2] for e in PLAN[:-1])]
    dod = [
        (acc["attn"][s] - acc["all-r3"][s]) - (acc["mlp"][s] - acc["all-r5"][s]) for s in range(5)
    ]
    raw.append(ttest_1samp(dod, 0.0).pvalue)
    for c, p, p_holm in zip(a.planned_accuracy, raw, holm_by_definition(raw)):
        assert c.p == pytest.approx(p, rel=1e-9) and c.p_holm == pytest.approx(p_holm, rel=1e-6)
    mlp = a.planned_accuracy[1]
    diff = [x - y for x, y in zip(acc["mlp"], acc["all"])]
    assert mlp.margin == pytest.approx(0.015)
    assert mlp.tost_p == pytest.approx(_tost_p(diff, 0.015), rel=1e-9)
    attn = a.planned_accuracy[0]
    assert attn.direction == "worse" and attn.mean < 0  # lower accuracy is worse
    line = _words(recommendation(study, a))
    assert line.startswith(
        "Recommendation (the planned comparisons with all, on accuracy): mlp is equivalent to all "
        "within ±1.5 accuracy points with 40% fewer trainable parameters"
    )
    md = (write_report(root) / "report.md").read_text()
    assert "## Planned comparisons: accuracy" in md and "±1.5 points" in md


def test_without_planned_comparisons_the_report_has_no_recommendation(tmp_path):
    root = make_study(tmp_path / "plain", DESIGN, reference="all")
    a = analyse(load_study(root))
    assert a.planned == [] and a.planned_accuracy == []
    md = (write_report(root) / "report.md").read_text()
    assert "Recommendation" not in md and "Planned comparisons" not in md
    assert "Verdict: see the comparison table. Pareto" in md


@pytest.mark.parametrize(
    ("comparisons", "message"),
    [
        ([["attn", "al"]], "report.comparisons[0] names 'al', not a strategy of this study"),
        ([["attn", "attn"]], "report.comparisons[0] compares a strategy with itself"),
        ([[["attn", "all"], ["mlp", "nope"]]], "report.comparisons[0] names 'nope'"),
        ([["attn"]], "report.comparisons must be a non-empty list of [A, B], [A, B, t-only]"),
        ([["attn", "all", "tost"]], "report.comparisons must be a non-empty list"),
        ([], "report.comparisons must be a non-empty list"),
        ("attn", "report.comparisons must be a non-empty list"),
    ],
)
def test_planned_comparisons_are_validated_against_the_studys_strategies(comparisons, message):
    raw = {
        "name": "s",
        "model": "tiny",
        "strategies": {"all": "all", "attn": "attn", "mlp": "mlp"},
        "report": {"comparisons": comparisons},
    }
    with pytest.raises(ConfigError) as caught:
        load_study_config(raw, check_model=False)
    assert message in str(caught.value)


def test_planned_comparisons_are_refused_with_a_rank_sweep_and_keep_out_of_the_identity():
    raw = {
        "name": "s",
        "model": "tiny",
        "strategies": {"all": "all", "attn": "attn"},
        "ranks": [2, 4],
        "report": {"comparisons": [["attn", "all"]]},
    }
    with pytest.raises(ConfigError, match="report.comparisons cannot be used with ranks"):
        load_study_config(raw, check_model=False)
    from loraplace.config.study import StudyConfig
    from loraplace.settings import NO_RUN, keys_of_scope

    assert "report" in keys_of_scope(StudyConfig, NO_RUN)


def test_the_atlas_reads_the_planned_comparisons_where_a_study_declares_them(tmp_path):
    a = _study(tmp_path / "a")
    shifted = {
        name: (
            *entry[:3],
            [(loss + (0.0 if name == "all" else 0.003), *rest) for loss, *rest in entry[3]],
        )
        for name, entry in DESIGN.items()
    }
    b = make_study(
        tmp_path / "b", shifted, reference="all", model="other-model", report={"comparisons": PLAN}
    )
    atlas = build_atlas([a, b])
    assert atlas.placements == ["attn", "mlp", "upper"]
    assert atlas.pairs == [
        "attn − all-r3",
        "mlp − all-r5",
        "attn − mlp",
        "(attn − all-r3) − (mlp − all-r5)",
    ]
    for cell, root in zip(atlas.cells, (a, b)):
        planned = analyse(load_study(root)).planned
        assert cell.planned and cell.comparisons["attn"] == planned[0]
        assert cell.pairs["(attn − all-r3) − (mlp − all-r5)"] == planned[-1]
        assert cell.comparisons["attn"].family_size == 7
    text = (write_atlas([a, b], tmp_path / "atlas") / "atlas.md").read_text()
    assert "Pairs every study tested (planned family of each study)" in text
    assert "Read from each study's planned comparisons" in text
    assert "Accuracy, for the studies that score it" not in text
    attn = atlas.cells[0].comparisons["attn"]
    assert attn.direction == "worse"  # +0.02 nats on every seed
    entry = f"{attn.mean:+.4f} [{attn.ci_low:+.4f}, {attn.ci_high:+.4f}] {attn.verdict}, worse"
    assert f"| {entry} |" in text


def test_the_atlas_shows_planned_accuracy_in_points(tmp_path):
    acc = [0.6, 0.62, 0.58, 0.64, 0.61]
    strategies = {
        name: (
            *entry[:3],
            [(*run[:2], a - (0.05 if name == "attn" else 0.0)) for run, a in zip(entry[3], acc)],
        )
        for name, entry in DESIGN.items()
    }
    root = _study(tmp_path, strategies)
    _score_by_choice(root)
    atlas = build_atlas([root])
    cell = atlas.cells[0]
    assert cell.accuracy["attn"].mean == pytest.approx(-0.05)
    text = (write_atlas([root], tmp_path / "atlas") / "atlas.md").read_text()
    assert "Accuracy, for the studies that score it" in text
    assert "-5.0 [-5.0, -5.0]" not in text  # constant differences: no interval, no test
    assert "| -5.0 unresolved |" in text
    assert "(descriptive)" not in text


def test_the_atlas_marks_accuracy_descriptive_where_a_studys_verdicts_are_on_loss(tmp_path):
    root = _study(tmp_path, SCORED, verdicts_on="loss")
    _score_by_choice(root)
    assert build_atlas([root]).cells[0].accuracy_descriptive
    text = (write_atlas([root], tmp_path / "atlas") / "atlas.md").read_text()
    assert "` (descriptive) | " in text  # the task of the row
    assert "Descriptive: a study whose verdicts are on eval loss" in text


def test_planned_comparisons_refuse_unknown_names_and_keep_tosts_where_asked():
    from loraplace.stats.verdicts import planned_comparisons

    values = _losses(DESIGN)
    with pytest.raises(ValueError, match="unknown"):
        planned_comparisons(values, [[("attn", "nope")]], MARGIN)
    found = planned_comparisons(
        values, [[("attn", "all")], [("mlp", "all")]], MARGIN, equivalence=[False, True]
    )
    assert found[0].tost_p is None and found[1].tost_p is not None
    assert [c.tost_family_size for c in found] == [1, 1]
    assert [c.family_size for c in found] == [2, 2]


def test_verdicts_on_loss_keeps_the_accuracy_tests_but_the_recommendation_reads_loss(tmp_path):
    # An analysis plan may put a task scored by accuracy's verdicts on eval loss (the atlas's
    # task 2): the recommendation then reads the loss family and the accuracy family is labelled.
    root = _study(tmp_path, SCORED, accuracy_margin=1.5, verdicts_on="loss")
    _score_by_choice(root)
    study = load_study(root)
    a = build_report(study).analysis
    assert len(a.planned_accuracy) == len(PLAN)
    line = _words(recommendation(study, a))
    assert line.startswith("Recommendation (the planned comparisons with all, on eval loss)")
    md = (write_report(root) / "report.md").read_text()
    assert "## Planned comparisons: accuracy (descriptive: the verdicts are on eval loss)" in md
    assert "Descriptive: this study's verdicts are on eval loss" in md
    auto = tmp_path / "auto"
    root = _study(auto, SCORED, accuracy_margin=1.5)
    _score_by_choice(root)
    study = load_study(root)
    assert "on accuracy)" in _words(recommendation(study, build_report(study).analysis))


def test_verdicts_on_names_a_measure(tmp_path):
    with pytest.raises(ConfigError, match="report.verdicts_on"):
        _study(tmp_path, verdicts_on="perplexity")


def test_the_capacity_caution_names_the_planned_comparisons_at_an_equal_budget(tmp_path):
    md = (write_report(_study(tmp_path)) / "report.md").read_text()
    caution = next(line for line in md.splitlines() if "confounded with capacity" in line)
    # attn (800) against all-r3 (790), mlp (1,200) against all-r5 (1,210): planned, equal
    # budget; attn against mlp is planned too, but 800 against 1,200 is no equal budget.
    assert caution.endswith(
        "The planned comparisons also test `attn` with `all-r3` (800 vs 790, +1.3%); `mlp` with "
        "`all-r5` (1,200 vs 1,210, -0.8%) at an equal budget."
    )
    assert "match_params" not in caution
