"""The plain training loop: batch order, schedule, loss, clipping, callbacks, determinism."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from conftest import make_tiny_tokenizer, write_alpaca_jsonl
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from loraplace.data.batching import (
    DynamicPaddingCollator,
    length_grouped_batches,
    tokenize_examples,
)
from loraplace.data.sources import DataConfig, load_dataset_split
from loraplace.training.loop import batch_order, lr_factor, train_adapter

SETTINGS = dict(
    batch_size=4,
    learning_rate=5e-3,
    warmup_steps=2,
    weight_decay=0.01,
    max_grad_norm=1.0,
    device="cpu",
    dtype=torch.float32,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: a second intra-op thread only adds synchronisation, which a busy 2-core
    # machine turns into seconds per step.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = make_tiny_tokenizer()
    path = write_alpaca_jsonl(tmp_path_factory.mktemp("data") / "arith.jsonl")
    train, _, _ = load_dataset_split(
        DataConfig(dataset=str(path), train_examples=20, eval_examples=8, max_length=96)
    )
    features, _ = tokenize_examples(train, tokenizer, 96)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    base.requires_grad_(False)
    base.eval()
    return base, tokenizer, features


def adapted(base, *, dropout: float = 0.0, layers=None, seed: int = 1):
    """A PEFT model around a structural copy of ``base`` that shares its frozen weights."""
    memo = {id(t): t for t in [*base.parameters(), *base.buffers()]}
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=dropout,
        target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        layers_to_transform=layers,
    )
    return get_peft_model(copy.deepcopy(base, memo), config)


def train(model, features, steps=5, **overrides):
    records = []
    result = train_adapter(
        model,
        features,
        steps=steps,
        seed=3,
        on_step=records.append,
        **{**SETTINGS, **overrides},
    )
    return result, records


def lora_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------
# Batch order and schedule


def test_batch_order_is_full_length_grouped_batches_epoch_after_epoch():
    lengths = [(7 * i) % 23 + 1 for i in range(10)]
    expected = []
    for epoch in range(4):  # 10 examples in batches of 4: 2 full batches per epoch
        expected += [b for b in length_grouped_batches(lengths, 4, 5 + epoch) if len(b) == 4]
    assert len(expected) == 8
    order = batch_order(lengths, 4, 7, 5)
    assert order == expected[:7]
    assert batch_order(lengths, 4, 7, 5) == order
    assert batch_order(lengths, 4, 7, 6) != order
    with pytest.raises(ValueError, match="full batch"):
        batch_order(lengths[:3], 4, 1, 0)


@pytest.mark.parametrize("steps,warmup", [(10, 2), (5, 0), (3, 5), (1, 1)])
def test_lr_factor_is_transformers_linear_schedule_with_warmup(steps, warmup):
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    for step in range(steps):
        assert lr_factor(step, steps, warmup) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()


# --------------------------------------------------------------------------------------------
# The loop


def test_first_loss_is_the_base_models_own_loss_and_grad_norm_is_before_clipping(setup):
    # LoRA's B starts at zero, so at step 1 the adapted model computes the base model's loss.
    base, tokenizer, features = setup
    model = adapted(base)
    first = [features[i] for i in batch_order([len(f["input_ids"]) for f in features], 4, 1, 3)[0]]
    batch = DynamicPaddingCollator(tokenizer)(first)
    with torch.no_grad():
        expected = base(**batch).loss.item()  # transformers' shifted cross-entropy
    reference = adapted(base)
    reference(**batch).loss.backward()
    norm = math.sqrt(
        sum(float(p.grad.pow(2).sum()) for p in reference.parameters() if p.grad is not None)
    )
    _, records = train(model, features, steps=1, max_grad_norm=1e-4)
    assert records[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert records[0]["grad_norm"] == pytest.approx(norm, rel=1e-4) and norm > 1e-4


def test_records_follow_the_schedule_and_count_tokens(setup):
    base, _, features = setup
    result, records = train(adapted(base), features, steps=5)
    batches = batch_order([len(f["input_ids"]) for f in features], 4, 5, 3)
    tokens = [sum(len(features[i]["input_ids"]) for i in b) for b in batches]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["tokens"] for r in records] == [sum(tokens[: k + 1]) for k in range(5)]
    rates = [r["learning_rate"] for r in records]
    assert rates == pytest.approx([5e-3 * f for f in (0, 0.5, 1, 2 / 3, 1 / 3)])
    times = [r["time_s"] for r in records]
    assert times == sorted(times) and times[-1] == pytest.approx(result.train_time_s, abs=1e-3)
    assert (result.steps, result.train_tokens, result.nonfinite) == (5, sum(tokens), False)
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)


def test_training_is_deterministic_and_changes_only_the_adapter(setup):
    base, _, features = setup
    before = {n: t.clone() for n, t in base.state_dict().items()}
    first, second = adapted(base, dropout=0.1), adapted(base, dropout=0.1)
    torch.manual_seed(123)
    outside = torch.random.get_rng_state()
    _, records_a = train(first, features, steps=4)
    assert torch.equal(torch.random.get_rng_state(), outside)  # the caller's RNG is untouched
    _, records_b = train(second, features, steps=4)
    assert [r["loss"] for r in records_a] == [r["loss"] for r in records_b]  # bit-identical
    state_a, state_b = lora_state(first), lora_state(second)
    assert all(torch.equal(state_a[n], state_b[n]) for n in state_a)
    assert any(not torch.equal(state_a[n], lora_state(adapted(base))[n]) for n in state_a)
    assert all(torch.equal(before[n], t) for n, t in base.state_dict().items())
    assert first.training


def test_the_seed_drives_the_lora_dropout(setup):
    base, _, features = setup
    by_length = {len(f["input_ids"]): f for f in features}
    four = [by_length[n] for n in sorted(by_length)[:4]]  # one batch, the same for every seed
    second_losses = {}
    for dropout in (0.0, 0.5):
        for seed in (3, 4):
            records = []
            train_adapter(
                adapted(base, dropout=dropout),
                four,
                steps=2,
                seed=seed,
                on_step=records.append,
                **{**SETTINGS, "warmup_steps": 0},
            )
            # B starts at 0, so dropout first shows in the loss after one update.
            second_losses[dropout, seed] = records[1]["loss"]
    assert second_losses[0.0, 3] == second_losses[0.0, 4]
    assert second_losses[0.5, 3] != second_losses[0.5, 4]


def test_checkpoints_run_outside_the_training_time_in_training_mode_afterwards(setup):
    base, _, features = setup
    model = adapted(base)
    calls = []

    def on_checkpoint(step):
        calls.append((step, model.training))
        model.eval()  # an evaluation leaves the model in eval mode
        time.sleep(0.3)

    started = time.perf_counter()
    result, records = train(
        model, features, steps=4, checkpoint_steps=[2, 4], on_checkpoint=on_checkpoint
    )
    wall = time.perf_counter() - started
    assert [step for step, _ in calls] == [2, 4] and all(mode for _, mode in calls)
    assert result.train_time_s < wall - 0.6
    assert model.training


class _Bar:
    def __init__(self):
        self.n, self.postfix = 0, None

    def update(self, k):
        self.n += k

    def set_postfix(self, **kwargs):
        self.postfix = kwargs


def test_a_nonfinite_loss_is_reported_and_stops_training_without_an_update(setup):
    base, _, features = setup
    model = adapted(base)
    calls = []

    def poison(module, args, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 3 else output

    handle = model.get_base_model().lm_head.register_forward_hook(poison)
    bar = _Bar()
    result, records = train(model, features, steps=6, progress=bar)
    handle.remove()
    assert result.nonfinite and result.steps == 2 and len(records) == 3 and bar.n == 3
    assert math.isnan(records[-1]["loss"]) and records[-1]["grad_norm"] is None
    assert result.train_tokens == records[1]["tokens"]
    assert all(torch.isfinite(p).all() for p in lora_state(model).values())


def test_progress_bar_advances_per_step(setup):
    base, _, features = setup
    bar = _Bar()
    train(adapted(base), features, steps=3, progress=bar)
    assert bar.n == 3 and "loss" in bar.postfix


def test_no_key_value_cache_is_built_in_training(setup):
    # transformers models build a KV cache by default; a training step would only copy into it.
    base, _, features = setup
    model = adapted(base)
    caches = []
    handle = model.get_base_model().model.register_forward_hook(
        lambda module, args, out: caches.append(out.past_key_values)
    )
    train(model, features, steps=1)
    handle.remove()
    assert caches == [None]


def test_a_model_without_trainable_parameters_is_refused(setup):
    base, _, features = setup
    with pytest.raises(ValueError, match="no trainable"):
        train(base, features, steps=1)


def test_same_losses_as_hf_trainer_with_the_same_settings(setup, tmp_path):
    # The loop replaces HF Trainer: same batches, schedule, clipping and fused AdamW, so the
    # same per-step losses.
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from loraplace.training.evaluate import completion_loss

    base, tokenizer, features = setup
    _, records = train(adapted(base), features, steps=4)
    batches = batch_order([len(f["input_ids"]) for f in features], 4, 4, 3)
    ordered = [{k: features[i][k] for k in ("input_ids", "labels")} for b in batches for i in b]
    logged = []

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged.append(logs["loss"])

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=SETTINGS["learning_rate"],
        warmup_steps=SETTINGS["warmup_steps"],
        weight_decay=SETTINGS["weight_decay"],
        max_grad_norm=SETTINGS["max_grad_norm"],
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=3,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        use_cpu=True,
    )
    trainer = Trainer(
        model=adapted(base),
        args=args,
        train_dataset=ordered,
        data_collator=DynamicPaddingCollator(tokenizer),
        compute_loss_func=lambda out, labels, num_items_in_batch=None: completion_loss(
            out.logits, labels
        ),
        callbacks=[Log()],
    )
    trainer.train()
    assert [r["loss"] for r in records] == pytest.approx(logged, rel=1e-4)
