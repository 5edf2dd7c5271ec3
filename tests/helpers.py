"""Helpers shared by several test modules (tests/ has no ``__init__.py``; pytest puts it on
``sys.path``, so a test imports them with ``from helpers import tiny_study``).

- Study configs on the tiny model of ``conftest``: :func:`tiny_study`, and :func:`tiny_sweep`
  for rank sweeps with learning-rate selection.
- Decoder families for the architecture classifier: one :class:`ArchCase` per family in
  :data:`ARCHS`, built on the meta device by :func:`meta_model`.
- Statistics worked out independently of loraplace: Holm's procedure as published
  (:func:`holm_rejects`, :func:`holm_by_definition`) and per-example eval arrays
  (:func:`example_runs`).
- Hand-made study directories for the report: :func:`record` (a ``result.json``),
  :func:`write_config` (a ``study.yaml``), :func:`make_study` (a whole study) and the study
  :data:`MAIN`, with the role tables :data:`ATTN` and :data:`MLP` and :func:`placement_of`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    FalconConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
)

from loraplace import store
from loraplace.config.study import load_study_config

# --- Study configs on the tiny model -------------------------------------------------------------


def tiny_study(model_dir, data_file, **overrides) -> dict:
    raw = {
        "name": "tiny",
        "model": str(model_dir),
        "data": {
            "dataset": str(data_file),
            "train_examples": 24,
            "eval_examples": 8,
            "max_length": 96,
        },
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "training": {"steps": 3, "batch_size": 4, "learning_rate": 1e-3, "seeds": [0, 1]},
        "eval": {"accuracy_examples": 2, "max_new_tokens": 4},
        "strategies": {"baseline": "all", "attention-only": "attn", "top": "mlp@last:1"},
        "reference": "baseline",
    }
    raw.update(overrides)
    return raw


def tiny_sweep(model_dir, data_file) -> dict:
    raw = tiny_study(model_dir, data_file, strategies={"all": "all", "top": "mlp@last:1"})
    raw["reference"] = "all"
    raw["data"] = {**raw["data"], "validation_examples": 8}
    raw["eval"] = {"accuracy_examples": 0, "checkpoints": [0.5]}
    raw["training"] = {**raw["training"], "steps": 4, "learning_rates": [1.0e-3, 3.0e-3]}
    raw["ranks"] = [2, 4]
    return raw


# --- Decoder families ----------------------------------------------------------------------------


H, INTER, VOCAB = 64, 128, 128
GQA = dict(
    hidden_size=H,
    intermediate_size=INTER,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
)
LLAMA_ROLES = {
    "self_attn.q_proj": ("q",),
    "self_attn.k_proj": ("k",),
    "self_attn.v_proj": ("v",),
    "self_attn.o_proj": ("o",),
    "mlp.gate_proj": ("gate",),
    "mlp.up_proj": ("up",),
    "mlp.down_proj": ("down",),
}
FALCON_BLOOM_ROLES = {
    "self_attention.query_key_value": ("q", "k", "v"),
    "self_attention.dense": ("o",),
    "mlp.dense_h_to_4h": ("up",),
    "mlp.dense_4h_to_h": ("down",),
}


@dataclass(frozen=True)
class ArchCase:
    """One decoder family: how to build it tiny, and what the classifier must find."""

    name: str
    config_cls: type
    config: dict
    layers_path: str
    num_layers: int
    roles: dict[str, tuple[str, ...]]
    """module name inside a decoder layer -> its roles (several when fused)."""
    fused_qkv: bool = False
    extra_strategies: tuple[str, ...] = field(default=())
    """Strategies valid only for this family (besides test_arch's :data:`STRATEGIES`)."""

    def build(self, device: str) -> nn.Module:
        torch.manual_seed(0)
        with torch.device(device):
            return AutoModelForCausalLM.from_config(self.config_cls(**self.config))


ARCHS = [
    ArchCase(
        "llama",
        LlamaConfig,
        dict(GQA, num_hidden_layers=3),
        "model.layers",
        3,
        LLAMA_ROLES,
        extra_strategies=("q,v", "q,v@0,2+down@1:r4"),
    ),
    ArchCase(
        "mistral",
        MistralConfig,
        dict(GQA, num_hidden_layers=2),
        "model.layers",
        2,
        LLAMA_ROLES,
        extra_strategies=("q,v",),
    ),
    ArchCase(
        "qwen2",
        Qwen2Config,
        dict(GQA, num_hidden_layers=2),
        "model.layers",
        2,
        LLAMA_ROLES,
        extra_strategies=("k,o@every:2",),
    ),
    # Gemma: head_dim * heads (96) differs from the hidden size; multi-query k/v.
    ArchCase(
        "gemma",
        GemmaConfig,
        dict(GQA, num_hidden_layers=2, num_key_value_heads=1, head_dim=24),
        "model.layers",
        2,
        LLAMA_ROLES,
        extra_strategies=("q,v",),
    ),
    ArchCase(
        "gpt2",
        GPT2Config,
        dict(n_embd=H, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64),
        "transformer.h",
        2,
        {
            "attn.c_attn": ("q", "k", "v"),
            "attn.c_proj": ("o",),
            "mlp.c_fc": ("up",),
            "mlp.c_proj": ("down",),
        },
        fused_qkv=True,
        extra_strategies=("qkv@0:r4+up,down@1", "o,down@0"),
    ),
    ArchCase(
        "gpt_neox",
        GPTNeoXConfig,
        dict(
            hidden_size=H,
            intermediate_size=INTER,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=VOCAB,
        ),
        "gpt_neox.layers",
        2,
        {
            "attention.query_key_value": ("q", "k", "v"),
            "attention.dense": ("o",),
            "mlp.dense_h_to_4h": ("up",),
            "mlp.dense_4h_to_h": ("down",),
        },
        fused_qkv=True,
    ),
    ArchCase(
        "opt",
        OPTConfig,
        dict(
            hidden_size=H,
            ffn_dim=INTER,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=VOCAB,
            word_embed_proj_dim=H,
            max_position_embeddings=64,
        ),
        "model.decoder.layers",
        2,
        {
            "self_attn.q_proj": ("q",),
            "self_attn.k_proj": ("k",),
            "self_attn.v_proj": ("v",),
            "self_attn.out_proj": ("o",),
            "fc1": ("up",),
            "fc2": ("down",),
        },
        extra_strategies=("q,v",),
    ),
    ArchCase(
        "phi3",
        Phi3Config,
        dict(GQA, num_hidden_layers=2, pad_token_id=0),
        "model.layers",
        2,
        {
            "self_attn.qkv_proj": ("q", "k", "v"),
            "self_attn.o_proj": ("o",),
            "mlp.gate_up_proj": ("gate", "up"),
            "mlp.down_proj": ("down",),
        },
        fused_qkv=True,
        extra_strategies=("gate,up@0+o", "o,down@0"),
    ),
    # Falcon (7B-style): multi-query attention, fused query_key_value of width
    # hidden + 2 * head_dim.
    ArchCase(
        "falcon",
        FalconConfig,
        dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB),
        "transformer.h",
        2,
        FALCON_BLOOM_ROLES,
        fused_qkv=True,
    ),
    # Falcon (40B-style): grouped key/value heads.
    ArchCase(
        "falcon_new",
        FalconConfig,
        dict(
            hidden_size=H,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_kv_heads=2,
            new_decoder_architecture=True,
            vocab_size=VOCAB,
        ),
        "transformer.h",
        2,
        FALCON_BLOOM_ROLES,
        fused_qkv=True,
    ),
    ArchCase(
        "bloom",
        BloomConfig,
        dict(hidden_size=H, n_layer=2, n_head=4, vocab_size=VOCAB),
        "transformer.h",
        2,
        FALCON_BLOOM_ROLES,
        fused_qkv=True,
    ),
]


