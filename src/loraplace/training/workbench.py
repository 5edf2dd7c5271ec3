"""What a study process loads once: the base model, its tokenizer, the tokenized splits, the
frozen-prefix activation caches and the base model's metrics.

Every run of a study process trains a fresh adapter around the same frozen base weights
(:meth:`Workbench.fresh_model` shares them without copying), on the same tokenized data, and
reuses the base model's eval metrics computed once per study directory (``base.json``).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from torch import nn

from loraplace import store
from loraplace.data.batching import DynamicPaddingCollator, tokenize_examples
from loraplace.data.sources import DataConfig, Example, load_splits
from loraplace.errors import DataError, LoraplaceError
from loraplace.models import ModelSource, count_params, load_model, load_tokenizer, resolve_model
from loraplace.placement.arch import ArchInfo, classify
from loraplace.placement.planner import ModelPlanner
from loraplace.progress import bar
from loraplace.settings import EvalSettings
from loraplace.training.choices import score_task
from loraplace.training.evaluate import eval_accuracy, eval_losses
from loraplace.training.precision import compute_dtype, prepare_base, resolve_precision
from loraplace.training.prefix import PrefixCache, prefix_supported

__all__ = ["Workbench", "Split", "pick_device", "DROPPED_WARNING"]

#: Share of dropped (too long) examples above which a split gets a warning.
DROPPED_WARNING = 0.05
#: Share of available memory a study may spend on frozen-prefix caches.
PREFIX_MEMORY_SHARE = 0.25


def pick_device(requested: str | None = None, precision: str = "fp32") -> tuple[str, str]:
    """``(device, resolved precision)``: CUDA when available (or asked for), else the CPU, and
    ``precision`` as it resolves there (:func:`~loraplace.training.precision.resolve_precision`).

    Raises:
        LoraplaceError: CUDA was asked for and is not available, or bf16 on a GPU without it.
    """
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoraplaceError(
            f"device '{device}' requested but CUDA is not available; use --device cpu"
        )
    return device, resolve_precision(precision, device)


@dataclass
class Split:
    """One tokenized split: its examples, features (``input_ids``, ``labels``, ``example``)
    and token statistics (``examples``, ``dropped``, ``truncated``, ``tokens``, ...)."""

    name: str
    examples: list[Example]
    features: list[dict]
    stats: dict


@dataclass
class Workbench:
    """The base model and data of a study, loaded and tokenized once.

    Attributes:
        source: the resolved model.
        model: the frozen base model (never modified by a run).
        tokenizer: its tokenizer.
        arch: classifier result on the real model.
        base_params: base parameter count.
        train, validation, eval: the tokenized splits (validation may be empty).
        data: provenance of the data (source, sha256, split sizes, token statistics).
        device, dtype: where and in what dtype runs compute.
        precision: the resolved precision, ``fp32`` or ``bf16`` (the base's weight matrices
            are then stored in bf16).
    """

    source: ModelSource
    model: nn.Module
    tokenizer: object
    arch: ArchInfo
    base_params: int
    train: Split
    validation: Split
    eval: Split
    data: dict
    device: str
    dtype: torch.dtype
    precision: str = "fp32"
    _base: dict = field(default_factory=dict)
    _prefix: dict = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        model: str,
        data: DataConfig,
        device: str | None = None,
        *,
        trust_remote_code: bool = False,
        min_train: int = 1,
        precision: str = "fp32",
    ) -> Workbench:
        """Load the model and tokenize the data splits.

        Args:
            min_train: fewer kept training examples than this (a batch) is an error.
            precision: ``fp32``, ``bf16`` or ``auto`` (:mod:`loraplace.training.precision`).

        Raises:
            DataError: no usable examples, or fewer training examples than a batch.
            LoraplaceError: the device or precision is not available.
        """
        device, precision = pick_device(device, precision)
        dtype = compute_dtype(precision)
        source = resolve_model(model, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(source)
        parts = load_splits(data)
        splits = {}
        for name, examples in (
            ("train", parts.train),
            ("validation", parts.validation),
            ("eval", parts.eval),
        ):
            features, stats = tokenize_examples(examples, tokenizer, data.max_length)
            if examples and stats["dropped"] > DROPPED_WARNING * len(examples):
                warnings.warn(
                    f"{stats['dropped']} of {len(examples)} {name} examples are longer than "
                    f"max_length {data.max_length} before their completion and were dropped; "
                    "raise data.max_length",
                    stacklevel=2,
                )
            splits[name] = Split(name, examples, features, stats)
        if not splits["eval"].features or len(splits["train"].features) < min_train:
            raise DataError(
                f"'{data.dataset}' leaves {len(splits['train'].features)} train and "
                f"{len(splits['eval'].features)} eval examples after tokenizing to max_length "
                f"{data.max_length}; at least {min_train} train example(s) (a batch) and 1 eval "
                "example are needed: raise data.max_length or the example counts"
            )
        base = load_model(source, device=device)
        base.requires_grad_(False)
        base.eval()
        prepare_base(base, device, dtype)
        provenance = {
            **parts.provenance,
            **{f"{name}_tokens": split.stats for name, split in splits.items()},
        }
        return cls(
            source,
            base,
            tokenizer,
            classify(base),
            count_params(base),
            splits["train"],
            splits["validation"],
            splits["eval"],
            provenance,
            device,
            dtype,
            precision,
        )

    @classmethod
    def for_config(cls, config) -> Workbench:
        """The model and data of a study config (a :class:`~loraplace.config.StudyConfig`),
        each training batch full."""
        return cls.load(
            config.model,
            config.data,
            config.device,
            trust_remote_code=config.trust_remote_code,
            min_train=config.training.batch_size,
            precision=config.training.precision,
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

    def prefix(self, split: Split, layer: int) -> tuple[object | None, str]:
        """The frozen-prefix cache of ``split`` for layer ``layer`` (built once), or ``None``
        with the reason it is not used (layer 0, unsupported architecture, too large)."""

        if layer <= 0 or not split.features:
            return None, "the lowest adapted layer is 0"
        key = (split.name, layer)
        if key not in self._prefix:
            supported, reason = prefix_supported(self.model, self.arch, layer, dtype=self.dtype)
            if not supported:
                self._prefix[key] = (None, reason)
            else:
                tokens = sum(len(f["input_ids"]) for f in split.features)
                wanted = tokens * self.arch.hidden_size * 4
                if self.device.startswith("cuda"):
                    available = torch.cuda.mem_get_info(torch.device(self.device))[0]
                else:
                    available = psutil.virtual_memory().available
                budget = PREFIX_MEMORY_SHARE * available
                held = sum(c.nbytes for c, _ in self._prefix.values() if c is not None)
                if held + wanted > budget:
                    self._prefix[key] = (None, f"cache of {wanted / 2**20:.0f} MB does not fit")
                else:
                    cache = PrefixCache.build(
                        self.model,
                        split.features,
                        layer,
                        device=self.device,
                        dtype=self.dtype,
                        batch_size=8,
                        layers_path=self.arch.layers_path,
                    )
                    self._prefix[key] = (cache, "used")
        return self._prefix[key]

    def base_metrics(
        self,
        settings: EvalSettings,
        out: Path | None = None,
        identity=None,
        *,
        show_progress: bool = True,
    ) -> dict:
        """Eval loss (and accuracy) of the un-adapted model, computed once and reused.

        Args:
            settings: the eval settings (they are part of the stored record's key).
            out: a study directory: ``base.json`` and ``base_eval_examples.jsonl`` there keep
                the result across processes. It is read when it was computed for the same
                model, data, eval settings, device and dtype, and written otherwise.
            identity: the study's model and data identity (part of the key).
        """
        key_fields = {
            "identity": identity,
            "accuracy_examples": settings.accuracy_examples,
            "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size,
            "eval_examples": len(self.eval.features),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        cache_key = repr(sorted(key_fields.items(), key=lambda kv: kv[0]))
        if cache_key in self._base:
            return self._base[cache_key]
        stored = store.read_json(out / store.BASE_FILE) if out is not None else None
        if stored is not None and stored.get("settings") == key_fields:
            metrics = {
                **{
                    k: stored.get(k)
                    for k in ("eval_loss", "eval_tokens", "accuracy", "eval_time_s")
                },
                "stored": True,
            }
        else:
            start = time.perf_counter()
            total = len(self.eval.features)
            with bar(total, "base model: eval loss", unit="ex", show=show_progress) as progress:
                rows = eval_losses(
                    self.model,
                    self.eval.features,
                    self.collator,
                    batch_size=settings.batch_size,
                    device=self.device,
                    dtype=self.dtype,
                    progress=progress,
                )
            tokens = sum(n for _, n, _ in rows)
            loss = sum(s for _, _, s in rows) / tokens
            accuracy = None
            if settings.accuracy_examples:
                problems = self.eval.examples[: settings.accuracy_examples]
                with bar(
                    len(problems), "base model: accuracy", unit="problem", show=show_progress
                ) as progress:
                    accuracy, _ = eval_accuracy(
                        self.model,
                        self.tokenizer,
                        problems,
                        max_new_tokens=settings.max_new_tokens,
                        batch_size=settings.batch_size,
                        device=self.device,
                        dtype=self.dtype,
                        progress=progress,
                    )
            # A task scored by accuracy: every eval problem (training/choices.py).
            task = score_task(
                self.model,
                self.tokenizer,
                self.eval.examples,
                self.collator,
                loss_pass=eval_losses,
                batch_size=settings.batch_size,
                device=self.device,
                dtype=self.dtype,
            )
            accuracy = task.accuracy if task is not None else accuracy
            metrics = {
                "eval_loss": loss if math.isfinite(loss) else None,
                "eval_tokens": tokens,
                "accuracy": accuracy,
                "eval_time_s": round(time.perf_counter() - start, 3),
            }
            if out is not None:
                store.write_eval_examples(out / store.BASE_EXAMPLES_FILE, rows)
                if task is not None:
                    store.write_text_atomic(out / store.BASE_ANSWERS_FILE, task.jsonl())
                store.write_json_atomic(out / store.BASE_FILE, {"settings": key_fields, **metrics})
            metrics["stored"] = False
        self._base[cache_key] = metrics
        return metrics
