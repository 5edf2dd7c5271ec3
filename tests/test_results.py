"""The committed results regenerate: `loraplace report` on each raw study directory under
docs/results/ writes the committed summary.csv again, cell for cell."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loraplace.report import write_report
from loraplace.store import export_study

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/study.yaml"))


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_the_committed_summary_regenerates_from_the_raw_files(study, tmp_path):
    copy = tmp_path / study.name
    export_study(study, copy)
    shutil.rmtree(copy / "report", ignore_errors=True)
    write_report(copy)
    committed = (study / "report" / "summary.csv").read_text()
    assert (copy / "report" / "summary.csv").read_text() == committed


def test_export_copies_records_not_weights_and_the_report_regenerates(tmp_path):
    import json

    from loraplace import store

    src = tmp_path / "src"
    key = store.RunKey("a", 0)
    store.write_result(
        key.run_dir(src),
        {
            "name": "a",
            "seed": 0,
            "status": "finished",
            "eval_loss": 1.0,
            "spec": "all",
            "trainable_params": 10,
        },
    )
    (key.run_dir(src) / "adapter").mkdir()
    (key.run_dir(src) / "adapter" / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (src / "study.yaml").write_text("name: s\nstrategies: {a: all}\n")
    (src / ".lock").write_text("{}")
    running = store.RunKey("a", 1).run_dir(src)
    running.mkdir(parents=True)
    (running / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    count = export_study(src, tmp_path / "dst")
    assert count == 2
    assert (
        json.loads((tmp_path / "dst" / "runs" / "a--seed0" / "result.json").read_text())[
            "eval_loss"
        ]
        == 1.0
    )
    assert not (tmp_path / "dst" / "runs" / "a--seed0" / "adapter").exists()
    assert not (tmp_path / "dst" / ".lock").exists()
    assert not (tmp_path / "dst" / "runs" / "a--seed1").exists()  # in progress: not a record
