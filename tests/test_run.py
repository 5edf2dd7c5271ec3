"""One training run on a tiny random LLaMA: the result record, its consistency, reproducibility."""

from __future__ import annotations

import json
import math

import pytest
import torch

from loraplace.settings import DataConfig, EvalSettings, LoraSettings, TrainingSettings
from loraplace.store import RunKey, read_eval_examples
from loraplace.training.records import RunSpec
from loraplace.training.run import train_one
from loraplace.training.workbench import Workbench

RECORD_KEYS = {
    "name": str,
    "spec": str,
    "seed": int,
    "ranks": dict,
    "targets": list,
    "status": str,
    "trainable_params": int,
    "total_params": int,
    "trainable_pct": float,
    "eval_loss": float,
    "perplexity": float,
    "base_eval_loss": float,
    "train_time_s": float,
    "train_tokens": int,
    "tokens_per_s": float,
    "peak_memory_mb": float,
    "model": dict,
    "dataset": dict,
    "versions": dict,
    "eval_time_s": float,
}

TRAINING = TrainingSettings(steps=3, batch_size=4, learning_rate=1e-3, warmup_steps=0)
EVAL = EvalSettings(accuracy_examples=4, max_new_tokens=6, batch_size=8)
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def bench(tiny_model_dir, tiny_data_file):
    return Workbench.load(
        str(tiny_model_dir),
        DataConfig(dataset=str(tiny_data_file), train_examples=24, eval_examples=12, max_length=96),
    )


def _run(bench, spec, seed, out, training=TRAINING):
    plan = bench.planner.plan({spec: spec}, LORA.rank)[0]
    return train_one(
        bench,
        plan,
        RunKey(spec, seed),
        out,
        spec=RunSpec(LORA, training, EVAL, training.learning_rate, base=bench.base_metrics(EVAL)),
        show_progress=False,
    )


def _base_state(bench):
    return {k: v.detach().clone() for k, v in bench.model.state_dict().items()}


@pytest.fixture(scope="module")
def attn_run(bench, tmp_path_factory):
    before = _base_state(bench)
    out = tmp_path_factory.mktemp("run") / "attn--seed0"
    result = _run(bench, "attn", 0, out)
    return result, out, before


def test_result_has_every_documented_key_with_its_type(attn_run):
    result, out, _ = attn_run
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for key, kind in RECORD_KEYS.items():
        assert isinstance(on_disk[key], kind), (key, on_disk[key])
    assert on_disk["status"] == "finished" and on_disk["error"] is None
    # The fixture's answers end in "#### N", so there is a reference: accuracy is a number.
    assert isinstance(on_disk["accuracy"], float) and 0.0 <= on_disk["accuracy"] <= 1.0
    assert set(on_disk["versions"]) >= {"torch", "transformers", "peft"}


def test_perplexity_is_exp_of_eval_loss(attn_run):
    result, _, _ = attn_run
    assert result["perplexity"] == pytest.approx(math.exp(result["eval_loss"]), rel=1e-12)


def test_counts_equal_peft_on_the_wrapped_model(bench, attn_run):
    from peft import get_peft_model

    result, _, _ = attn_run
    plan = bench.planner.plan({"attn": "attn"}, LORA.rank)[0]
    trainable, total = get_peft_model(
        bench.fresh_model(), plan.lora_config(8, 0.0)
    ).get_nb_trainable_parameters()
    assert (result["trainable_params"], result["total_params"]) == (trainable, total)
    assert result["trainable_pct"] == pytest.approx(100 * trainable / total)


def test_train_tokens_are_the_non_padding_tokens_of_the_trained_batches(attn_run):
    result, out, _ = attn_run
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in lines if "loss" in r]
    assert [r["step"] for r in curve] == [1, 2, 3]
    # The final eval loss is also on the curve, at the last step.
    assert [r for r in lines if "eval_loss" in r] == [
        {"step": 3, "eval_loss": result["eval_loss"], "eval_tokens": result["eval_tokens"]}
    ]
    assert curve[-1]["tokens"] == result["train_tokens"]
    assert all(a["tokens"] < b["tokens"] for a, b in zip(curve, curve[1:]))
    # tokens_per_s is computed before train_time_s is rounded to the millisecond: on a tiny
    # run of a few hundredths of a second that rounding alone moves the ratio by over 1%.
    tokens, seconds = result["train_tokens"], result["train_time_s"]
    low, high = tokens / (seconds + 0.0005), tokens / max(seconds - 0.0005, 1e-9)
    assert low - 0.005 <= result["tokens_per_s"] <= high + 0.005


