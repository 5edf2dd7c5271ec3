"""The study report on hand-made study directories whose answers are worked out independently.

Studies are written the way a study writes them (``study.yaml`` from a validated config,
``result.json`` and ``eval_examples.jsonl`` through the store); expected statistics come from
scipy or a hand computation in the test, never from the report's own output.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ATTN, MAIN, MLP, PNG_SIGNATURE, example_rows, make_study, placement_of
from scipy.stats import binomtest, ttest_1samp, ttest_ind, ttest_rel
from scipy.stats import t as student_t

from loraplace import store
from loraplace.cli.main import main
from loraplace.errors import LoraplaceError
from loraplace.report.analysis import REQUIRED_COLUMNS, SUMMARY_COLUMNS
from loraplace.report.build import build_report, load_study, summarize, write_report
from loraplace.report.placement_map import role_category, role_label
from loraplace.report.render import plain_text, tex_escape
from loraplace.stats.measures import bootstrap_paired_examples

DIRECTIONAL = re.compile(r"\b(better|worse|lower|higher|faster|slower|significant\w*)\b", re.I)


REF = [1.0, 1.1, 1.2]
ATT = [1.02, 1.13, 1.21]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study") / "out"
    return make_study(root, MAIN, extra_dirs=("last_half--seed2",), examples=True)


@pytest.fixture(scope="module")
def report_dir(study_dir) -> Path:
    return write_report(study_dir)


def _rows(root: Path) -> dict[str, dict]:
    return {r["strategy"]: r for r in summarize(root)}


def test_summary_numbers(study_dir):
    rows = _rows(study_dir)
    assert list(rows) == list(MAIN)
    b, a, f, h = rows.values()
    assert (b["n"], a["n"], f["n"], h["n"], h["n_failed"]) == (3, 3, 3, 1, 1)
    assert b["eval_loss_mean"] == pytest.approx(1.1) and b["eval_loss_std"] == pytest.approx(0.1)
    assert b["eval_loss_ci95"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert h["eval_loss_std"] is None and h["eval_loss_ci95"] is None
    assert b["perplexity"] == pytest.approx(math.exp(1.1))
    assert b["accuracy_mean"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert (a["param_reduction_pct"], f["param_reduction_pct"]) == (
        pytest.approx(60.0),
        pytest.approx(40.0),
    )
    # Paired by seed: differences 0.02, 0.03, 0.01.
    paired = ttest_rel(ATT, REF)
    ci = paired.confidence_interval(0.95)
    assert a["delta_vs_reference"] == pytest.approx(0.02)
    assert (a["delta_ci95_low"], a["delta_ci95_high"]) == (
        pytest.approx(ci.low),
        pytest.approx(ci.high),
    )
    assert a["p_paired_vs_reference"] == pytest.approx(paired.pvalue, rel=1e-9)
    # The family: attention-only vs baseline is the only test with 3 seeds and a defined p
    # (ffn-only's differences are all +1.0: undefined; last_half has one seed), and the lowest
    # mean (last_half, one seed) has no test either. Holm over one test is the raw p.
    assert a["holm_family_size"] == 1 and a["p_holm_vs_reference"] == pytest.approx(paired.pvalue)
    # TOST at the default margin 0.01: the larger of the two one-sided p-values.
    d = np.subtract(ATT, REF)
    tost = max(
        ttest_1samp(d, -0.01, alternative="greater").pvalue,
        ttest_1samp(d, 0.01, alternative="less").pvalue,
    )
    assert a["p_tost_holm_vs_reference"] == pytest.approx(tost)
    # t = 0.02 / (0.01 / √3) = 3.46 on 2 df: p = 0.074, below 0.10 but not 0.05; TOST fails.
    assert paired.pvalue == pytest.approx(0.0742, abs=1e-4)
    assert (a["verdict"], a["direction"]) == ("suggestive", "worse")
    assert a["p_value_vs_reference"] == pytest.approx(ttest_ind(ATT, REF, equal_var=False).pvalue)
    assert f["p_paired_vs_reference"] is None and f["p_holm_vs_reference"] is None
    assert f["delta_vs_reference"] == pytest.approx(1.0) and f["verdict"] == "unresolved"
    assert (h["verdict"], h["delta_vs_reference"]) == ("exploratory", pytest.approx(-0.1))
    assert b["verdict"] == "reference" and b["p_value_vs_reference"] is None
    # Per-seed time ratios 10/5, 10/8 and 10/4: constant, so no interval.
    assert (a["speedup_vs_reference"], f["speedup_vs_reference"]) == (
        pytest.approx(2.0),
        pytest.approx(1.25),
    )
    assert a["speedup_ci95_low"] is None and a["speedup_claim"] == "unresolved"
    assert h["speedup_claim"] == "exploratory"
    # baseline (1000, 1.1) is dominated by last_half (500, 0.9); ffn (600, 2.1) by attention.
    assert [r["pareto"] for r in rows.values()] == [False, True, False, True]


def test_the_example_bootstrap_pairs_examples_by_index(study_dir, tmp_path):
    arrays = {
        name: {s: np.array([[n, ls] for _, n, ls in example_rows(runs[s][0], s)]) for s in range(3)}
        for name, (_, _, _, runs) in MAIN.items()
        if name in ("baseline", "attention-only")
    }
    direct = bootstrap_paired_examples(arrays["attention-only"], arrays["baseline"])
    a = _rows(study_dir)["attention-only"]
    assert (a["delta_boot95_low"], a["delta_boot95_high"]) == (direct.low, direct.high)
    assert a["delta_boot95_low"] < 0.02 < a["delta_boot95_high"]
    # A run that lacks example 5 leaves it out for everyone: the arrays stay paired by index.
    root = make_study(tmp_path / "s", MAIN, examples=True)
    path = store.RunKey("baseline", 1).run_dir(root) / "eval_examples.jsonl"
    store.write_eval_examples(path, example_rows(1.1, 1)[:5])
    cut = {k: {s: v[:5] for s, v in runs.items()} for k, runs in arrays.items()}
    direct = bootstrap_paired_examples(cut["attention-only"], cut["baseline"])
    a = _rows(root)["attention-only"]
    assert (a["delta_boot95_low"], a["delta_boot95_high"]) == (direct.low, direct.high)


def test_summary_csv(report_dir):
    with (report_dir / "summary.csv").open() as f:
        table = list(csv.reader(f))
    assert tuple(table[0][: len(REQUIRED_COLUMNS)]) == REQUIRED_COLUMNS
    new = {"delta_vs_reference", "delta_ci95_low", "delta_ci95_high", "p_paired_vs_reference",
           "p_holm_vs_reference", "verdict", "direction", "delta_boot95_low", "delta_boot95_high",
           "rank", "learning_rate"}  # fmt: skip
    assert new <= set(table[0]) and tuple(table[0]) == SUMMARY_COLUMNS
    assert "within_noise" not in table[0]
    rows = [dict(zip(table[0], r)) for r in table[1:]]
    assert [r["strategy"] for r in rows] == list(MAIN)
    assert float(rows[1]["delta_vs_reference"]) == pytest.approx(0.02)
    assert float(rows[1]["learning_rate"]) == 2e-4 and rows[1]["rank"] == ""
    # Constant per-seed differences: the paired p is undefined, an empty cell, never 0.
    assert rows[2]["p_paired_vs_reference"] == "" and rows[2]["p_holm_vs_reference"] == ""
    assert rows[3]["eval_loss_std"] == "" and rows[3]["p_paired_vs_reference"] == ""
    assert [r["pareto"] for r in rows] == ["False", "True", "False", "True"]
    assert not any(cell.lower() in {"nan", "none", "null"} for r in table for cell in r)


def test_two_constant_samples_give_empty_p_cells(tmp_path):
    strategies = {
        "baseline": ("all", 1000, placement_of(ATTN), [(1.0, 1.0)] * 3),
        "other": ("attn", 1000, placement_of(ATTN), [(2.0, 1.0)] * 3),
    }
    row = _rows(make_study(tmp_path / "s", strategies))["other"]
    assert row["p_value_vs_reference"] is None and row["p_paired_vs_reference"] is None
    assert row["delta_vs_reference"] == pytest.approx(1.0) and row["verdict"] == "unresolved"


def _findings(root: Path) -> list[str]:
    return [plain_text(f) for f in build_report(load_study(root)).findings]


def test_two_seeds_give_no_directional_sentence(tmp_path):
    # A large, consistent difference on two seeds: the numbers are shown, no direction is.
    strategies = {
        "baseline": ("all", 1000, placement_of(ATTN), [(1.0, 10.0), (1.1, 10.0)]),
        "mlp": ("mlp", 1000, placement_of(MLP), [(1.5, 1.0), (1.61, 1.0)]),
    }
    root = make_study(tmp_path / "s", strategies)
    row = _rows(root)["mlp"]
    assert (row["verdict"], row["direction"], row["p_paired_vs_reference"]) == (
        "exploratory",
        None,
        None,
    )
    assert row["p_value_vs_reference"] is not None  # Welch is shown as a secondary column only
    about = [f for f in _findings(root) if "mlp" in f]
    assert about and any("Exploratory" in f and "+0.5050" in f for f in about)
    assert not any(DIRECTIONAL.search(f) for f in about), about


def _study_0497(root: Path) -> tuple[Path, list[float]]:
    """Reference and three strategies over 3 seeds; ``a``'s paired p is 0.0497 on its own."""
    t = student_t.isf(0.0497 / 2, 2)
    sd = 0.01
    d_a = [t * sd / math.sqrt(3) + sd * k for k in (-1, 0, 1)]  # mean t·sd/√3, sd 0.01
    diffs = {"a": d_a, "b": [0.01, -0.005, 0.02], "c": [0.02, -0.01, 0.03]}
    strategies = {"ref": ("all", 1000, placement_of(ATTN), [(x, 1.0) for x in REF])}
    for name, d in diffs.items():
        strategies[name] = (
            "attn",
            1000,
            placement_of(ATTN),
            [(x + y, 1.0) for x, y in zip(REF, d)],
        )
    make_study(root, strategies, reference="ref")
    return root, [ttest_rel(np.add(REF, d), REF).pvalue for d in diffs.values()]


