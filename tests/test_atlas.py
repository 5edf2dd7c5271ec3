"""The atlas across studies: one row per (model, task), one column per placement, the
entries taken from each study's own comparisons, and refusal of studies that differ in more."""

from __future__ import annotations

import pytest
from helpers import MAIN, PNG_SIGNATURE, make_study

from loraplace.cli.main import main
from loraplace.errors import LoraplaceError
from loraplace.report.analysis import analyse
from loraplace.report.atlas import build_atlas, write_atlas
from loraplace.report.load import load_study


def _shifted(delta: float) -> dict:
    """MAIN with every non-reference loss moved by ``delta``: another cell's numbers."""
    return {
        name: (
            spec,
            params,
            placement,
            runs
            if name == "baseline"
            else [(None if loss is None else loss + delta, t, *rest) for loss, t, *rest in runs],
        )
        for name, (spec, params, placement, runs) in MAIN.items()
    }


def test_each_cell_shows_its_own_studys_comparisons(tmp_path):
    a = make_study(tmp_path / "a", MAIN)
    b = make_study(tmp_path / "b", _shifted(-0.05), model="other-model")
    atlas = build_atlas([a, b])
    assert [(c.model, c.task) for c in atlas.cells] == [("tiny", "gsm8k"), ("other-model", "gsm8k")]
    assert atlas.placements == [name for name in MAIN if name != "baseline"]
    for cell, root in zip(atlas.cells, (a, b)):
        own = analyse(load_study(root)).comparisons
        for placement in atlas.placements:
            assert cell.comparisons[placement] == own[placement]
    assert "attention-only − ffn-only" in atlas.pairs
    assert all(" − baseline" not in pair for pair in atlas.pairs)
    out = write_atlas([a, b], tmp_path / "atlas")
    text = (out / "atlas.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `other-model`"))
    mean = atlas.cells[1].comparisons["attention-only"].mean
    assert f"{mean:+.4f}" in row and atlas.cells[1].comparisons["attention-only"].verdict in row
    assert (out / "atlas.png").read_bytes().startswith(PNG_SIGNATURE)


def test_studies_that_differ_beyond_model_and_task_are_refused(tmp_path):
    a = make_study(tmp_path / "a", MAIN)
    b = make_study(tmp_path / "b", MAIN, model="other-model", training={"steps": 8})
    with pytest.raises(LoraplaceError, match=r"in more than model and task \(training\.steps\)"):
        build_atlas([a, b])
    same = make_study(tmp_path / "c", MAIN)
    with pytest.raises(LoraplaceError, match="both tiny on gsm8k"):
        build_atlas([a, same])


def _respecced(spec: str) -> dict:
    """MAIN with the upper half at another depth: what the placement preset resolves for a
    model of another depth."""
    return {**MAIN, "last_half": (spec, *MAIN["last_half"][1:])}


def test_strategy_strings_follow_the_model_and_the_eval_size_follows_the_task(tmp_path):
    small = make_study(tmp_path / "a", MAIN)
    deeper = make_study(tmp_path / "b", _respecced("all@last:9"), model="deeper")
    other_task = make_study(tmp_path / "c", MAIN, data={"dataset": "piqa", "eval_examples": 500})
    atlas = build_atlas([small, deeper, other_task])
    assert [(c.model, c.task) for c in atlas.cells] == [
        ("tiny", "gsm8k"),
        ("deeper", "gsm8k"),
        ("tiny", "piqa"),
    ]
    # One model's cells share its strategy strings, and one task's cells their eval size.
    same_model = make_study(tmp_path / "d", _respecced("all@last:3"), data={"dataset": "piqa"})
    with pytest.raises(LoraplaceError, match=r"have the same model but differ in last_half"):
        build_atlas([small, same_model])
    same_task = make_study(
        tmp_path / "e", MAIN, model="deeper", data={"dataset": "gsm8k", "eval_examples": 99}
    )
    with pytest.raises(LoraplaceError, match=r"have the same task but differ in eval_examples"):
        build_atlas([small, same_task])
    # Strategy names are the design: another name is another design.
    renamed = {("upper" if k == "last_half" else k): v for k, v in MAIN.items()}
    with pytest.raises(LoraplaceError, match=r"in more than model and task \(strategies\)"):
        build_atlas([small, make_study(tmp_path / "f", renamed, model="deeper")])


def test_the_command_writes_an_atlas_and_refuses_several_studies_without_it(tmp_path, capsys):
    a = make_study(tmp_path / "a", MAIN)
    b = make_study(tmp_path / "b", MAIN, model="other-model")
    assert main(["report", str(a), str(b), "--atlas", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "atlas.md").is_file()
    assert main(["report", str(a), str(b)]) == 2
    assert "add --atlas OUT" in capsys.readouterr().err
