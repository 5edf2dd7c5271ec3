"""The placement preset: one cell of the atlas (docs/ATLAS-PLAN.md) for any model and dataset.

``loraplace study --preset placement --model M --dataset D [--pilot]``: the preset's markers
(``{upper_half: ...}``, ``{match: ...}``, ``eval_examples`` per kind of dataset) resolve for the
model and dataset when the config loads, the matched strategies land within 2.5% of their
targets with PEFT's own counts, ``study.yaml`` saves only the resolved values (and resumes),
and ``--model``, ``--dataset`` and ``--pilot`` change what they say. Nothing here trains but the
one tiny end-to-end study at the end.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import make_tiny_model_dir, make_tiny_tokenizer
from helpers import tiny_study

from loraplace import api
from loraplace.cli import main as cli
from loraplace.config.study import load_study_config, preset_path, read_study_mapping
from loraplace.config.templates import apply_pilot, describe_strategies, is_marker
from loraplace.errors import ConfigError, LoraplaceError
from loraplace.placement.planner import ModelPlanner
from loraplace.settings import MATCH_TOLERANCE
from loraplace.store import STUDY_FILE

LAYERS = 4
MATCHED = {"all-matched-attn": "attention-only", "all-matched-mlp": "ffn-only"}


def _gemma3_dir(path):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    tokenizer = make_tiny_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        layer_types=["sliding_attention", "full_attention"] * (LAYERS // 2),
        sliding_window=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    if request.param == "llama":
        return make_tiny_model_dir(path, layers=LAYERS)
    return _gemma3_dir(path)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama-4"), layers=LAYERS)


def _preset(model, dataset) -> dict:
    raw = read_study_mapping(preset_path("placement"))
    return {**raw, "model": str(model), "data": {**raw["data"], "dataset": str(dataset)}}


def test_the_preset_is_the_atlas_design_with_markers():
    raw = read_study_mapping(preset_path("placement"))
    assert raw["strategies"]["upper-half"] == {"upper_half": "all"}
    assert {n: raw["strategies"][n] for n in MATCHED} == {
        n: {"match": target} for n, target in MATCHED.items()
    }
    config = load_study_config(preset_path("placement"))  # the default model, smollm2-135m
    assert config.strategies == {
        "all-linear": "all",
        "attention-only": "attn",
        "ffn-only": "mlp",
        "upper-half": "all@last:15",
        "all-matched-attn": "all:r3",
        "all-matched-mlp": "all:r5",
    }
    assert (config.lora.rank, config.lora.alpha, config.lora.scaling) == (8, 8, "rslora")
    training = config.training
    assert (training.steps, training.batch_size, training.warmup_steps) == (128, 4, 8)
    assert training.learning_rates == [1e-3, 2e-3, 4e-3, 8e-3]
    assert training.selection == [0] and training.seeds == [0, 1, 2, 3, 4]
    data = config.data
    assert (data.train_examples, data.validation_examples, data.eval_examples) == (512, 64, 128)
    assert config.reference == "all-linear" and config.report.lowest is False
    # The plan's tests: 7 paired t-tests, of which 5 also have a TOST.
    comparisons = config.report.comparisons
    assert len(comparisons) == 7
    assert sum(len(c) == 2 and isinstance(c[0], str) for c in comparisons) == 5


def test_markers_resolve_for_the_model_with_peft_counts(model_dir, tiny_data_file):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = load_study_config(_preset(model_dir, tiny_data_file))
    assert config.strategies["upper-half"] == f"all@last:{LAYERS // 2}"
    assert not any(is_marker(s) for s in config.strategies.values())
    planner = ModelPlanner.for_model(str(model_dir))
    for name, target in MATCHED.items():
        plan, budget = config.plans[(name, None)], config.plans[(target, None)].trainable_params
        assert abs(plan.trainable_params - budget) <= MATCH_TOLERANCE * budget
        # Exactly what `loraplace plan --match-params TARGET` chooses for all-linear.
        spec = config.strategies[target]
        expected = planner.plan({name: "all"}, 8, spec, tolerance=MATCH_TOLERANCE)[0]
        assert plan.module_ranks == expected.module_ranks
        assert config.resolved[name].matched_to == target
    for (name, _), plan in config.plans.items():
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        wrapped = get_peft_model(model, plan.lora_config(8, 0.0, "rslora"))
        assert wrapped.get_nb_trainable_parameters()[0] == plan.trainable_params, name


def test_llama_needs_a_rank_per_family_to_match_attention(llama_dir, tiny_data_file):
    # Its MLP modules are larger than its attention modules: all-linear r3 and r4 both miss
    # attention-only r8 by 14%, so attention and MLP modules get a rank each.
    config = load_study_config(_preset(llama_dir, tiny_data_file))
    assert config.strategies["all-matched-attn"] == "attn:r4+mlp:r3"


def test_saved_study_yaml_is_explicit_and_loads_the_same_plans(llama_dir, tiny_data_file):
    config = load_study_config(_preset(llama_dir, tiny_data_file))
    saved = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert "pilot" not in saved and "resolved" not in saved
    assert all(isinstance(s, str) for s in saved["strategies"].values())
    assert saved["data"]["eval_examples"] == 128
    again = load_study_config(saved)
    assert again.to_dict() == config.to_dict() and not again.resolved
    assert {k: p.module_ranks for k, p in again.plans.items()} == {
        k: p.module_ranks for k, p in config.plans.items()
    }


def test_eval_size_follows_the_kind_of_dataset(llama_dir):
    assert load_study_config(_preset(llama_dir, "piqa")).data.eval_examples == 300
    assert load_study_config(_preset(llama_dir, "gsm8k")).data.eval_examples == 128


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"strategies": {"a": "all", "m": {"match": "nope"}}}, "strategies.m: match names 'nope'"),
        ({"strategies": {"a": "all", "u": {"upper_half": "attn@0"}}}, "strategies.u: upper_half"),
        ({"strategies": {"a": "all", "m": {"match": "a", "rank": 2}}}, "takes the keys"),
        ({"strategies": {"a": "all", "m": {"match": "a"}}, "ranks": [2, 4]}, "drop 'ranks'"),
        ({"data": {"eval_examples": {"accuracy": 10}}}, "exactly the keys accuracy, loss"),
        ({"data": {"eval_examples": {"accuracy": "x", "loss": 8}}}, "eval_examples.accuracy must"),
        ({"pilot": 3}, "'pilot' must be a mapping"),
        ({"pilot": {"trainig": {}}}, "pilot: unknown key 'trainig'"),
    ],
)
def test_bad_markers_are_config_problems(llama_dir, tiny_data_file, change, expected):
    raw = tiny_study(llama_dir, tiny_data_file)
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if key == "data" else value
    raw["reference"] = None
    with pytest.raises(ConfigError) as err:
        load_study_config(raw)
    assert expected in str(err.value)


def test_upper_half_works_in_a_rank_sweep(llama_dir, tiny_data_file):
    raw = tiny_study(llama_dir, tiny_data_file, ranks=[2, 4], reference=None)
    raw["strategies"] = {"all": "all", "top": {"upper_half": "mlp"}}
    config = load_study_config(raw)
    assert config.strategies["top"] == "mlp@last:2"
    assert {rank for _, rank in config.plans} == {2, 4}
    assert "mlp@last:2" in describe_strategies(config)


def _cli_config(monkeypatch, argv):
    """The config ``loraplace study ARGV`` would run, and its exit status (nothing runs)."""
    seen = {}

    def fake_study(config, **kwargs):
        seen["config"] = config
        return 0

    monkeypatch.setattr(cli, "study", fake_study)
    status = cli.main(["study", *argv])
    return seen.get("config"), status


def test_cli_model_and_dataset_override_and_print_the_strategies(
    monkeypatch, capsys, llama_dir, tiny_data_file
):
    argv = ["--preset", "placement", "--model", str(llama_dir), "--dataset", str(tiny_data_file)]
    config, status = _cli_config(monkeypatch, argv)
    assert status == 0
    assert config.model == str(llama_dir) and config.data.dataset == str(tiny_data_file)
    # Another model or dataset is another study, in its own directory by default.
    assert config.name == f"placement-{llama_dir.name}-{tiny_data_file.stem}"
    assert config.training.learning_rates
    printed = capsys.readouterr().out
    assert f"({LAYERS} layers)" in printed and "all@last:2" in printed
    assert "matched to attention-only" in printed and "%" in printed


def test_cli_model_and_dataset_override_any_study(monkeypatch, tmp_path, llama_dir, tiny_data_file):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study("smollm2-135m", "gsm8k")))
    argv = [str(path), "--model", str(llama_dir), "--dataset", str(tiny_data_file)]
    config, status = _cli_config(monkeypatch, argv)
    assert status == 0
    assert config.model == str(llama_dir) and config.data.dataset == str(tiny_data_file)


@pytest.mark.parametrize(
    ("model", "dataset", "name"),
    [
        ("gemma3-270m", "piqa", "placement-gemma3-270m-piqa"),
        (None, "gsm8k", "placement-gsm8k"),
        ("HuggingFaceTB/SmolLM2-135M", None, "placement-SmolLM2-135M"),
        ("/data/my models/m/", "/data/my task.jsonl", "placement-m-my-task"),
    ],
)
def test_a_cell_is_named_by_its_model_and_dataset(model, dataset, name):
    assert cli.cell_name("placement", model, dataset) == name


def test_cli_pilot_is_the_plans_pilot(monkeypatch, llama_dir, tiny_data_file):
    argv = ["--preset", "placement", "--pilot", "--model", str(llama_dir)]
    config, _ = _cli_config(monkeypatch, [*argv, "--dataset", str(tiny_data_file)])
    training = config.training
    assert config.name == f"placement-pilot-{llama_dir.name}-{tiny_data_file.stem}"
    assert training.seeds == [0, 1] and training.steps == 32
    assert training.learning_rates is None and training.learning_rate == 2e-3
    assert "exploratory" in config.report.note and config.report.comparisons
    assert config.strategies["upper-half"] == "all@last:2"  # the design is unchanged
    # --seeds still wins over the pilot's.
    config, _ = _cli_config(monkeypatch, [*argv, "--dataset", "gsm8k", "--seeds", "3,4,5"])
    assert config.training.seeds == [3, 4, 5]


def test_cli_pilot_without_one_and_a_bad_model_are_one_line(monkeypatch, capsys):
    _, status = _cli_config(monkeypatch, ["--preset", "default", "--pilot"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "--pilot: the preset 'default' has no 'pilot:'" in err
    _, status = _cli_config(monkeypatch, ["--preset", "placement", "--model", "no/such-model!"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "no/such-model!" in err


def test_apply_pilot_null_removes_a_key():
    raw = {
        "training": {"steps": 8, "learning_rates": [1.0]},
        "pilot": {"training": {"learning_rates": None}},
    }
    assert apply_pilot(raw, "x") == {"training": {"steps": 8}}
    with pytest.raises(LoraplaceError, match="--pilot: x has no"):
        apply_pilot({"name": "a"}, "x")


def test_run_takes_a_marker_strategy_resolved(monkeypatch, llama_dir, tiny_data_file):
    import loraplace.training.run as training_run

    seen = {}
    monkeypatch.setattr(
        training_run, "run_single", lambda cfg, key, out, force: seen.update(cfg=cfg) or {}
    )
    raw = _preset(llama_dir, tiny_data_file)
    api.run("all-matched-mlp", config=raw, out="unused")
    resolved = load_study_config(raw).strategies["all-matched-mlp"]
    assert seen["cfg"].strategies == {"all-matched-mlp": resolved}
    assert resolved == "attn:r9+mlp:r1"  # 2,304 per layer, as ffn-only r8 (exact)


def test_a_tiny_placement_study_runs_and_resumes_from_its_study_yaml(
    tmp_path, capsys, llama_dir, tiny_data_file
):
    raw = apply_pilot(_preset(llama_dir, tiny_data_file), "the preset 'placement'")
    raw["data"] = {**raw["data"], "train_examples": 16, "validation_examples": 0}
    raw["data"]["eval_examples"] = {"accuracy": 4, "loss": 4}
    raw["training"] = {**raw["training"], "steps": 1, "warmup_steps": 0, "seeds": [0]}
    raw["data"]["max_length"] = 96
    out = tmp_path / "cell"
    assert api.study(raw, out=out, report=False, show_progress=False) == 0
    saved = yaml.safe_load((out / STUDY_FILE).read_text())
    assert saved["strategies"]["all-matched-attn"] == "attn:r4+mlp:r3"
    assert saved["data"]["eval_examples"] == 4 and "pilot" not in saved
    capsys.readouterr()
    # The saved config resumes the study: every run is found finished, none trained again.
    assert cli.main(["study", str(out / STUDY_FILE), "--out", str(out), "--no-report"]) == 0
    assert "6 final runs finished" in capsys.readouterr().out
    assert api.study(raw, out=out, report=False, show_progress=False) == 0  # the preset again