def test_p_0497_among_three_tests_is_not_supported(tmp_path):
    root, raw = _study_0497(tmp_path / "s")
    assert raw[0] == pytest.approx(0.0497, abs=1e-6)
    rows = _rows(root)
    # Holm by hand: 0.0497 is the smallest of 3, so 3 · 0.0497.
    assert rows["a"]["p_holm_vs_reference"] == pytest.approx(3 * 0.0497, abs=1e-5)
    assert rows["a"]["verdict"] == "unresolved" and rows["a"]["direction"] is None
    text = " ".join(_findings(root))
    assert (
        "Supported" not in text and "Clear" not in text and not re.search("significant", text, re.I)
    )


def test_the_family_size_printed_equals_the_tests_run(tmp_path, study_dir):
    root, _ = _study_0497(tmp_path / "s")
    for directory, tests in ((root, 3), (study_dir, 1)):
        rows = summarize(directory)
        run = sum(r["p_paired_vs_reference"] is not None for r in rows)
        assert run == tests and {r["holm_family_size"] for r in rows} == {tests}
        assert f"Holm-adjusted over the {tests} test(s)" in " ".join(_findings(directory))
    # When the lowest-mean strategy is not the reference, its tests join the family: here the
    # reference tests (a, b, c vs ref) and best-vs-others (best vs ref, a, b, c) share one.
    strategies = {"ref": ("all", 1000, placement_of(ATTN), [(x, 1.0) for x in REF])}
    for name, d in {
        "a": [0.01, 0.03, 0.02],
        "b": [0.02, 0.0, 0.03],
        "best": [-0.2, -0.21, -0.23],
    }.items():
        strategies[name] = (
            "attn",
            1000,
            placement_of(ATTN),
            [(x + y, 1.0) for x, y in zip(REF, d)],
        )
    rows = summarize(make_study(tmp_path / "t", strategies, reference="ref"))
    assert {r["holm_family_size"] for r in rows} == {5}  # {a,b,best}×ref ∪ best×{a,b}


