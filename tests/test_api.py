"""The Python API: what a notebook does, on a tiny model."""

from __future__ import annotations

import pytest
from helpers import tiny_study

import loraplace
from loraplace.errors import LoraplaceError


def test_plan_returns_one_plan_per_strategy_with_its_lora_config(tiny_model_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    plans = loraplace.plan(str(tiny_model_dir), {"a": "attn", "m": "mlp"}, rank=4)
    assert [p.name for p in plans] == ["a", "m"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    wrapped = get_peft_model(model, plans[1].lora_config(alpha=8, dropout=0.0))
    assert wrapped.get_nb_trainable_parameters()[0] == plans[1].trainable_params
    matched = loraplace.plan(str(tiny_model_dir), ["attn", "mlp"], rank=4, match_params="attn")
    assert matched[0].matched_to == plans[0].trainable_params


def test_study_and_load_study(tiny_model_dir, tiny_data_file, tmp_path):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["eval"] = {"accuracy_examples": 0}
    raw["training"] = {**raw["training"], "seeds": [0]}
    out = tmp_path / "api-study"
    assert loraplace.study(raw, out=out, show_progress=False, report=True) == 0
    loaded = loraplace.load_study(out)
    pandas = pytest.importorskip("pandas")
    assert isinstance(loaded.results, pandas.DataFrame)
    assert sorted(loaded.results["name"]) == sorted(raw["strategies"])
    assert list(loaded.summary["strategy"]) == list(raw["strategies"])
    assert set(loaded.plans) == {(name, None) for name in raw["strategies"]}
    # A run through the API with the study's config reproduces the study's run.
    record = loraplace.run("top", 0, config=out / "study.yaml", out=tmp_path / "single")
    study_loss = loaded.results.set_index("name").loc["top", "eval_loss"]
    assert record["eval_loss"] == study_loss


def test_load_study_refuses_a_directory_that_is_not_a_study(tmp_path):
    with pytest.raises(LoraplaceError, match="not a study directory"):
        loraplace.load_study(tmp_path)