def test_base_weights_are_not_modified_by_a_run(bench, attn_run):
    _, _, before = attn_run
    after = _base_state(bench)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(hasattr(m, "lora_A") for m in bench.model.modules())


def test_same_seed_same_result_and_other_seed_differs(bench, attn_run, tmp_path):
    result, _, _ = attn_run
    again = _run(bench, "attn", 0, tmp_path / "again")
    other = _run(bench, "attn", 1, tmp_path / "other")
    assert again["eval_loss"] == result["eval_loss"]
    assert other["eval_loss"] != result["eval_loss"]


def test_saved_adapter_loads_with_plain_peft_and_reproduces_eval_loss(bench, attn_run):
    from peft import PeftModel

    from loraplace.training.evaluate import eval_loss

    result, out, _ = attn_run
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(bench.fresh_model(), out / "adapter")
    loss, tokens = eval_loss(
        loaded, bench.eval.features, bench.collator, batch_size=8, device="cpu"
    )
    assert tokens == result["eval_tokens"]
    assert loss == pytest.approx(result["eval_loss"], rel=1e-6)


def test_per_example_eval_losses_add_up_to_the_eval_loss(bench, attn_run):
    result, out, _ = attn_run
    rows = read_eval_examples(out / "eval_examples.jsonl")
    assert sorted(rows) == [f["example"] for f in bench.eval.features]
    tokens = sum(n for n, _ in rows.values())
    assert tokens == result["eval_tokens"]
    assert sum(s for _, s in rows.values()) / tokens == pytest.approx(
        result["eval_loss"], rel=1e-12
    )


def test_non_finite_loss_fails_the_run_with_nan_loss(bench, tmp_path):
    absurd = TrainingSettings(steps=3, batch_size=4, warmup_steps=0)
    # Validation refuses such a rate; set after it, it stands for any divergence.
    absurd.learning_rate = 1e30
    result = _run(bench, "all", 0, tmp_path / "nan", training=absurd)
    assert result["status"] == "failed"
    assert result["error"] == "nan_loss"
    assert result["eval_loss"] is None and result["perplexity"] is None
    assert json.loads((tmp_path / "nan" / "result.json").read_text())["error"] == "nan_loss"


def test_a_last_k_run_never_runs_the_layers_below_its_lowest_adapter(bench, tmp_path):
    """Through the real run: layers below the lowest adapter are computed once, into the
    frozen-prefix cache, and never again in training or eval loss. (Accuracy generates new
    tokens, which need every layer, so it is off here.)"""
    plan = bench.planner.plan({"s": "all@last:1"}, LORA.rank)[0]
    layer = plan.lowest_layer
    assert layer > 0
    evaluation = EvalSettings(accuracy_examples=0, batch_size=8)
    base = bench.base_metrics(evaluation)  # the base model's own pass runs every layer
    for split in (bench.train, bench.eval):
        assert bench.prefix(split, layer)[0] is not None  # built before anything is counted
    calls = [0] * len(bench.model.model.layers)
    # Hooks on the base model's layers are copied into every run's fresh copy of it.
    hooks = [
        module.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, module in enumerate(bench.model.model.layers)
    ]
    try:
        record = train_one(
            bench,
            plan,
            RunKey("s", 0),
            tmp_path / "s--seed0",
            spec=RunSpec(LORA, TRAINING, evaluation, TRAINING.learning_rate, base=base),
            show_progress=False,
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert record["status"] == "finished" and record["prefix_cache"]["used"]
    assert calls[:layer] == [0] * layer
    assert all(n > 0 for n in calls[layer:])


def test_run_command_refuses_to_overwrite_a_finished_run(tiny_model_dir, tiny_data_file, attn_run):
    from loraplace.cli.main import main

    _, out, _ = attn_run
    before = (out / "result.json").read_text()
    code = main(
        [
            "run",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(tiny_data_file),
            "--strategy",
            "attn",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert (out / "result.json").read_text() == before
