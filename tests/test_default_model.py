"""End to end on the embedded default model (SmolLM2-135M from its PyPI package; no network)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from loraplace.cli.main import main

pytestmark = pytest.mark.slow


def test_study_on_the_embedded_default_model(tmp_path, capsys):
    config = tmp_path / "tiny-default.yaml"
    config.write_text(
        "name: e2e\nmodel: smollm2-135m\n"
        "data: {dataset: gsm8k, train_examples: 8, eval_examples: 4, max_length: 128}\n"
        "lora: {rank: 4, alpha: 8, dropout: 0.0}\n"
        "training: {steps: 2, batch_size: 2, learning_rate: 1.0e-4, seeds: [0]}\n"
        "eval: {accuracy_examples: 2, max_new_tokens: 8}\n"
        "strategies: {top-mlp: mlp@last:2}\n"
    )
    out = tmp_path / "out"
    assert main(["study", str(config), "--out", str(out)]) == 0
    result = json.loads((out / "runs" / "top-mlp--seed0" / "result.json").read_text())
    assert result["status"] == "finished"
    assert result["trainable_params"] == 2 * 4 * (
        576 + 1536 + 576 + 1536 + 1536 + 576
    )  # gate, up, down at r4
    assert result["perplexity"] == pytest.approx(math.exp(result["eval_loss"]))
    assert (
        0 < result["eval_loss"] < 5 and 0 < result["base_eval_loss"] < 5
    )  # a real model, not random
    assert result["model"]["id"] == "smollm2-135m"
    with open(out / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    assert (out / "report" / "report.html").stat().st_size > 0
