"""An interrupted run goes on from its saved training state and gives the numbers an unbroken
run gives: weights, losses, curve and eval loss."""

from __future__ import annotations

import io
import json

import pytest
import torch
from helpers import tiny_study

from loraplace import store
from loraplace.config.study import load_study_config
from loraplace.studies.runner import run_study


def _copy(state):
    """A saved state, as the runner writes it (the loop hands over live tensors)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_the_loop_resumed_from_any_step_equals_the_unbroken_loop(tiny_model_dir, tiny_data_file):
    from peft import LoraConfig, get_peft_model

    from loraplace.settings import DataConfig
    from loraplace.training.loop import train_adapter
    from loraplace.training.workbench import Workbench

    bench = Workbench.load(
        str(tiny_model_dir),
        DataConfig(dataset=str(tiny_data_file), train_examples=24, eval_examples=8, max_length=96),
    )

    def fresh():
        torch.manual_seed(0)
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules="all-linear")
        return get_peft_model(bench.fresh_model(), config)

    def train(model, **kwargs):
        rows = []
        train_adapter(
            model,
            bench.train.features,
            steps=8,
            batch_size=4,
            learning_rate=3e-3,
            warmup_steps=2,
            weight_decay=0.01,
            max_grad_norm=1.0,
            seed=3,
            device="cpu",
            dtype=torch.float32,
            on_step=rows.append,
            **kwargs,
        )
        return rows, [p.detach().clone() for p in model.parameters() if p.requires_grad]

    states = []
    rows, weights = train(fresh(), on_state=lambda s: states.append(_copy(s)), state_every_s=0)
    assert [s.step for s in states] == list(range(1, 9))
    for state in (states[2], states[6], states[7]):
        resumed_rows, resumed = train(fresh(), resume=state)
        # The same losses, gradient norms, rates and tokens (times are wall times).
        assert [_untimed(r) for r in resumed_rows] == [_untimed(r) for r in rows[state.step :]]
        assert all(torch.equal(a, b) for a, b in zip(resumed, weights, strict=True))


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "time_s"}


def _config(model_dir, data_file):
    raw = tiny_study(model_dir, data_file, strategies={"all": "all"}, reference="all")
    raw["lora"] = {**raw["lora"], "dropout": 0.1}
    raw["training"] = {**raw["training"], "steps": 8, "seeds": [0]}
    raw["eval"] = {"accuracy_examples": 0, "checkpoints": [0.5]}
    return load_study_config(raw)


def test_a_study_interrupted_mid_run_goes_on_from_its_state(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import loraplace.training.run as runner

    config = _config(tiny_model_dir, tiny_data_file)
    unbroken = tmp_path / "unbroken"
    assert run_study(config, unbroken, show_progress=False) == 0

    real = runner.train_adapter

    def interrupted(*args, **kwargs):
        on_step = kwargs["on_step"]

        def then_stop(row):
            on_step(row)
            if row["step"] == 6:
                raise KeyboardInterrupt  # as a kill: after step 6, before its state is saved

        return real(*args, **{**kwargs, "on_step": then_stop, "state_every_s": 0})

    out = tmp_path / "out"
    monkeypatch.setattr(runner, "train_adapter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, out, show_progress=False)
    run_dir = out / "runs" / "all--seed0"
    assert store.can_resume(run_dir) and store.read_result(run_dir) is None
    monkeypatch.setattr(runner, "train_adapter", real)
    assert run_study(config, out, show_progress=False) == 0

    got = json.loads((run_dir / "result.json").read_text())
    want = json.loads((unbroken / "runs" / "all--seed0" / "result.json").read_text())
    assert got["resumed_at"] == [5] and "resumed_at" not in want
    assert got["eval_loss"] == want["eval_loss"]
    assert (got["train_tokens"], got["steps"]) == (want["train_tokens"], want["steps"])
    curve = store.read_jsonl(run_dir / "metrics.jsonl")
    expected = store.read_jsonl(unbroken / "runs" / "all--seed0" / "metrics.jsonl")
    assert [r["step"] for r in curve] == [r["step"] for r in expected]  # each step once
    assert [r.get("loss") for r in curve] == [r.get("loss") for r in expected]
    assert [r.get("eval_loss") for r in curve] == [r.get("eval_loss") for r in expected]
    assert (run_dir / "eval_examples.jsonl").read_text() == (
        unbroken / "runs" / "all--seed0" / "eval_examples.jsonl"
    ).read_text()
    assert not store.can_resume(run_dir)  # the state goes once the run is complete


def _interrupted_after_step_3(config, out, monkeypatch) -> None:
    """Run the study until step 3 of its first run, saving a state every step, then stop it
    as a kill would (the state of step 2 is the last saved)."""
    import loraplace.training.run as runner

    real = runner.train_adapter

    def interrupted(*args, **kwargs):
        def then_stop(row):
            kwargs["on_step"](row)
            if row["step"] == 3:
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_step": then_stop, "state_every_s": 0})

    monkeypatch.setattr(runner, "train_adapter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, out, show_progress=False)
    monkeypatch.setattr(runner, "train_adapter", real)


def test_a_state_saved_by_other_training_code_is_not_used(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import loraplace.training.resume as resume

    config = _config(tiny_model_dir, tiny_data_file)
    out = tmp_path / "out"
    _interrupted_after_step_3(config, out, monkeypatch)
    assert store.can_resume(out / "runs" / "all--seed0")
    monkeypatch.setattr(resume, "training_code_hash", lambda: "changed since")
    assert run_study(config, out, show_progress=False) == 0
    record = json.loads((out / "runs" / "all--seed0" / "result.json").read_text())
    assert "resumed_at" not in record and record["steps"] == 8


def test_a_state_from_another_run_is_not_used(tiny_model_dir, tiny_data_file, tmp_path):
    config = _config(tiny_model_dir, tiny_data_file)
    out = tmp_path / "out"
    run_dir = out / "runs" / "all--seed0"
    run_dir.mkdir(parents=True)
    torch.save({"recipe": {"name": "other"}, "state": None}, run_dir / store.RESUME_FILE)
    assert run_study(config, out, show_progress=False) == 0
    assert "resumed_at" not in json.loads((run_dir / "result.json").read_text())
    assert not store.can_resume(run_dir)


def test_a_study_that_grows_its_seed_list_keeps_its_saved_states(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):

    config = _config(tiny_model_dir, tiny_data_file)
    out = tmp_path / "out"
    _interrupted_after_step_3(config, out, monkeypatch)
    raw = config.to_dict()
    raw["training"] = {**raw["training"], "seeds": [0, 1]}
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    record = json.loads((out / "runs" / "all--seed0" / "result.json").read_text())
    assert record["resumed_at"] == [2] and record["steps"] == 8


def test_a_run_recipe_ignores_only_what_no_single_run_trains_by():
    from loraplace.training.resume import run_recipe

    def recipe(**training):
        return {"name": "all", "learning_rate": 1e-3, "training": {"steps": 8, **training}}

    grown = recipe(seeds=[0, 1, 2], learning_rates=[1e-3, 3e-3], learning_rate=2e-4)
    assert run_recipe(recipe(seeds=[0], learning_rates=[1e-3])) == run_recipe(grown)
    assert run_recipe(recipe(warmup_steps=2)) != run_recipe(recipe(warmup_steps=3))
    assert run_recipe({**recipe(), "learning_rate": 3e-3}) != run_recipe(recipe())
    assert run_recipe(None) is None