def test_accuracy_wilson_and_mcnemar_by_hand(tmp_path):
    ref = [[1, 0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    new = [[1, 1, 1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 1]]
    as_bool = lambda runs: [[bool(x) for x in r] for r in runs]  # noqa: E731
    strategies = {
        "baseline": (
            "all",
            1000,
            placement_of(ATTN),
            [(x, 1.0, c) for x, c in zip(REF, as_bool(ref))],
        ),
        "new": ("attn", 1000, placement_of(ATTN), [(x, 1.0, c) for x, c in zip(ATT, as_bool(new))]),
    }
    report = build_report(load_study(make_study(tmp_path / "s", strategies)))
    t = report.analysis.accuracy["new"]
    k = sum(map(sum, new))
    wilson = binomtest(k, 24).proportion_ci(0.95, method="wilson")
    assert (t.correct, t.attempted) == (k, 24)
    assert (t.low, t.high) == (pytest.approx(wilson.low), pytest.approx(wilson.high))
    b = sum(x and not y for rn, rr in zip(new, ref) for x, y in zip(rn, rr))
    c = sum(y and not x for rn, rr in zip(new, ref) for x, y in zip(rn, rr))
    assert (t.b, t.c, t.n) == (b, c, 3)
    assert t.p == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    # The verdict is the paired t over the seeds' accuracies (6/8, 6/8, 7/8 against 2/8 each).
    accuracy = lambda runs: [sum(r) / len(r) for r in runs]  # noqa: E731
    paired = ttest_rel(accuracy(new), accuracy(ref))
    assert t.diff == pytest.approx((0.5 + 0.5 + 0.625) / 3)
    assert t.p_t == pytest.approx(paired.pvalue)
    assert t.family_size == 1 and t.p_holm == t.p_t
    assert (t.verdict, t.direction) == ("clear", "better")  # p_t = 0.0059
    assert any("higher accuracy" in plain_text(f) for f in report.findings)


def test_accuracy_with_two_seeds_makes_no_test_and_says_so(tmp_path):
    from loraplace.report.tables import accuracy_table

    ref, new = [[1, 0, 0, 1], [0, 0, 1, 1]], [[1, 1, 1, 1], [1, 1, 1, 0]]
    as_bool = lambda runs: [[bool(x) for x in r] for r in runs]  # noqa: E731
    strategies = {
        "baseline": ("all", 1000, placement_of(ATTN), list(zip(REF[:2], [1.0, 1.0], as_bool(ref)))),
        "new": ("attn", 1000, placement_of(ATTN), list(zip(ATT[:2], [1.0, 1.0], as_bool(new)))),
    }
    report = build_report(load_study(make_study(tmp_path / "s", strategies)))
    assert report.analysis.accuracy["new"].verdict == "exploratory"
    text = " ".join(plain_text(f) for f in report.findings)
    note = accuracy_table(report.study, report.analysis).note
    for words in (text, note):
        assert "nothing tested yet" in words.lower() and "Holm over 0" not in words


def test_identical_runs_make_no_test_and_are_not_called_exploratory(tmp_path):
    # One placement under two names: the same loss in every seed, so the paired differences
    # have no spread and the t-test is undefined, with 3 seeds: unresolved, not exploratory.
    strategies = {
        "baseline": ("all", 1000, placement_of(ATTN), [(x, 1.0) for x in REF]),
        "twin": ("all", 1000, placement_of(ATTN), [(x, 1.0) for x in REF]),
    }
    root = make_study(tmp_path / "s", strategies)
    assert _rows(root)["twin"]["verdict"] == "unresolved"
    text = " ".join(_findings(root))
    assert "differ by the same amount in every seed, so the paired t-test is undefined" in text
    assert "has the 3 paired seeds a test needs" not in text


def test_speedups_need_an_interval_above_one(tmp_path):
    ref_t, fast_t, noisy_t = [10.0, 11.0, 12.0], [5.0, 5.4, 6.1], [5.0, 14.0, 9.0]
    strategies = {
        "baseline": ("all", 1000, placement_of(ATTN), [(x, s) for x, s in zip(REF, ref_t)]),
        "fast": ("attn", 1000, placement_of(ATTN), [(x, s) for x, s in zip(ATT, fast_t)]),
        "noisy": ("mlp", 1000, placement_of(MLP), [(x + 0.1, s) for x, s in zip(ATT, noisy_t)]),
    }
    root = make_study(tmp_path / "s", strategies)
    rows = _rows(root)
    logs = np.log(np.divide(ref_t, fast_t))
    half = student_t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    fast = rows["fast"]
    assert fast["speedup_vs_reference"] == pytest.approx(math.exp(logs.mean()))
    assert (fast["speedup_ci95_low"], fast["speedup_ci95_high"]) == (
        pytest.approx(math.exp(logs.mean() - half)),
        pytest.approx(math.exp(logs.mean() + half)),
    )
    assert fast["speedup_claim"] == "faster" and rows["noisy"]["speedup_claim"] == "unresolved"
    speed = next(f for f in _findings(root) if f.startswith("Training speed"))
    faster = speed.split("Faster:")[1].split(". ")[0]
    assert "fast" in faster and "noisy" not in faster
    assert "Wall time on a shared machine varies" in speed


def test_every_output_is_written(report_dir):
    import matplotlib.image as mpimg

    for name in ("summary.csv", "summary.tex", "report.md", "report.html"):
        assert (report_dir / name).stat().st_size > 0, name
    for name in ("pareto.png", "curves.png", "placement.png"):
        assert (report_dir / name).read_bytes()[:8] == PNG_SIGNATURE
        image = mpimg.imread(report_dir / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # No sweep, no checkpoints: no budget or eval-curve figure.
    assert (
        not (report_dir / "budget.png").exists() and not (report_dir / "eval_curves.png").exists()
    )


def test_html_is_self_contained(report_dir):
    page = (report_dir / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert "<link" not in page and "<style>" in page
    assert "nan_loss" in page and "last_half--seed2" in page  # the failed and the unfinished run


def test_markdown_report(report_dir):
    md = (report_dir / "report.md").read_text()
    for png in ("pareto.png", "curves.png", "placement.png"):
        assert f"]({png})" in md
    failed = md.split("## Failed and unfinished runs")[1].split("##")[0]
    assert r"`last_half` seed 1: nan\_loss" in failed and "last_half--seed2" in failed
    assert "tiny-llama" in md and "test-cpu" in md and "toy_study" in md
    assert "within noise" not in md.lower() and not re.search("significant", md, re.I)
    assert "Suggestive only" in md and "More seeds are needed" in md
    assert "Unresolved" in md and "Exploratory" in md and "`last_half` vs `baseline`" in md
    assert "placement is confounded with capacity" in md and "match_params: baseline" in md
    assert "one learning rate" in md and "LoRA scaling convention: standard" in md
    assert "Pareto front of trainable parameters vs mean eval loss" in md
    assert "`attention-only`, `last_half`" in md


def test_latex_table(report_dir):
    tex = (report_dir / "summary.tex").read_text()
    assert r"\documentclass" not in tex and r"\begin{document}" not in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    assert body.count(r"\\") == 4
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"last\_half" in tex and "last_half" not in tex.replace(r"last\_half", "")
    assert not re.search(r"(?<!\\)%", tex.split("\n", 1)[1])  # only the header comment has a bare %
    assert "1.1000 $\\pm$ 0.2484" in tex  # baseline: mean ± t(0.975, 2) * 0.1 / sqrt(3)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
@pytest.mark.parametrize("hostile", [False, True])
def test_latex_compiles(report_dir, tmp_path, hostile):
    if hostile:
        strategies = {
            "baseline": ("all", 1000, placement_of(ATTN), [(x, 1.0) for x in REF]),
            HOSTILE: ("attn", 400, placement_of(ATTN), [(x, 1.0) for x in ATT]),
        }
        report_dir = write_report(make_study(tmp_path / "s", strategies))
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
        f"\\begin{{document}}\n\\input{{{(report_dir / 'summary.tex').as_posix()}}}\n"
        "\\end{document}\n"
    )
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


HOSTILE = "x|y`z*_<b>&$%#{}\\~^\nzq9"


def test_a_hostile_strategy_name_is_shown_as_written(tmp_path):
    strategies = {
        "baseline": ("all", 1000, placement_of(ATTN), [(x, 1.0) for x in REF]),
        HOSTILE: ("attn", 400, placement_of(ATTN), [(x, 1.0) for x in ATT]),
    }
    out = write_report(make_study(tmp_path / "s", strategies))
    shown = HOSTILE.replace("\n", " ")  # a code span is one line
    md = (out / "report.md").read_text()
    markdown_it = pytest.importorskip("markdown_it")
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(md)
    inline = [c for t in tokens if t.type == "inline" for c in t.children or []]
    # Every occurrence is one whole code span (a split cell or a broken span would cut it), and
    # nothing in the report became raw HTML.
    body = md.split("## Study config")[0]  # the config is shown verbatim in a fenced block
    assert body.count("zq9") == sum(
        c.content.count("zq9") for c in inline if c.type == "code_inline"
    )
    assert shown in [c.content for c in inline if c.type == "code_inline"]
    assert not any(c.type == "html_inline" for c in inline)
    page = (out / "report.html").read_text()
    cells = _Cells()
    cells.feed(page)
    assert shown in cells.cells and "x|y`z*_&lt;b&gt;&amp;$%#{}\\~^" in page
    tex = (out / "summary.tex").read_text()
    row = next(line for line in tex.splitlines() if "zq9" in line and r"\texttt" in line)
    assert r"\texttt{" + tex_escape(shown) + "}" in row
    assert row.count(" & ") == 11  # 12 columns: the name adds no column separator
    bare = row.replace("$\\pm$", "").replace("$\\times$", "").replace("$^\\dagger$", "")
    assert not re.search(r"(?<!\\)[%#$_&]", bare.replace(" & ", " "))


def test_a_non_study_directory_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(LoraplaceError, match="not a study directory"):
        write_report(tmp_path)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_report_errors_are_one_line(tmp_path, capsys, content, message):
    target = tmp_path / "missing"
    if content is not None:
        target = tmp_path / "s"
        target.mkdir()
        (target / "study.yaml").write_text(content)
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (target / "report").exists()


def test_unreadable_runs_are_listed_and_the_report_carries_on(tmp_path):
    root = make_study(tmp_path / "s", MAIN)
    bad = store.RunKey("ffn-only", 2).run_dir(root) / "result.json"
    bad.write_text(bad.read_text().replace('"placement": {', '"placement": "oops", "x": {'))
    (store.RunKey("baseline", 2).run_dir(root) / "result.json").write_text("{not json")
    report = build_report(load_study(root))
    rows = {r["strategy"]: r for r in report.analysis.rows}
    assert rows["ffn-only"]["n"] == 2 and rows["baseline"]["n"] == 2
    broken = report.study.incomplete
    assert len(broken) == 2 and all("no readable, well-typed result.json" in b for b in broken)
    assert any("2 run directory(ies) have no readable result" in f for f in report.findings)


def test_only_the_listed_seeds_are_reported(tmp_path):
    # A study grown to 3 seeds and then reported on 2: seed 2 stays on disk, unreported.
    root = make_study(tmp_path / "s", MAIN)
    cfg = yaml.safe_load((root / "study.yaml").read_text())
    cfg["training"]["seeds"] = [0, 1]
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    rows = _rows(root)
    assert rows["baseline"]["n"] == 2
    assert rows["baseline"]["eval_loss_mean"] == pytest.approx((1.0 + 1.1) / 2)
    assert rows["attention-only"]["verdict"] == "exploratory"
    assert (root / "runs" / "baseline--seed2" / "result.json").is_file()


def test_warnings_the_report_prints_itself(tmp_path):
    strategies = {n: MAIN[n] for n in ("baseline", "attention-only")}
    root = make_study(tmp_path / "s", strategies, lora={"scaling": "rslora", "alpha": 32})
    path = store.RunKey("baseline", 0).run_dir(root) / "result.json"
    rec = store.read_result(path.parent)
    rec["dataset"] = {"train_tokens": {"examples": 5, "dropped": 3}, "eval_tokens": {"dropped": 1}}
    store.write_result(path.parent, rec)
    text = " ".join(_findings(root))
    assert "`attention-only` 400 trainable parameters vs 1,000 (-60%)" in text
    assert "rslora (alpha / sqrt(r), alpha = 32" in text
    assert "Caution: every condition trained at one learning rate (0.0002" in text
    assert (
        "4 example(s) were dropped for exceeding `max_length` = 384 tokens (train 3, eval 1)"
        in text
    )


@pytest.mark.parametrize(
    "roles, available, expected",
    [
        ([], None, "none"),
        (["q", "k", "v", "o"], None, "attn"),
        (["q", "v"], None, "attn-partial"),
        (["gate", "up", "down"], None, "mlp"),
        (["up", "down"], ("q", "k", "v", "o", "up", "down"), "mlp"),  # GPT-2 style MLP
        (["up", "down"], None, "mlp-partial"),
        (["q", "k", "v", "o", "gate", "up", "down"], None, "all"),
        (["q", "v", "down"], None, "mixed"),
    ],
)
def test_placement_categories(roles, available, expected):
    args = (roles,) if available is None else (roles, available)
    assert role_category(*args) == expected


def test_placement_cell_text():
    assert role_label(["v", "q", "k", "o", "down", "gate", "up"]) == "qkvo\ngud"
    assert role_label(["up"]) == "u"


def test_a_strategy_whose_size_differs_by_seed_shows_the_range_and_counts_the_mean(tmp_path):
    # One placement per seed (a per-seed random draw, say): each seed's count is its own.
    root = make_study(tmp_path / "out", {k: MAIN[k] for k in ("baseline", "attention-only")})
    for seed, params in enumerate((400, 392, 380)):
        run = store.RunKey("attention-only", seed).run_dir(root)
        result = json.loads((run / "result.json").read_text())
        store.write_result(
            run, {**result, "trainable_params": params, "trainable_pct": params / 1e3}
        )
    rows = _rows(root)
    assert rows["attention-only"]["trainable_params"] == round((400 + 392 + 380) / 3)
    assert rows["attention-only"]["param_reduction_pct"] == pytest.approx(100 * (1 - 391 / 1000))
    assert rows["attention-only"]["trainable_pct"] == pytest.approx((0.400 + 0.392 + 0.380) / 3)
    assert rows["baseline"]["trainable_params"] == 1000
    summary = (write_report(root) / "report.md").read_text()
    summary = summary[summary.index("## Summary") :]
    line = next(x for x in summary.splitlines() if x.startswith("| `attention-only`"))
    assert "| 380–400 |" in line
    assert "their mean counts for % of model, the reduction" in summary


def test_placements_per_seed_are_compared_pairwise(tmp_path):
    # Three seeds, three placements of 'attention-only' (as with probe_per_seed); grad-style
    # scores for seeds 0 and 1 only, in the same order.
    root = make_study(tmp_path / "out", {k: MAIN[k] for k in ("baseline", "attention-only")})
    placements = [
        {"0": {"q": 8, "k": 8}},
        {"0": {"q": 8}, "1": {"k": 8}},
        {"0": {"q": 8, "k": 8}, "1": {"k": 8}},
    ]
    for seed, placement in enumerate(placements):
        run = store.RunKey("attention-only", seed).run_dir(root)
        result = json.loads((run / "result.json").read_text())
        store.write_result(run, {**result, "placement": placement})
    for seed in (0, 1):
        stem = root / store.AUTO_DIR / store.auto_stem("attention-only", None, seed)
        stem.mkdir(parents=True)
        lines = ["layer,role,module,score,chosen,rank"]
        lines += [f"{u // 2},{'qk'[u % 2]},m{u},{u + 1},0," for u in range(4)]
        (stem / "importance.csv").write_text("\n".join(lines) + "\n")
    report = (write_report(root) / "report.md").read_text()
    section = report[report.index("## Placements per seed") :].split("\n\n")[1]
    rows = [x for x in section.splitlines() if x.startswith("| `")]
    # Jaccard: seeds 0-1 share 1 of 3 units, 0-2 2 of 3, 1-2 2 of 3; the scores of seeds 0
    # and 1 rank the units alike (tau-b 1); (0, q) is in every placement, 3 units in some.
    # 'baseline' has one placement for every seed: no row.
    assert rows == [
        "| `attention-only` | 2 (seed 0), 2 (seed 1), 3 (seed 2) | 0.33–0.67 | 1.00 | 1 | 3 |"
    ]


def test_one_placement_for_every_seed_has_no_per_seed_table(report_dir):
    assert "Placements per seed" not in (report_dir / "report.md").read_text()


def test_the_all_pairs_table_gives_each_pairs_holm_adjusted_equivalence_test(tmp_path):
    # Recomputed here: TOST within the default ±0.01 nats as two one-sided t-tests on the
    # per-seed differences, Holm-adjusted over the pairs, as docs/STATISTICS.md defines it.
    from helpers import holm_by_definition

    from loraplace.report.render import p_text

    losses = {
        "baseline": REF,
        "near": [1.001, 1.0995, 1.2008],  # within ±0.002 of the baseline in every seed
        "far": [1.02, 1.13, 1.21],
    }
    strategies = {
        name: (spec, 1000, placement_of(ATTN), [(x, 5.0) for x in losses[name]])
        for name, spec in (("baseline", "all"), ("near", "attn"), ("far", "mlp"))
    }
    root = make_study(tmp_path / "out", strategies)
    section = (write_report(root) / "report.md").read_text().split("## All pairs\n\n")[1]
    header, _, *rows = section.split("\n\n")[0].splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = [dict(zip(columns, (c.strip() for c in r.strip("|").split("|")))) for r in rows]
    pairs = [(c["A"].strip("`"), c["B"].strip("`")) for c in cells]
    margin = 0.01
    tost = []
    for a, b in pairs:
        d = np.subtract(losses[a], losses[b])
        tost.append(
            max(
                ttest_1samp(d, -margin, alternative="greater").pvalue,
                ttest_1samp(d, margin, alternative="less").pvalue,
            )
        )
    expected = holm_by_definition(tost)
    assert len(cells) == 3
    for cell, p in zip(cells, expected):
        assert cell["TOST Holm p"] == p_text(p)
    verdicts = {pair: cell["Verdict"] for pair, cell in zip(pairs, cells)}
    near = ("baseline", "near") if ("baseline", "near") in verdicts else ("near", "baseline")
    assert verdicts[near] == "equivalent"
    assert "TOST Holm p: equivalence within ±0.01 nats" in section


def _set_provenance(root: Path, name: str, seed: int, **fields) -> None:
    run = store.RunKey(name, seed).run_dir(root)
    rec = store.read_result(run)
    for key, value in fields.items():
        rec[key] = {**rec.get(key, {}), **value} if isinstance(value, dict) else value
    store.write_result(run, rec)


def test_runs_paired_across_machines_give_a_caution_and_status_lists_the_machines(tmp_path):
    from loraplace.studies.status import study_status

    strategies = {n: MAIN[n] for n in ("baseline", "attention-only", "ffn-only")}
    root = make_study(tmp_path / "s", strategies)
    for name in strategies:
        for seed in range(3):
            host = "Linux-b" if name == "ffn-only" else "Linux-a"
            _set_provenance(root, name, seed, hardware={"platform": host})
    # A record that states fp32 matches one that states no precision (the default).
    _set_provenance(root, "baseline", 0, precision="fp32")
    report = (write_report(root) / "report.md").read_text()
    assert (
        "Caution: 2 comparisons pair runs made on different machines (paired by seed): "
        "`ffn-only` vs `baseline`; `attention-only` vs `ffn-only`. Each run's record states its "
        "machine, torch, transformers and peft versions and precision"
    ) in report
    assert (
        "Machines of the finished final runs: `Linux-a / test-cpu` 6 runs (`baseline`, "
        "`attention-only`); `Linux-b / test-cpu` 3 runs (`ffn-only`)."
    ) in report
    assert "machines: Linux-a / test-cpu (6 runs); Linux-b / test-cpu (3 runs)" in study_status(
        root
    )

    # Versions and precision count too, and only in the seeds whose runs differ.
    _set_provenance(root, "ffn-only", 1, hardware={"platform": "Linux-a"})
    _set_provenance(root, "ffn-only", 2, hardware={"platform": "Linux-a"})
    _set_provenance(root, "attention-only", 2, versions={"torch": "2.y"}, precision="bf16")
    text = " ".join(_findings(root))
    assert (
        "Caution: 3 comparisons pair runs made on different machines, with different torch "
        "versions or at different precisions (paired by seed): `attention-only` vs `baseline` "
        "(torch, precision; seed 2 of the 3 paired); `ffn-only` vs `baseline` (machine; seed 0 "
        "of the 3 paired); `attention-only` vs `ffn-only` (machine, torch, precision; seeds 0 "
        "and 2 of the 3 paired)."
    ) in text
    assert "Precisions of the finished final runs: `fp32` 8 runs" in text
    assert "Machines of the finished final runs: `Linux-a / test-cpu` 8 runs" in text


def test_runs_on_one_machine_give_no_machine_caution(report_dir):
    assert "pair runs made" not in (report_dir / "report.md").read_text()
