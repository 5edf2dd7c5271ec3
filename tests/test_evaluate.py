"""Eval loss per example and in total, logits only at scored positions, accuracy by generation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_tokenizer
from torch import nn
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from loraplace.data.batching import DynamicPaddingCollator, encode_prompt, tokenize_examples
from loraplace.data.formats import Example, extract_final_number
from loraplace.data.sources import DataConfig, load_dataset_split
from loraplace.training.evaluate import (
    accepts_logits_mask,
    answer_complete,
    completion_loss,
    completion_positions,
    eval_accuracy,
    eval_loss,
    eval_losses,
    scored_token_losses,
    scoring_head,
)
from loraplace.training.precision import store_frozen


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: a second intra-op thread only adds synchronisation on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_data_file):
    tokenizer = make_tiny_tokenizer()
    _, examples, _ = load_dataset_split(
        DataConfig(dataset=str(tiny_data_file), train_examples=16, eval_examples=10, max_length=96)
    )
    features, _ = tokenize_examples(examples, tokenizer, 96)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.requires_grad_(False)
    return model.eval(), tokenizer, examples, features


def test_completion_positions_mark_the_positions_before_each_scored_token():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 6, 7, 9]])
    keep = completion_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]


def test_masked_logits_give_the_models_own_loss(setup):
    model, tokenizer, _, features = setup
    batch = DynamicPaddingCollator(tokenizer)(features[:5])
    labels = batch["labels"]
    assert (labels != -100).sum(dim=1).unique().numel() > 1  # rows really differ
    with torch.no_grad():
        reference = model(**batch).loss  # transformers' shifted cross-entropy
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        masked = model(**inputs, logits_to_keep=completion_positions(labels)).logits
        full = model(**inputs).logits
    assert masked.shape == (int((labels[:, 1:] != -100).sum()), full.shape[-1])
    assert completion_loss(masked, labels).item() == pytest.approx(reference.item(), rel=1e-5)
    assert completion_loss(full, labels).item() == pytest.approx(reference.item(), rel=1e-5)


class _NoMask(nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: eval must fall back to full logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_eval_loss_is_the_same_with_and_without_the_logits_mask(setup):
    model, tokenizer, _, features = setup
    collator = DynamicPaddingCollator(tokenizer)
    fallback = _NoMask(model)
    assert accepts_logits_mask(model) and not accepts_logits_mask(fallback)
    masked, n_masked = eval_loss(model, features, collator, batch_size=4, device="cpu")
    full, n_full = eval_loss(fallback, features, collator, batch_size=4, device="cpu")
    assert n_masked == n_full == sum(sum(t != -100 for t in f["labels"][1:]) for f in features)
    assert masked == pytest.approx(full, rel=1e-6)


def test_token_losses_through_the_chunked_head_are_the_models_own(setup, monkeypatch):
    import loraplace.training.evaluate as evaluate

    model, tokenizer, _, features = setup
    batch = DynamicPaddingCollator(tokenizer)(features[:6])
    labels = batch.pop("labels")
    head = scoring_head(model, device="cpu", dtype=torch.float32)
    assert head is not None and head.head is model.lm_head
    monkeypatch.setattr(evaluate, "HEAD_CHUNK", 7)  # several chunks, the last one short
    with torch.no_grad():
        own = scored_token_losses(
            model, None, batch, labels, dtype=torch.float32, mask_logits=False
        )
        split = scored_token_losses(
            model, head, batch, labels, dtype=torch.float32, mask_logits=True
        )
    assert own.shape == split.shape == (int((labels[:, 1:] != -100).sum()),)
    assert torch.allclose(split, own, rtol=1e-5, atol=1e-5)


def test_a_bf16_eval_is_close_to_the_fp32_one(setup):
    import copy

    model, tokenizer, _, features = setup
    collator = DynamicPaddingCollator(tokenizer)
    bf16 = copy.deepcopy(model)
    store_frozen(bf16, torch.bfloat16)
    full, _ = eval_loss(model, features, collator, batch_size=4, device="cpu")
    half, _ = eval_loss(bf16, features, collator, batch_size=4, device="cpu", dtype=torch.bfloat16)
    assert half == pytest.approx(full, rel=0.01) and half != full


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


def test_per_example_losses_are_each_examples_own_loss(setup):
    model, tokenizer, _, features = setup
    collator = DynamicPaddingCollator(tokenizer)
    model.train()
    bar = _Bar()
    rows = eval_losses(model, features, collator, batch_size=3, device="cpu", progress=bar)
    assert model.training and bar.n == len(features)
    assert [r.example for r in rows] == [f["example"] for f in features]
    for row, feature in zip(rows, features):
        scored = sum(t != -100 for t in feature["labels"][1:])
        with torch.no_grad():  # the example alone, no padding, transformers' own loss
            alone = model.eval()(**collator([feature])).loss.item()
        assert row.tokens == scored
        assert row.loss_sum == pytest.approx(alone * scored, rel=1e-5)
        assert isinstance(row.loss_sum, float)
    loss, tokens = eval_loss(model, features, collator, batch_size=3, device="cpu")
    assert tokens == sum(r.tokens for r in rows)
    assert loss == pytest.approx(sum(r.loss_sum for r in rows) / tokens, rel=1e-12)


def _gpt2(tokenizer):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128)


def _llama(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )


@pytest.mark.parametrize(
    "config,targets,dora",
    [
        (_llama, ["q_proj", "v_proj", "down_proj"], False),
        (_gpt2, ["c_attn", "c_fc"], False),  # transformers' Conv1D (fan_in_fan_out)
        (_llama, ["q_proj", "o_proj"], True),  # DoRA is left unmerged
    ],
)
def test_adapters_merged_for_eval_give_the_unmerged_losses_and_are_restored(
    setup, config, targets, dora
):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear

    _, tokenizer, _, features = setup
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config(tokenizer)).eval()
    before = {n: t.clone() for n, t in base.state_dict().items()}
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        use_dora=dora,
        fan_in_fan_out=config is _gpt2,
    )
    model = get_peft_model(base, lora).eval()  # get_peft_model leaves it in training mode
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained adapter: B is no longer zero
    modules = dict(model.named_modules())
    collator = DynamicPaddingCollator(tokenizer)
    rows = eval_losses(model, features, collator, batch_size=4, device="cpu")
    assert [r.example for r in rows] == [f["example"] for f in features]
    for row, feature in zip(rows, features):
        with torch.no_grad():  # PEFT's own, unmerged forward on the example alone
            alone = model(**collator([feature])).loss.item()
        assert row.loss_sum == pytest.approx(alone * row.tokens, rel=1e-5)
    assert dict(model.named_modules()) == modules
    assert any(isinstance(m, LoraLinear) for m in modules.values())
    # Every base weight is back as it was, the adapted ones under PEFT's `base_layer` names.
    after = model.get_base_model().state_dict()

    def now(name: str) -> torch.Tensor:
        if name in after:
            return after[name]
        stem, _, leaf = name.rpartition(".")
        return after[f"{stem}.base_layer.{leaf}"]

    adapted = [n for n in before if n not in after]
    assert adapted and all(any(t in n for t in targets) for n in adapted)
    assert all(torch.equal(before[n], now(n)) for n in before)


def test_examples_keep_their_split_index_when_one_is_dropped(setup):
    model, tokenizer, examples, _ = setup
    too_long = Example([{"role": "user", "content": "many words " * 60}], "ok", "1")
    split = [examples[0], too_long, examples[1]]
    features, stats = tokenize_examples(split, tokenizer, 96)
    assert stats["dropped"] == 1
    rows = eval_losses(
        model, features, DynamicPaddingCollator(tokenizer), batch_size=2, device="cpu"
    )
    assert [r.example for r in rows] == [0, 2]


def test_nonfinite_logits_give_a_nan_loss(setup):
    model, tokenizer, _, features = setup
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        loss, _ = eval_loss(
            model, features, DynamicPaddingCollator(tokenizer), batch_size=4, device="cpu"
        )
    finally:
        handle.remove()
    assert math.isnan(loss)


@pytest.mark.parametrize(
    "text,complete",
    [
        ("3 + 4 = 7\n#### 7\n", True),
        ("#### 7\nmore", True),
        ("#### 1,000 dollars\n", True),
        ("#### 7", False),  # the line may go on (77, 7.5)
        ("#### \n", False),  # no number on the answer line
        ("#### x\n#### 12\n", True),
        ("7\n8\n", False),
        ("", False),
    ],
)
def test_answer_complete(text, complete):
    assert answer_complete(text) is complete


def _reference_generation(model, tokenizer, examples, max_new_tokens, batch_size):
    """The previous implementation: plain greedy ``generate`` to EOS or the full budget."""
    pad = tokenizer.pad_token_id
    texts = []
    for start in range(0, len(examples), batch_size):
        prompts = [encode_prompt(tokenizer, e.prompt) for e in examples[start : start + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        texts += [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, width:]]
    return texts


@pytest.mark.parametrize("adapted", [False, True])
def test_accuracy_predictions_equal_plain_greedy_generation(setup, adapted):
    model, tokenizer, examples, _ = setup
    if adapted:  # merged for generation: the same greedy tokens as PEFT's own forward
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(
            AutoModelForCausalLM.from_config(model.config),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]),
        ).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    bar = _Bar()
    accuracy, samples = eval_accuracy(
        model, tokenizer, examples, max_new_tokens=24, batch_size=4, device="cpu", progress=bar
    )
    reference = _reference_generation(model, tokenizer, examples, 24, 4)
    assert bar.n == len(examples) == len(samples)
    assert [s["prediction"] for s in samples] == [extract_final_number(t) for t in reference]
    assert all(ref.startswith(s["generated"]) for s, ref in zip(samples, reference))
    assert [s["answer"] for s in samples] == [e.answer for e in examples]
    correct = [s["prediction"] == e.answer for s, e in zip(samples, examples)]
    assert [s["correct"] for s in samples] == correct
    assert accuracy == sum(correct) / len(examples)


class _Scripted(LlamaForCausalLM):
    """Greedy decoding emits ``scripts[row][step]`` (EOS after the script); counts forwards."""

    scripts: list[list[int]] = []
    calls = 0

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        step, eos = type(self).calls, self.config.eos_token_id
        type(self).calls += 1
        logits = torch.full_like(out.logits, -1e4)
        for row, script in enumerate(self.scripts):
            logits[row, -1, script[step] if step < len(script) else eos] = 0.0
        out.logits = logits
        return out


def test_each_sequence_stops_at_its_answer_line_or_eos_and_the_batch_when_all_have(
    setup, tiny_model_dir
):
    _, tokenizer, _, _ = setup
    model = _Scripted.from_pretrained(tiny_model_dir).eval()
    answered = "So 3 + 4 = 7.\n#### 7\nThen 9 more apples and 12 more"
    short = "It is 5"
    never = "no answer line 8 " * 20
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (answered, short, never)]
    ids[1] = ids[1] + [tokenizer.eos_token_id] + ids[0]  # text after EOS must not count
    prompt = [{"role": "user", "content": "q"}]
    # The third reference is wrong on purpose: its prediction is 8, so accuracy is 2 of 3.
    examples = [Example(prompt, "", "7"), Example(prompt, "", "5"), Example(prompt, "", "9")]

    _Scripted.scripts, _Scripted.calls = ids, 0
    accuracy, samples = eval_accuracy(
        model, tokenizer, examples, max_new_tokens=40, batch_size=3, device="cpu"
    )
    first, second, third = samples
    assert first["generated"].startswith("So 3 + 4 = 7.\n#### 7\n")
    assert "9 more" not in first["generated"] and first["prediction"] == "7"
    assert second["generated"] == short and second["prediction"] == "5"
    assert len(tokenizer(third["generated"], add_special_tokens=False)["input_ids"]) == 40
    assert third["prediction"] == "8" and third["answer"] == "9"
    assert [s["correct"] for s in samples] == [True, True, False]
    assert accuracy == pytest.approx(2 / 3) and _Scripted.calls == 40

    # Without the sequence that never stops, the batch ends with its last answer line.
    _Scripted.scripts, _Scripted.calls = ids[:2], 0
    _, samples = eval_accuracy(
        model, tokenizer, examples[:2], max_new_tokens=40, batch_size=2, device="cpu"
    )
    answer_tokens = len(tokenizer(samples[0]["generated"], add_special_tokens=False)["input_ids"])
    assert _Scripted.calls == answer_tokens < len(ids[0])
    assert [s["prediction"] for s in samples] == ["7", "5"]


def test_accuracy_skips_examples_without_a_reference_answer(setup):
    model, tokenizer, examples, _ = setup
    assert eval_accuracy(
        model,
        tokenizer,
        [Example(e.prompt, e.completion, None) for e in examples[:2]],
        max_new_tokens=4,
        batch_size=2,
        device="cpu",
    ) == (None, [])