_META: dict[str, nn.Module] = {}


def meta_model(case: ArchCase) -> nn.Module:
    if case.name not in _META:
        _META[case.name] = case.build("meta")
    return _META[case.name]


# --- Statistics ----------------------------------------------------------------------------------


def holm_rejects(pvalues: list[float], alpha: float) -> set[int]:
    """Holm's step-down procedure as published: reject in order while p_(j) <= alpha/(m-j+1)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected: set[int] = set()
    for j, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - j):
            break
        rejected.add(i)
    return rejected


def holm_by_definition(ps: list[float]) -> list[float]:
    """Smallest alpha on a fine grid at which Holm's step-down procedure rejects each test."""
    # The rejections change only at alpha = p_j · k; nudge up past rounding. Never rejected: 1.
    grid = np.concatenate([np.asarray(ps) * k for k in range(1, len(ps) + 1)]) * (1 + 1e-12)
    grid = np.unique(grid[grid < 1])
    return [min((a for a in grid if i in holm_rejects(ps, a)), default=1.0) for i in range(len(ps))]


def example_runs(seed: int, n_seeds: int = 3, n_examples: int = 128) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        s: np.column_stack(
            [rng.integers(5, 60, n_examples), rng.gamma(2.0, 10.0, n_examples)]
        ).astype(float)
        for s in range(n_seeds)
    }


# --- Hand-made study directories for the report --------------------------------------------------


ATTN = {"q": 8, "k": 8, "v": 8, "o": 8}
MLP = {"gate": 8, "up": 8, "down": 8}
LAYERS = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def placement_of(roles: dict[str, int], layers: range = range(LAYERS)) -> dict[str, dict[str, int]]:
    return {str(i): dict(roles) for i in layers}


