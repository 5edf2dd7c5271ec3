"""Every shipped example config and preset is a valid study for its model, with its run command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from loraplace.config.study import load_study_config, preset_names, preset_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"default", "param-matched", "layer-sweep", "alpaca", "budget-curves"} <= names


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


@pytest.mark.parametrize("name", ["default", "smoke", "pilot"])
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
    from loraplace.placement.planner import ModelPlanner

    config = load_study_config(ROOT / "examples" / "param-matched.yaml")
    plans = ModelPlanner.for_model(config.model).plan(
        config.strategies, config.lora.rank, config.match_params
    )
    budget = plans[0].matched_to
    assert budget == next(p for p in plans if p.name == "attention-only").trainable_params
    assert all(abs(p.trainable_params - budget) / budget < 0.10 for p in plans)


def test_budget_curves_has_the_design_that_can_carry_a_claim():
    # Placements attn, mlp, all and all@last:15 at ranks 2, 8 and 32; a learning rate chosen
    # per (placement, rank) from at least 3 values on a validation split; at least 3 seeds; at
    # least one full epoch of a training pool of at least 512 problems; ranking checkpoints.
    config = load_study_config(ROOT / "examples" / "budget-curves.yaml")
    assert sorted(config.strategies.values()) == ["all", "all@last:15", "attn", "mlp"]
    assert config.ranks == [2, 8, 32]
    assert len(config.training.learning_rates) >= 3 and config.data.validation_examples > 0
    assert len(config.training.seeds) >= 3
    assert config.data.train_examples >= 512
    epochs = config.training.steps * config.training.batch_size / config.data.train_examples
    assert epochs >= 1
    assert len(config.eval.checkpoint_steps(config.training.steps)) >= 2


def test_the_pilot_is_the_budget_curve_design_at_a_small_size():
    pilot = load_study_config(preset_path("pilot"))
    full = load_study_config(ROOT / "examples" / "budget-curves.yaml")
    assert pilot.strategies == full.strategies and pilot.reference == full.reference
    # The pilot keeps the grid it was timed with; the study's grid grew by one rate after its
    # selection chose the top edge (docs/RESULTS.md).
    assert set(pilot.training.learning_rates) <= set(full.training.learning_rates)
    assert len(pilot.training.learning_rates) >= 3
    assert set(pilot.ranks) <= set(full.ranks) and pilot.lora == full.lora
    assert "exploratory" in pilot.report.note


@pytest.mark.parametrize("name", ["auto-placement", "auto-placement-r2"])
def test_the_auto_placement_studies_train_as_the_budget_curves_do(name):
    # Their hand placement is copied from the budget-curve study (reuse), and every strategy is
    # compared at its best rate: training and evaluation must be identical but for the grid,
    # which keeps at least three of the budget-curve study's rates around its choice, 3e-3.
    auto = load_study_config(ROOT / "examples" / f"{name}.yaml")
    full = load_study_config(ROOT / "examples" / "budget-curves.yaml")
    grid = auto.training.learning_rates
    assert set(grid) <= set(full.training.learning_rates) and len(grid) >= 3
    assert min(grid) < 3e-3 < max(grid)
    same = dataclasses.replace(auto.training, learning_rates=full.training.learning_rates)
    assert same == full.training and auto.eval == full.eval
    assert auto.data == full.data and auto.model == full.model
    assert auto.reuse == ["runs/budget-curves"]


def test_longer_training_is_the_budget_curve_design_at_rank_8_trained_twice_as_long():
    # Same placements, model, LoRA settings, validation and eval splits; one epoch of a larger
    # pool that contains the budget-curve pool (same split seed); a learning rate chosen again
    # around 3e-3; and at least two checkpoints after the budget-curve study's length, so the
    # order between the last two says whether it settles with more training.
    longer = load_study_config(ROOT / "examples" / "longer-training.yaml")
    full = load_study_config(ROOT / "examples" / "budget-curves.yaml")
    assert longer.strategies == full.strategies and longer.reference == full.reference
    assert longer.ranks is None and longer.lora == full.lora and longer.lora.rank in full.ranks
    assert longer.model == full.model
    assert dataclasses.replace(longer.data, train_examples=full.data.train_examples) == full.data
    assert longer.data.train_examples > full.data.train_examples
    steps = longer.training.steps
    assert steps * longer.training.batch_size == longer.data.train_examples  # one epoch
    assert steps > full.training.steps and longer.training.seeds == full.training.seeds
    grid = longer.training.learning_rates
    assert len(grid) >= 3 and min(grid) < 3e-3 < max(grid)
    assert len([s for s in longer.eval.checkpoint_steps(steps) if s > full.training.steps]) >= 2
    # Its analysis plan tests the three placements against all-linear, Holm over those three:
    # no test of the lowest placement may join the family.
    assert longer.report.lowest is False and full.report.lowest is True


@pytest.mark.parametrize("name", ["auto-placement", "auto-placement-r2"])
def test_the_auto_placement_budgets_leave_a_placement_to_choose(name):
    # Where every module fits the budget at the placing rank, grad and snr take them all and
    # the comparison is of one placement with itself (the r2 study's first start resolved
    # auto-grad-r2 to `all` at rank 2). Each budget leaves out at least half of everything at
    # its rank, so the methods have a substantial choice to differ in.
    from loraplace.autoplace.choose import units_of
    from loraplace.autoplace.probe import resolve_budget
    from loraplace.placement.planner import ModelPlanner

    config = load_study_config(ROOT / "examples" / f"{name}.yaml")
    planner = ModelPlanner.for_model(config.model)
    units = units_of(planner.arch)
    fixed = {n: s for n, s in config.strategies.items() if isinstance(s, str)}
    for spec in config.auto_strategies.values():
        rank = spec.rank or config.lora.rank
        budget = resolve_budget(spec.budget, planner, rank, fixed)
        everything = sum(unit.cost(rank) for unit in units)
        assert budget < 0.5 * everything, (spec, budget, everything)


def test_the_r2_study_resolves_grad_and_random_per_seed():
    # At r2 a verdict of grad against random compares methods, each seed training its own
    # placement; snr reads no seed. The r8 study keeps one placement per strategy.
    r2 = load_study_config(ROOT / "examples" / "auto-placement-r2.yaml").auto_strategies
    r8 = load_study_config(ROOT / "examples" / "auto-placement.yaml").auto_strategies
    assert {n: s.probe_per_seed for n, s in r2.items()} == {
        "auto-grad-r2": True,
        "auto-snr-r2": False,
        "random-r2": True,
    }
    assert not any(s.probe_per_seed for s in r8.values())


def test_the_readme_study_yaml_is_the_budget_curve_study():
    # The README shows examples/budget-curves.yaml with comments; the keys must not drift.
    import yaml

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Study YAML") :]
    block = section[section.index("```yaml") + len("```yaml") : section.index("```\n", 10)]
    shown = yaml.safe_load(block)
    assert shown == yaml.safe_load((ROOT / "examples" / "budget-curves.yaml").read_text())
