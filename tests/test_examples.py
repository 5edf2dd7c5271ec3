"""Every shipped example config and preset is a valid study for its model, with its run command."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplace.config import load_study_config, preset_names, preset_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"default", "param-matched", "layer-sweep", "alpaca"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_is_valid_and_says_how_to_run_it(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # data paths in examples are relative to the repository root
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("loraplace study" in line for line in header), (
        f"{path.name}: no run command in its header"
    )
    config = load_study_config(path)
    assert config.reference in config.strategies
    assert len(config.training.seeds) >= 2, (
        "a study needs at least 2 seeds for any statistical claim"
    )


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_presets_are_valid(name):
    assert name in preset_names()
    config = load_study_config(preset_path(name))
    assert {"all", "attn", "mlp"} <= set(config.strategies.values())
    assert any("@" in spec for spec in config.strategies.values()), (
        "the research question needs a layer subset"
    )


def test_default_example_is_the_default_preset():
    import yaml

    example = yaml.safe_load((ROOT / "examples" / "default.yaml").read_text())
    preset = yaml.safe_load(preset_path("default").read_text())
    assert example == preset


def test_parameter_matched_example_matches_counts():
    from loraplace.placement import ModelPlanner

    config = load_study_config(ROOT / "examples" / "param-matched.yaml")
    plans = ModelPlanner.for_model(config.model).plan(
        config.strategies, config.lora.rank, config.match_params
    )
    budget = plans[0].matched_to
    assert budget == next(p for p in plans if p.name == "attention-only").trainable_params
    assert all(abs(p.trainable_params - budget) / budget < 0.10 for p in plans)
