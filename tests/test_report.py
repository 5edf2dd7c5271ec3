"""The study report on hand-made study directories whose answers are worked out by hand."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from scipy.stats import t as student_t

from loraplace.figures import role_category, role_label
from loraplace.report import findings, load_study, summarize, summarize_study, write_report

ATTN = {"q": 8, "k": 8, "v": 8, "o": 8}
MLP = {"gate": 8, "up": 8, "down": 8}
LAYERS = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _placement(roles: dict[str, int], layers: range = range(LAYERS)) -> dict[str, dict[str, int]]:
    return {str(i): dict(roles) for i in layers}


def _record(name, spec, seed, params, placement, loss, time_s, accuracy=None):
    failed = loss is None
    return {
        "name": name,
        "spec": spec,
        "seed": seed,
        "ranks": {spec.split("@")[0]: 8},
        "targets": [],
        "placement": placement,
        "num_layers": LAYERS,
        "status": "failed" if failed else "finished",
        "error": "nan_loss" if failed else None,
        "trainable_params": params,
        "total_params": 100_000 + params,
        "trainable_pct": 100.0 * params / (100_000 + params),
        "eval_loss": loss,
        "perplexity": None if failed else math.exp(loss),
        "base_eval_loss": 2.5,
        "eval_tokens": 1000,
        "accuracy": accuracy,
        "base_accuracy": 0.1,
        "accuracy_examples": 4,
        "train_time_s": time_s,
        "train_tokens": 4000,
        "tokens_per_s": 4000 / time_s,
        "steps": 4,
        "peak_memory_mb": 500.0 + seed,
        "model": {"id": "tiny-llama", "source": "test"},
        "dataset": {"name": "toy", "train": 8, "eval": 4},
        "versions": {
            "torch": "2.x",
            "transformers": "5.x",
            "peft": "0.x",
            "loraplace": "0.1.0",
            "python": "3.11",
        },
        "hardware": {"device": "cpu", "name": "test-cpu", "cpus": 2},
        "config": {},
        "started_at": f"2025-01-01T00:0{seed}:00",
        "finished_at": f"2025-01-01T00:0{seed}:30",
    }


def make_study(
    root: Path, strategies: dict, reference: str = "baseline", extra_dirs: tuple = ()
) -> Path:
    """``strategies``: name -> (spec, trainable params, placement, [(loss or None, time), ...])."""
    cfg = {
        "name": "toy_study",
        "model": "tiny",
        "training": {"steps": 4, "seeds": [0, 1, 2]},
        "strategies": {n: s[0] for n, s in strategies.items()},
        "reference": reference,
        "match_params": None,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name, (spec, params, placement, runs) in strategies.items():
        for seed, (loss, time_s, *acc) in enumerate(runs):
            run = root / "runs" / f"{name}--seed{seed}"
            run.mkdir(parents=True)
            rec = _record(name, spec, seed, params, placement, loss, time_s, *(acc or [None]))
            (run / "result.json").write_text(json.dumps(rec))
            curve = [
                {
                    "step": s,
                    "loss": 3.0 - 0.3 * s + 0.05 * seed,
                    "learning_rate": 1e-4,
                    "tokens": 1000 * s,
                    "time_s": float(s),
                }
                for s in range(1, 5)
            ]
            (run / "metrics.jsonl").write_text(
                "\n".join(json.dumps(c) for c in curve) + '\n{"step": 5, "lo'
            )
    for d in extra_dirs:  # a run still in progress: metrics but no result.json
        (root / "runs" / d).mkdir(parents=True)
        (root / "runs" / d / "metrics.jsonl").write_text(
            json.dumps({"step": 1, "loss": 3.0}) + "\n"
        )
    return root


MAIN = {
    "baseline": (
        "all",
        1000,
        _placement({**ATTN, **MLP}),
        [(1.0, 10.0, 0.5), (1.1, 10.0, 0.25), (1.2, 10.0, 0.5)],
    ),
    "attention-only": ("attn", 400, _placement(ATTN), [(1.02, 5.0), (1.12, 5.0), (1.22, 5.0)]),
    "ffn-only": ("mlp", 600, _placement(MLP), [(2.0, 8.0), (2.1, 8.0), (2.2, 8.0)]),
    "last_half": (
        "all@last:2",
        500,
        _placement({**ATTN, **MLP}, range(2, 4)),
        [(0.9, 4.0), (None, 4.0)],
    ),
}


def _welch(a: list[float], b: list[float]) -> float:
    va, vb = (sum((x - sum(s) / len(s)) ** 2 for x in s) / (len(s) - 1) / len(s) for s in (a, b))
    t = (sum(a) / len(a) - sum(b) / len(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * student_t.sf(abs(t), df)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    return make_study(
        tmp_path_factory.mktemp("study") / "out", MAIN, extra_dirs=("last_half--seed2",)
    )


@pytest.fixture(scope="module")
def report_dir(study_dir) -> Path:
    return write_report(study_dir)


def test_summary_numbers(study_dir):
    rows = {r["strategy"]: r for r in summarize(study_dir)}
    assert list(rows) == ["baseline", "attention-only", "ffn-only", "last_half"]
    b, a, f, h = rows["baseline"], rows["attention-only"], rows["ffn-only"], rows["last_half"]
    assert (b["n"], a["n"], f["n"], h["n"]) == (3, 3, 3, 1)
    assert (b["n_failed"], h["n_failed"]) == (0, 1)
    assert b["eval_loss_mean"] == pytest.approx(1.1)
    assert b["eval_loss_std"] == pytest.approx(0.1)
    assert b["eval_loss_ci95"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert h["eval_loss_std"] is None and h["eval_loss_ci95"] is None
    assert b["perplexity"] == pytest.approx(math.exp(1.1))
    assert b["accuracy_mean"] == pytest.approx(0.4166667)
    assert a["param_reduction_pct"] == pytest.approx(60.0)
    assert f["param_reduction_pct"] == pytest.approx(40.0)
    assert b["param_reduction_pct"] == pytest.approx(0.0)
    assert (a["speedup_vs_reference"], f["speedup_vs_reference"], h["speedup_vs_reference"]) == (
        pytest.approx(2.0),
        pytest.approx(1.25),
        pytest.approx(2.5),
    )
    assert b["p_value_vs_reference"] is None and h["p_value_vs_reference"] is None
    assert a["p_value_vs_reference"] == pytest.approx(
        _welch([1.02, 1.12, 1.22], [1.0, 1.1, 1.2]), rel=1e-9
    )
    assert f["p_value_vs_reference"] == pytest.approx(
        _welch([2.0, 2.1, 2.2], [1.0, 1.1, 1.2]), rel=1e-9
    )
    assert (a["vs_reference"], f["vs_reference"], a["within_noise"], f["within_noise"]) == (
        "within noise",
        "worse",
        True,
        False,
    )
    # baseline (1000, 1.1) is dominated by last_half (500, 0.9); ffn (600, 2.1) by attention (400, 1.12).
    assert [r["pareto"] for r in rows.values()] == [False, True, False, True]


def test_summary_csv(report_dir):
    with (report_dir / "summary.csv").open() as f:
        table = list(csv.reader(f))
    required = [
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
    ]
    assert table[0][: len(required)] == required
    rows = [dict(zip(table[0], r)) for r in table[1:]]
    assert [r["strategy"] for r in rows] == ["baseline", "attention-only", "ffn-only", "last_half"]
    assert float(rows[1]["eval_loss_mean"]) == pytest.approx(1.12)
    assert int(rows[1]["trainable_params"]) == 400
    assert rows[0]["p_value_vs_reference"] == "" and rows[3]["p_value_vs_reference"] == ""
    assert rows[3]["eval_loss_std"] == "" and rows[3]["eval_loss_ci95"] == ""
    assert [r["pareto"] for r in rows] == ["False", "True", "False", "True"]
    assert not any(cell.lower() in {"nan", "none", "null"} for r in table for cell in r)


def test_every_output_is_written(report_dir):
    import matplotlib.image as mpimg

    names = [
        "summary.csv",
        "summary.tex",
        "report.md",
        "report.html",
        "pareto.png",
        "curves.png",
        "placement.png",
    ]
    for name in names:
        assert (report_dir / name).stat().st_size > 0, name
    for name in ("pareto.png", "curves.png", "placement.png"):
        assert (report_dir / name).read_bytes()[:8] == PNG_SIGNATURE
        image = mpimg.imread(report_dir / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


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
    assert "`last_half` seed 1: nan_loss" in failed and "last_half--seed2" in failed
    assert "tiny-llama" in md and "test-cpu" in md and "toy_study" in md
    assert "Within noise of the reference: `attention-only`" in md
    assert "Significantly worse (higher eval loss) than the reference: `ffn-only`" in md
    assert "Significantly better" not in md
    assert "Unequal parameter counts" in md and "match_params: baseline" in md
    assert (
        "or `match_params: attention-only` (at the smallest strategy's count" in md
    )  # 400 of 1000
    assert "no statistical claim is made for: `last_half`" in md
    assert (
        "Pareto front of trainable parameters vs mean eval loss: `attention-only`, `last_half`"
        in md
    )


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
def test_latex_compiles(report_dir, tmp_path):
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{amsmath}\n"
        f"\\begin{{document}}\n\\input{{{(report_dir / 'summary.tex').as_posix()}}}\n\\end{{document}}\n"
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


def test_single_seed_study(tmp_path):
    one = {n: (s, p, pl, runs[:1]) for n, (s, p, pl, runs) in MAIN.items()}
    out = write_report(make_study(tmp_path / "single", one))
    rows = summarize(tmp_path / "single")
    assert all(r["p_value_vs_reference"] is None and r["eval_loss_ci95"] is None for r in rows)
    md = (out / "report.md").read_text()
    assert "Single seed: no statistical claim possible" in md
    assert "Within noise" not in md and "Significantly" not in md


def test_only_the_listed_seeds_are_reported(tmp_path):
    # A study grown to 3 seeds and then reported on 2 (study.yaml lists [0, 1]): seed 2 stays
    # on disk but is not part of the summary, as in results.csv.
    root = make_study(tmp_path / "s", MAIN)
    cfg = yaml.safe_load((root / "study.yaml").read_text())
    cfg["training"]["seeds"] = [0, 1]
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    rows = {r["strategy"]: r for r in summarize(root)}
    assert rows["baseline"]["n"] == 2
    assert rows["baseline"]["eval_loss_mean"] == pytest.approx((1.0 + 1.1) / 2)
    assert rows["attention-only"]["p_value_vs_reference"] == pytest.approx(
        _welch([1.02, 1.12], [1.0, 1.1])
    )
    assert (root / "runs" / "baseline--seed2" / "result.json").is_file()


def test_curves_average_only_the_seeds_every_strategy_finished(study_dir, tmp_path):
    # MAIN: three strategies finished seeds 0-2, `last_half` only seed 0 (seed 1 failed).
    from loraplace.report import curve_seeds

    seeds, caption = curve_seeds(load_study(study_dir))
    assert seeds == {0} and "(0)" in caption
    complete = {n: v for n, v in MAIN.items() if n != "last_half"}
    assert curve_seeds(load_study(make_study(tmp_path / "c", complete)))[0] is None


def test_cheapest_within_noise_of_best(tmp_path):
    strategies = {
        "baseline": (
            "all",
            1000,
            _placement({**ATTN, **MLP}),
            [(1.0, 1.0), (1.1, 1.0), (1.2, 1.0)],
        ),
        "attention-only": ("attn", 400, _placement(ATTN), [(1.05, 1.0), (1.15, 1.0), (1.25, 1.0)]),
        "ffn-only": ("mlp", 300, _placement(MLP), [(1.5, 1.0), (1.6, 1.0), (1.7, 1.0)]),
    }
    study = load_study(make_study(tmp_path / "s", strategies))
    notes = " ".join(findings(study, summarize_study(study)))
    assert "Lowest mean eval loss: `baseline`" in notes
    assert "cheapest strategy within noise of it is `attention-only`" in notes


def test_train_time_spread_and_match_hint(tmp_path):
    # Train times 8, 10, 12 s: mean 10.0, sample std 2.0, shown next to the mean. The reference
    # is the smallest strategy here, so the equal-budget hint names only the reference.
    strategies = {
        "baseline": ("attn", 400, _placement(ATTN), [(1.0, 8.0), (1.1, 10.0), (1.2, 12.0)]),
        "all": ("all", 1000, _placement({**ATTN, **MLP}), [(1.0, 20.0), (1.1, 20.0), (1.2, 20.0)]),
    }
    out = write_report(make_study(tmp_path / "s", strategies))
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| baseline |"))
    assert "| 10.0 ± 2.0 |" in row
    assert "| 20.0 ± 0.0 |" in next(line for line in md.splitlines() if line.startswith("| all |"))
    assert "Train time (s) ± std" in md and "10.0 $\\pm$ 2.0" in (out / "summary.tex").read_text()
    assert "rerun with `match_params: baseline`." in md and "smallest strategy's count" not in md


def test_a_cheaper_strategy_with_one_seed_is_untested_not_worse(tmp_path):
    # The best strategy has 2 seeds, a cheaper one only 1 (a study in progress): there is no
    # p-value for it, so the finding must not call it outside the noise.
    strategies = {
        "baseline": ("all", 1000, _placement({**ATTN, **MLP}), [(1.0, 1.0), (1.1, 1.0)]),
        "attention-only": ("attn", 400, _placement(ATTN), [(1.3, 1.0)]),
        "ffn-only": ("mlp", 600, _placement(MLP), [(2.0, 1.0), (2.01, 1.0)]),
    }
    study = load_study(make_study(tmp_path / "s", strategies))
    note = next(
        n for n in findings(study, summarize_study(study)) if n.startswith("Lowest mean eval loss")
    )
    assert (
        "No tested strategy with fewer trainable parameters is within noise of it" in note
    )  # ffn-only: p < 0.05
    assert "Whether the cheaper `attention-only` is within noise of it cannot be tested" in note
    assert _welch([2.0, 2.01], [1.0, 1.1]) < 0.05

    only_untested = {k: v for k, v in strategies.items() if k != "ffn-only"}
    study = load_study(make_study(tmp_path / "t", only_untested))
    note = next(
        n for n in findings(study, summarize_study(study)) if n.startswith("Lowest mean eval loss")
    )
    assert "No tested strategy" not in note and "No strategy with fewer" not in note
    assert "cannot be tested" in note


def test_reference_with_only_failed_runs(tmp_path):
    strategies = {
        "baseline": ("all", 1000, _placement({**ATTN, **MLP}), [(None, 1.0), (None, 1.0)]),
        "attention-only": ("attn", 400, _placement(ATTN), [(1.0, 1.0), (1.2, 1.0)]),
    }
    out = write_report(make_study(tmp_path / "s", strategies))
    rows = summarize(tmp_path / "s")
    assert rows[0]["n"] == 0 and rows[0]["eval_loss_mean"] is None and rows[0]["n_failed"] == 2
    assert rows[1]["p_value_vs_reference"] is None and rows[1]["pareto"] is True
    assert (out / "report.md").read_text().count("nan_loss") >= 2


@pytest.mark.parametrize(
    "roles, available, expected",
    [
        ([], None, "none"),
        (["q", "k", "v", "o"], None, "attn"),
        (["q", "v"], None, "attn-partial"),
        (["gate", "up", "down"], None, "mlp"),
        (["up", "down"], ("q", "k", "v", "o", "up", "down"), "mlp"),  # GPT-2 style MLP without gate
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
