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
from loraplace.training.evaluate import head_loss, scoring_head
from loraplace.training.loop import batch_order, batches_from, lr_factor, train_adapter

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


def _eager_order(lengths: list[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The batch order as loraplace built it up to 0.x, whole: the saved training states and
    the committed results were trained on it."""
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        batches += [
            b
            for b in length_grouped_batches(lengths, batch_size, seed + epoch)
            if len(b) == batch_size
        ]
        epoch += 1
    return batches[:steps]


@pytest.mark.parametrize("n,batch_size", [(10, 4), (256, 4), (37, 5), (64, 16), (300, 2), (4, 4)])
def test_the_lazy_batch_order_is_the_eager_one_for_every_seed(n, batch_size):
    import itertools

    lengths = [(13 * i) % 97 + 1 for i in range(n)]
    for seed in (0, 1, 2, 7, 123):
        eager = _eager_order(lengths, batch_size, 200, seed)
        assert list(itertools.islice(batches_from(lengths, batch_size, seed), 200)) == eager
        assert batch_order(lengths, batch_size, 200, seed) == eager
        for start in (0, 1, 63, 64, 65, 150):  # a resumed run goes on at its step
            lazy = itertools.islice(batches_from(lengths, batch_size, seed, start), 200 - start)
            assert list(lazy) == eager[start:]


def test_the_batch_order_holds_one_epoch_whatever_the_steps():
    import itertools
    import tracemalloc

    lengths = [(13 * i) % 97 + 1 for i in range(256)]
    full = len([b for b in length_grouped_batches(lengths, 4, 0) if len(b) == 4])
    tracemalloc.start()
    order = batches_from(lengths, 4, 0)
    for _ in itertools.islice(order, 20 * full):  # 20 epochs
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200_000  # one epoch of 64 batches, not 20
    # A state saved at step 10**12 goes on without drawing the epochs before it.
    start = 10**12
    epoch, skip = divmod(start, full)
    expected = [b for b in length_grouped_batches(lengths, 4, epoch) if len(b) == 4][skip]
    assert next(batches_from(lengths, 4, 0, start)) == expected


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
        if not module.training:  # the check that the model splits into backbone and head
            return output
        calls.append(1)
        return output * float("nan") if len(calls) == 3 else output

    handle = model.get_base_model().model.norm.register_forward_hook(poison)
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
        lambda module, args, out: caches.append(out.past_key_values) if module.training else None
    )
    train(model, features, steps=1)
    handle.remove()
    assert caches == [None]


def test_the_chunked_head_loss_and_its_gradient_are_the_full_logits_ones():
    import torch.nn.functional as F

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    full = F.cross_entropy(head(hidden), targets, reduction="sum")
    (expected,) = torch.autograd.grad(full, hidden)
    for chunk in (1, 5, 23, 256):
        rows = hidden.detach().clone().requires_grad_(True)
        loss = head_loss(rows, targets, head, torch.float32, chunk=chunk)
        (0.5 * loss).backward()
        assert loss.item() == pytest.approx(full.item(), rel=1e-5)
        assert torch.allclose(rows.grad, 0.5 * expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert head_loss(hidden, targets, head, torch.float32, chunk=4).item() == pytest.approx(
            full.item(), rel=1e-5
        )


def test_training_through_the_chunked_head_is_training_on_the_full_logits(setup, monkeypatch):
    # The loss is taken from the backbone's hidden states at the scored positions, through the
    # LM head a chunk at a time; the model's own logits (all positions) are never computed.
    import loraplace.training.loop as loop
    from loraplace.training.evaluate import HEAD_CHUNK, completion_positions

    base, tokenizer, features = setup
    model = adapted(base)
    assert scoring_head(model, device="cpu", dtype=torch.float32) is not None
    heads = []
    handle = model.get_base_model().lm_head.register_forward_hook(
        lambda module, args, out: heads.append(tuple(out.shape)) if module.training else None
    )
    _, chunked = train(model, features, steps=4)
    handle.remove()
    collate = DynamicPaddingCollator(tokenizer)
    batches = batch_order([len(f["input_ids"]) for f in features], 4, 4, 3)
    scored = [
        int(completion_positions(collate([features[i] for i in b])["labels"]).sum())
        for b in batches
    ]
    assert max(scored) <= HEAD_CHUNK  # so one chunk per step, of the scored rows only
    assert [rows for rows, _ in heads] == scored
    monkeypatch.setattr(loop, "scoring_head", lambda *args, **kwargs: None)
    _, full = train(adapted(base), features, steps=4)
    assert [r["loss"] for r in chunked] == pytest.approx([r["loss"] for r in full], rel=1e-5)
    norms = [r["grad_norm"] for r in chunked]
    assert norms == pytest.approx([r["grad_norm"] for r in full], rel=1e-5)


def test_a_head_that_is_not_the_whole_story_is_not_split(setup):
    # A model whose forward changes the head's logits (a logit scale, soft-capping) keeps its
    # own logits.
    base, _, _ = setup
    model = adapted(base)
    inner = model.get_base_model()
    original = type(inner).forward

    class Capped(type(inner)):
        def forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            out.logits = 2 * out.logits
            return out

    capped = copy.copy(inner)
    capped.__class__ = Capped
    assert scoring_head(inner, device="cpu", dtype=torch.float32) is not None
    assert scoring_head(capped, device="cpu", dtype=torch.float32) is None


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
