"""What a study loads once: the base model, its tokenizer, the tokenized data, base metrics.

Every run of a study process trains on a fresh adapter around the same frozen base weights
(:meth:`Workbench.fresh_model` shares them without copying), with the same tokenized data,
and reuses the base model's eval loss and accuracy computed once here.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from loraplace.arch import ArchInfo, classify
from loraplace.data import (
    DataConfig,
    DynamicPaddingCollator,
    Example,
    load_dataset_split,
    tokenize_examples,
)
from loraplace.errors import DataError
from loraplace.evaluate import eval_accuracy, eval_loss
from loraplace.files import read_json, write_json_atomic
from loraplace.models import ModelSource, count_params, load_model, load_tokenizer, resolve_model
from loraplace.placement import ModelPlanner
from loraplace.settings import EvalSettings

__all__ = ["Workbench", "pick_device", "versions", "hardware"]


def pick_device(requested: str | None = None) -> tuple[str, torch.dtype]:
    """``(device, compute dtype)``: CUDA with bf16 where supported, else CPU with float32."""
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            from loraplace.errors import LoraplaceError

            raise LoraplaceError(
                f"device '{device}' requested but CUDA is not available; use --device cpu"
            )
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return device, torch.float32


def versions() -> dict:
    import peft
    import transformers

    from loraplace import __version__

    return {
        "loraplace": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def hardware(device: str) -> dict:
    import os

    info = {
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if info["device"] == "cuda":
        info["name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


@dataclass
class Workbench:
    """The base model and data of a study, loaded and tokenized once.

    Attributes:
        source: the resolved model.
        model: the frozen base model (never modified by a run).
        tokenizer: its tokenizer.
        arch: classifier result on the real model.
        base_params: base parameter count.
        train_features, eval_features: tokenized examples (``input_ids``, ``labels``).
        eval_examples: the eval examples (for accuracy by generation).
        data: provenance of the data (source, split sizes, token statistics).
        device, dtype: where and in what precision runs compute.
    """

    source: ModelSource
    model: nn.Module
    tokenizer: object
    arch: ArchInfo
    base_params: int
    train_features: list[dict]
    eval_features: list[dict]
    eval_examples: list[Example]
    data: dict
    device: str
    dtype: torch.dtype
    _base: dict = field(default_factory=dict)

    @classmethod
    def load(cls, model: str, data: DataConfig, device: str | None = None) -> Workbench:
        device, dtype = pick_device(device)
        source = resolve_model(model)
        tokenizer = load_tokenizer(source)
        train, evaluation, provenance = load_dataset_split(data)
        train_features, train_stats = tokenize_examples(train, tokenizer, data.max_length)
        eval_features, eval_stats = tokenize_examples(evaluation, tokenizer, data.max_length)
        if not train_features or not eval_features:
            raise DataError(
                f"no usable examples in '{data.dataset}' after tokenizing to max_length "
                f"{data.max_length}: raise data.max_length"
            )
        base = load_model(source, device=device)
        base.requires_grad_(False)
        base.eval()
        provenance = {**provenance, "train_tokens": train_stats, "eval_tokens": eval_stats}
        return cls(
            source,
            base,
            tokenizer,
            classify(base),
            count_params(base),
            train_features,
            eval_features,
            evaluation,
            provenance,
            device,
            dtype,
        )

    @property
    def planner(self) -> ModelPlanner:
        return ModelPlanner(self.source, self.arch, self.base_params)

    @property
    def collator(self) -> DynamicPaddingCollator:
        return DynamicPaddingCollator(self.tokenizer)

    def fresh_model(self) -> nn.Module:
        """A structural copy of the base model sharing its (frozen) weight tensors.

        PEFT injects adapters by replacing modules, so a run wraps this copy and the base
        model's modules stay as loaded; the weights are shared, not duplicated.
        """
        memo = {id(p): p for p in self.model.parameters()}
        memo.update({id(b): b for b in self.model.buffers()})
        return copy.deepcopy(self.model, memo)

    def base_metrics(self, settings: EvalSettings, store: Path | None = None) -> dict:
        """Eval loss (and accuracy) of the un-adapted model, computed once and reused.

        Args:
            store: a JSON file (a study's ``base.json``) that keeps the result across processes:
                read when it was computed with the same eval settings, device and dtype, written
                (atomically) otherwise. A resumed study or a Ray worker then skips the base eval.
        """
        identity = {
            "accuracy_examples": settings.accuracy_examples,
            "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size,
            "eval_examples": len(self.eval_features),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        key = tuple(identity.values())
        if key in self._base:
            return self._base[key]
        stored = read_json(store) if store is not None else None
        if stored is not None and stored.get("settings") == identity:
            metrics = {
                **{
                    k: stored.get(k)
                    for k in ("eval_loss", "eval_tokens", "accuracy", "eval_time_s")
                },
                "stored": True,
            }
        else:
            start = time.perf_counter()
            loss, tokens = eval_loss(
                self.model,
                self.eval_features,
                self.collator,
                batch_size=settings.batch_size,
                device=self.device,
                dtype=self.dtype,
            )
            accuracy = None
            if settings.accuracy_examples:
                accuracy, _ = eval_accuracy(
                    self.model,
                    self.tokenizer,
                    self.eval_examples[: settings.accuracy_examples],
                    max_new_tokens=settings.max_new_tokens,
                    batch_size=settings.batch_size,
                    device=self.device,
                    dtype=self.dtype,
                )
            metrics = {
                "eval_loss": loss,
                "eval_tokens": tokens,
                "accuracy": accuracy,
                "eval_time_s": round(time.perf_counter() - start, 3),
            }
            if store is not None:
                write_json_atomic(store, {"settings": identity, **metrics})
            metrics["stored"] = False
        self._base[key] = metrics
        return metrics
