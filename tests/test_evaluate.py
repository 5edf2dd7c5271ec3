"""Logits only at scored positions give exactly the usual shifted cross-entropy."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from loraplace.data import DataConfig
from loraplace.evaluate import accepts_logits_mask, completion_loss, completion_positions, eval_loss
from loraplace.run import _ordered_features, train_one
from loraplace.settings import EvalSettings, LoraSettings, TrainingSettings
from loraplace.workbench import Workbench


@pytest.fixture(scope="module")
def bench(tiny_model_dir, tiny_data_file):
    return Workbench.load(
        str(tiny_model_dir),
        DataConfig(dataset=str(tiny_data_file), train_examples=16, eval_examples=10, max_length=96),
    )


def _batch(bench, n=5):
    # Different prompt and answer lengths, so rows have different scored spans and right padding.
    return bench.collator(bench.eval_features[:n])


def test_completion_positions_mark_the_positions_before_each_scored_token():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 6, 7, 9]])
    keep = completion_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]


def test_masked_logits_give_the_models_own_loss(bench):
    batch = _batch(bench)
    labels = batch["labels"]
    assert (labels != -100).sum(dim=1).unique().numel() > 1  # rows really differ
    with torch.no_grad():
        reference = bench.model(**batch).loss  # transformers' shifted cross-entropy
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        masked = bench.model(**inputs, logits_to_keep=completion_positions(labels)).logits
        full = bench.model(**inputs).logits
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


def test_eval_loss_is_the_same_with_and_without_the_logits_mask(bench):
    fallback = _NoMask(bench.model)
    assert accepts_logits_mask(bench.model) and not accepts_logits_mask(fallback)
    masked, n_masked = eval_loss(
        bench.model, bench.eval_features, bench.collator, batch_size=4, device="cpu"
    )
    full, n_full = eval_loss(
        fallback, bench.eval_features, bench.collator, batch_size=4, device="cpu"
    )
    assert (
        n_masked
        == n_full
        == sum(sum(t != -100 for t in f["labels"][1:]) for f in bench.eval_features)
    )
    assert masked == pytest.approx(full, rel=1e-6)


def test_first_training_loss_is_the_base_models_loss_on_the_first_batch(bench, tmp_path):
    # LoRA's B starts at zero, so at step 1 the adapted model is the base model: the logged loss of
    # the first step must be transformers' own loss of the base model on the first batch.
    training = TrainingSettings(steps=1, batch_size=4, learning_rate=1e-3, warmup_steps=0)
    plan = bench.planner.plan({"all": "all"}, 4)[0]
    train_one(
        bench,
        plan,
        3,
        tmp_path / "run",
        lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
        training=training,
        evaluation=EvalSettings(accuracy_examples=0),
        show_progress=False,
    )
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    ordered, _ = _ordered_features(bench.train_features, 4, 1, 3)
    with torch.no_grad():
        expected = bench.model(**bench.collator(ordered[:4])).loss.item()
    assert logged == pytest.approx(expected, rel=1e-5)
