"""The frozen-prefix cache: exact where supported, refused where not, never reaching below L."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_tokenizer, write_alpaca_jsonl
from peft import LoraConfig, get_peft_model

from loraplace.data.batching import DynamicPaddingCollator, tokenize_examples
from loraplace.data.sources import DataConfig, load_dataset_split
from loraplace.placement.arch import classify
from loraplace.training.evaluate import eval_losses
from loraplace.training.loop import train_adapter
from loraplace.training.prefix import (
    PrefixCache,
    decoder_layers,
    find_layers_path,
    lowest_trainable_layer,
    prefix_supported,
)

LAYERS = 4


def _llama(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )


def _gpt2(tokenizer, dropout: float | None = None):
    from transformers import GPT2Config

    rates = {} if dropout is None else dict(resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=LAYERS, n_head=4, n_positions=256, **rates
    )


def _falcon(tokenizer):
    from transformers import FalconConfig

    return FalconConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4
    )


# name -> (config builder, LoRA targets); every row here must support the cache.
SUPPORTED = {
    "llama": (_llama, ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]),
    "gpt2-no-dropout": (lambda t: _gpt2(t, dropout=0.0), ["c_attn", "c_proj", "c_fc"]),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: a second intra-op thread only adds synchronisation on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tokenizer = make_tiny_tokenizer()
    path = write_alpaca_jsonl(tmp_path_factory.mktemp("data") / "arith.jsonl")
    train, evaluation, _ = load_dataset_split(
        DataConfig(dataset=str(path), train_examples=16, eval_examples=9, max_length=96)
    )
    return (
        tokenizer,
        tokenize_examples(train, tokenizer, 96)[0],
        tokenize_examples(evaluation, tokenizer, 96)[0],
    )


def _base(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.requires_grad_(False)
    return model.eval()


def _adapted(base, targets, layers, seed=1, dropout=0.0):
    memo = {id(t): t for t in [*base.parameters(), *base.buffers()]}
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        layers_to_transform=layers,
        lora_dropout=dropout,
        fan_in_fan_out=base.config.model_type == "gpt2",  # transformers' Conv1D
    )
    return get_peft_model(copy.deepcopy(base, memo), config)


def _trained(base, targets, features, layer, prefix, dropout=0.0):
    model = _adapted(base, targets, list(range(layer, LAYERS)), dropout=dropout)
    records = []
    train_adapter(
        model,
        features,
        steps=4,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=1,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=5,
        device="cpu",
        dtype=torch.float32,
        prefix=prefix,
        on_step=records.append,
    )
    return model, records


def _build(model, features, layer, batch_size=4):
    return PrefixCache.build(
        model, features, layer, device="cpu", dtype=torch.float32, batch_size=batch_size
    )


@pytest.mark.parametrize("name", sorted(SUPPORTED))
@pytest.mark.parametrize("layer", [1, 3])
def test_cached_training_and_eval_equal_the_full_forward(data, name, layer):
    tokenizer, train, evaluation = data
    build_config, targets = SUPPORTED[name]
    base = _base(build_config(tokenizer))
    assert prefix_supported(base, classify(base), layer) == (True, "")
    cache = _build(base, train, layer)
    full_model, full = _trained(base, targets, train, layer, None)
    cached_model, cached = _trained(base, targets, train, layer, cache)
    assert [r["loss"] for r in cached] == pytest.approx([r["loss"] for r in full], abs=1e-5)
    assert [r["tokens"] for r in cached] == [r["tokens"] for r in full]
    full_state = dict(full_model.named_parameters())
    for name_, param in cached_model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param, full_state[name_], atol=1e-5), name_

    collator = DynamicPaddingCollator(tokenizer)
    eval_cache = _build(base, evaluation, layer, batch_size=3)
    plain = eval_losses(full_model, evaluation, collator, batch_size=4, device="cpu")
    through = eval_losses(
        full_model, evaluation, collator, batch_size=4, device="cpu", prefix=eval_cache
    )
    assert [(r.example, r.tokens) for r in through] == [(r.example, r.tokens) for r in plain]
    for a, b in zip(through, plain):
        assert a.loss_sum / a.tokens == pytest.approx(b.loss_sum / b.tokens, abs=1e-5)


def test_lora_dropout_above_the_cached_layer_keeps_the_cache_exact(data):
    # LoRA dropout lives in the adapted layers (>= L): the states entering L do not change, and
    # the skipped layers draw no random numbers, so the dropout masks are the same.
    tokenizer, train, _ = data
    base = _base(_llama(tokenizer))
    targets = SUPPORTED["llama"][1]
    cache = _build(base, train, 2)
    full_model, full = _trained(base, targets, train, 2, None, dropout=0.3)
    cached_model, cached = _trained(base, targets, train, 2, cache, dropout=0.3)
    assert [r["loss"] for r in cached] == pytest.approx([r["loss"] for r in full], abs=1e-5)
    _, no_dropout = _trained(base, targets, train, 2, cache)
    assert [r["loss"] for r in no_dropout] != [r["loss"] for r in cached]  # dropout was active


def test_per_example_states_do_not_depend_on_the_batch(data):
    tokenizer, train, _ = data
    base = _base(_llama(tokenizer))
    alone, batched = _build(base, train, 2, batch_size=1), _build(base, train, 2, batch_size=8)
    assert alone.offsets == batched.offsets and alone.lengths == [
        len(f["input_ids"]) for f in train
    ]
    assert torch.allclose(alone.states, batched.states, atol=1e-6)
    assert batched.nbytes == sum(alone.lengths) * 32 * 4  # tokens x hidden x float32
    assert not batched.states.requires_grad


def test_nothing_below_the_cached_layer_runs_or_receives_a_gradient(data):
    tokenizer, train, _ = data
    base = _base(_llama(tokenizer))
    layer = 2
    cache = _build(base, train, layer)
    model = _adapted(base, ["q_proj", "down_proj"], [2, 3])
    layers = decoder_layers(model, "model.layers")
    originals = list(layers)
    calls = []
    hooks = [
        layers[i].register_forward_hook(lambda *a, i=i: calls.append(i)) for i in range(LAYERS)
    ]
    batch = DynamicPaddingCollator(tokenizer)(train[:4])
    originals[1].marker = "read by a model's layer loop"
    with cache.attached(model):
        assert all(layers[i] is not originals[i] for i in range(layer))
        assert not list(layers[0].parameters())  # stand-ins own no parameters
        assert layers[1].marker == originals[1].marker  # attributes fall through
        cache.select([0, 1, 2, 3])
        model(**batch).loss.backward()
    assert sorted(calls) == [2, 3]
    assert list(layers) == originals  # restored
    for i in range(LAYERS):
        grads = [p.grad for p in layers[i].parameters() if p.grad is not None]
        assert bool(grads) == (i >= layer)
    for hook in hooks:
        hook.remove()
    assert lowest_trainable_layer(model, "model.layers") == layer


def test_layers_are_restored_after_an_error_and_adapters_below_are_refused(data):
    tokenizer, train, _ = data
    base = _base(_llama(tokenizer))
    cache = _build(base, train, 2)
    model = _adapted(base, ["q_proj"], [2, 3])
    originals = list(decoder_layers(model, "model.layers"))
    with pytest.raises(RuntimeError, match="select"), cache.attached(model):
        model(**DynamicPaddingCollator(tokenizer)(train[:2]))
    assert list(decoder_layers(model, "model.layers")) == originals
    with (
        pytest.raises(ValueError, match="adapters"),
        cache.attached(_adapted(base, ["q_proj"], [1])),
    ):
        pass
    with pytest.raises(ValueError, match="adapters"):
        _build(_adapted(base, ["q_proj"], [0]), train, 2)


def test_a_cache_refuses_features_it_was_not_built_on(data):
    tokenizer, train, evaluation = data
    base = _base(_llama(tokenizer))
    cache = _build(base, train, 1)
    model = _adapted(base, ["q_proj"], [1, 2, 3])
    with pytest.raises(ValueError, match="other features"):
        eval_losses(
            model,
            evaluation,
            DynamicPaddingCollator(tokenizer),
            batch_size=4,
            device="cpu",
            prefix=cache,
        )


@pytest.mark.parametrize(
    "config,layer,reason",
    [
        (_gpt2, 2, "dropout is active below layer 2"),  # GPT-2's default 0.1 dropout
        (_falcon, 2, "decoder layers return tuple"),
        (_llama, 0, "no frozen prefix"),
        (_llama, LAYERS, "no frozen prefix"),
    ],
)
def test_unsupported_cases_are_refused_with_the_reason(data, config, layer, reason):
    base = _base(config(data[0]))
    supported, why = prefix_supported(base, classify(base), layer)
    assert not supported and reason in why


def test_dropout_above_the_cached_layer_does_not_matter(data):
    tokenizer = data[0]
    base = _base(_gpt2(tokenizer, dropout=0.0))
    base.transformer.h[2].attn.resid_dropout.p = 0.1  # in layer 2: fine from layer 2 up
    assert prefix_supported(base, classify(base), 2) == (True, "")
    supported, why = prefix_supported(base, classify(base), 3)
    assert not supported and "transformer.h.2.attn.resid_dropout (p=0.1)" in why
    assert find_layers_path(base) == "transformer.h"
