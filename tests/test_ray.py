"""The Ray executor on a local Ray instance with a tiny model: same layout, same resume."""

from __future__ import annotations

import json
import shutil

import pytest

from loraplace.config.study import load_study_config
from loraplace.studies.runner import run_study

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def test_ray_executor_writes_the_study_layout_and_resumes(tiny_model_dir, tiny_data_file, tmp_path):
    from helpers import tiny_study

    raw = tiny_study(
        tiny_model_dir, tiny_data_file, strategies={"baseline": "all", "top": "mlp@last:1"}
    )
    raw["training"]["seeds"] = [0]
    raw["eval"] = {"accuracy_examples": 0}
    raw["ray"] = {"cpus_per_run": 1}
    config = load_study_config(raw)
    out = tmp_path / "ray-study"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert run_study(config, out, executor="ray", show_progress=False) == 0
        results = {
            p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")
        }
        assert sorted(results) == ["baseline--seed0", "top--seed0"]
        assert all(r["status"] == "finished" for r in results.values())
        assert all(
            (out / "runs" / name / "adapter" / "adapter_config.json").is_file() for name in results
        )
        # The base model was evaluated by a worker and its record kept for every other worker.
        base = json.loads((out / "base.json").read_text())
        assert all(r["base_eval_loss"] == base["eval_loss"] for r in results.values())

        # Resume: a lost run is redone, the others are kept byte for byte.
        kept = {
            n: (out / "runs" / n / "result.json").read_text() for n in results if n != "top--seed0"
        }
        shutil.rmtree(out / "runs" / "top--seed0")
        assert run_study(config, out, executor="ray", show_progress=False) == 0
        assert all(
            (out / "runs" / n / "result.json").read_text() == text for n, text in kept.items()
        )
        assert (
            json.loads((out / "runs" / "top--seed0" / "result.json").read_text())["status"]
            == "finished"
        )
    finally:
        ray.shutdown()

    # Ray and local runs of the same (strategy, seed) agree: the executor changes nothing.
    local_out = tmp_path / "local-study"
    assert run_study(config, local_out, show_progress=False) == 0
    for name in results:
        ray_loss = json.loads((out / "runs" / name / "result.json").read_text())["eval_loss"]
        local_loss = json.loads((local_out / "runs" / name / "result.json").read_text())[
            "eval_loss"
        ]
        assert ray_loss == pytest.approx(local_loss, rel=1e-5)


def test_ray_runs_a_learning_rate_grid_with_overlapping_stages(
    tiny_model_dir, tiny_data_file, tmp_path
):
    # Final runs are submitted while other selection runs may still be running; each condition
    # still gets its own chosen rate, every run exactly once.
    from helpers import tiny_sweep

    from loraplace.studies.selection import choose_learning_rates

    raw = tiny_sweep(tiny_model_dir, tiny_data_file)
    raw["ranks"] = [2]
    raw["ray"] = {"cpus_per_run": 1}
    config = load_study_config(raw)
    out = tmp_path / "ray-grid"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert run_study(config, out, executor="ray", show_progress=False) == 0
    finally:
        ray.shutdown()
    choices = choose_learning_rates(config, out)
    assert set(choices) == {("all", 2), ("top", 2)}
    finals = {
        p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")
    }
    assert sorted(finals) == [
        "all--r2--seed0",
        "all--r2--seed1",
        "top--r2--seed0",
        "top--r2--seed1",
    ]
    for record in finals.values():
        assert record["status"] == "finished"
        assert record["learning_rate"] == choices[(record["name"], 2)].chosen
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == len(set(rows)) == 4 + 4