def record(name, spec, seed, params, placement, loss, time_s, accuracy=None, **extra):
    """A ``result.json`` as a run writes it; ``accuracy`` is a fraction or a per-problem list."""
    failed = loss is None
    correct = accuracy if isinstance(accuracy, list) else None
    if correct is not None:
        accuracy = sum(correct) / len(correct)
    return {
        "name": name,
        "spec": spec,
        "seed": seed,
        "rank": None,
        "stage": "final",
        "learning_rate": 2e-4,
        "ranks": {spec.split("@")[0]: 8},
        "targets": [],
        "placement": placement,
        "num_layers": LAYERS,
        "status": "failed" if failed else "finished",
        "error": "nan_loss" if failed else None,
        "trainable_params": params,
        "total_params": 100_000 + params,
        "trainable_pct": 100.0 * params / (100_000 + params),
        "eval_loss": loss,
        "perplexity": None if failed else math.exp(loss),
        "base_eval_loss": 2.5,
        "eval_tokens": 1000,
        "accuracy": accuracy,
        "correct": correct,
        "base_accuracy": 0.1,
        "accuracy_examples": len(correct) if correct else 4,
        "train_time_s": time_s,
        "train_tokens": 4000,
        "tokens_per_s": 4000 / time_s,
        "steps": 4,
        "peak_memory_mb": 500.0 + seed,
        "model": {"id": "tiny-llama", "source": "test"},
        "dataset": {"dataset": "toy", "train_tokens": {"examples": 8, "dropped": 0}},
        "versions": {"torch": "2.x", "loraplace": "0.1.0"},
        "hardware": {"device": "cpu", "name": "test-cpu", "cpus": 2},
        "started_at": f"2025-01-01T00:0{seed}:00",
        "finished_at": f"2025-01-01T00:0{seed}:30",
        **extra,
    }


def write_config(root: Path, strategies: dict[str, str], **raw) -> None:
    """``study.yaml`` as a study writes it: the validated config's ``to_dict()``."""
    config = load_study_config(
        {"name": "toy_study", "model": "tiny", "strategies": strategies, **raw}, check_model=False
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def example_rows(loss: float, seed: int, n: int = 6) -> list[tuple[int, int, float]]:
    """Per-example ``(index, tokens, loss_sum)`` whose token-weighted mean is exactly ``loss``."""
    noise = np.random.default_rng(seed).normal(0, 0.3, n)
    noise -= noise.mean()
    return [(i, 10, 10 * (loss + e)) for i, e in enumerate(noise)]


def make_study(
    root: Path,
    strategies: dict,
    reference: str = "baseline",
    extra_dirs: tuple = (),
    seeds: list[int] | None = None,
    examples: bool = False,
    **raw,
) -> Path:
    """``strategies``: name -> (spec, trainable params, placement, [(loss or None, time[,
    accuracy]), ...] by seed)."""
    n_seeds = max(len(s[3]) for s in strategies.values())
    training = {"steps": 4, "seeds": seeds or list(range(n_seeds)), **raw.pop("training", {})}
    specs = {n: s[0] for n, s in strategies.items()}
    write_config(root, specs, reference=reference, training=training, **raw)
    for name, (spec, params, placement, runs) in strategies.items():
        for seed, (loss, time_s, *acc) in enumerate(runs):
            run = store.RunKey(name, seed).run_dir(root)
            rec = record(name, spec, seed, params, placement, loss, time_s, *(acc or [None]))
            store.write_result(run, rec)
            curve = [{"step": s, "loss": 3.0 - 0.3 * s + 0.05 * seed} for s in range(1, 5)]
            lines = "".join(json.dumps(c) + "\n" for c in curve)
            (run / "metrics.jsonl").write_text(lines + '{"step": 5, "lo')  # cut by a kill
            if examples and loss is not None:
                store.write_eval_examples(run / "eval_examples.jsonl", example_rows(loss, seed))
    for d in extra_dirs:  # a run still in progress: metrics but no result.json
        (root / "runs" / d).mkdir(parents=True)
        (root / "runs" / d / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    return root


MAIN = {
    "baseline": (
        "all",
        1000,
        placement_of({**ATTN, **MLP}),
        [(1.0, 10.0, 0.5), (1.1, 10.0, 0.25), (1.2, 10.0, 0.5)],
    ),
    "attention-only": ("attn", 400, placement_of(ATTN), [(1.02, 5.0), (1.13, 5.0), (1.21, 5.0)]),
    "ffn-only": ("mlp", 600, placement_of(MLP), [(2.0, 8.0), (2.1, 8.0), (2.2, 8.0)]),
    "last_half": (
        "all@last:2",
        500,
        placement_of({**ATTN, **MLP}, range(2, 4)),
        [(0.9, 4.0), (None, 4.0)],
    ),
}
