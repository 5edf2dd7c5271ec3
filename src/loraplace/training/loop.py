"""The training loop of a run: plain PyTorch, no training framework.

One function, :func:`train_adapter`, trains the LoRA parameters of a PEFT-wrapped causal LM for
a fixed number of optimizer steps on a fixed sequence of batches (:func:`batches_from`), with
AdamW, a linear warm-up then linear decay, gradient clipping and the mean next-token loss over
completion tokens. It reproduces what the study used to get from HF ``Trainer`` with these
settings, without its per-step machinery, and it can start the forward pass from a
frozen-prefix activation cache (:mod:`loraplace.prefix`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import torch

from loraplace.data.batching import DynamicPaddingCollator, length_grouped_batches
from loraplace.training.evaluate import (
    accepts_logits_mask,
    completion_loss,
    completion_positions,
    forward_scored,
    head_loss,
    scored_hidden,
    scoring_head,
)
from loraplace.training.precision import adapter_sums, autocast_for
from loraplace.training.prefix import PrefixCache

__all__ = [
    "TrainResult",
    "TrainState",
    "batch_order",
    "batches_from",
    "lr_factor",
    "train_adapter",
]


@dataclass(frozen=True)
class TrainResult:
    """What a training loop did."""

    steps: int
    """Optimizer steps done (a step whose loss is non-finite makes no update)."""
    train_time_s: float
    """Wall time of training, excluding the time spent in ``on_checkpoint``."""
    train_tokens: int
    """Non-padding tokens of the batches of the steps done."""
    nonfinite: bool
    """True when a non-finite loss stopped training."""


@dataclass
class TrainState:
    """Where a training loop stands after ``step`` batches: enough to go on from there exactly
    as if it had never stopped (the batches are a function of the seed, so only the step,
    the trainable weights, the optimizer and the random state are needed)."""

    step: int
    """Batches consumed."""
    done: int
    """Optimizer steps made."""
    tokens: int
    train_time_s: float
    params: list[torch.Tensor]
    """The trainable parameters, in ``model.parameters()`` order."""
    optimizer: dict
    """``optimizer.state_dict()``."""
    rng: torch.Tensor
    """torch's CPU random state (LoRA dropout), and the device's on CUDA."""
    device_rng: torch.Tensor | None = None


def batches_from(
    lengths: list[int], batch_size: int, seed: int, start: int = 0
) -> Iterator[list[int]]:
    """The sequence of training batches from batch ``start`` on, drawn one epoch at a time.

    Epoch ``e`` draws :func:`~loraplace.data.batching.length_grouped_batches` with seed
    ``seed + e`` and keeps its full batches; the epochs follow each other without end. Only one
    epoch is held at a time, so memory does not grow with the number of steps, and every epoch
    has the same number of full batches (its mega-batches have the same sizes whatever the
    seed), so ``start`` skips whole epochs without drawing them. The order depends only on the
    lengths, the batch size and the seed: every strategy of a study trains on the same batches
    for a given seed.

    Args:
        lengths: Sequence length of each training feature.
        batch_size: Examples per batch.
        seed: The run's seed.
        start: Batches to skip (a resumed run's step).

    Returns:
        An endless iterator of lists of ``batch_size`` indices into ``lengths``.

    Raises:
        ValueError: there are fewer examples than ``batch_size``.
    """
    if len(lengths) < batch_size:
        raise ValueError(
            f"cannot form a full batch: {len(lengths)} training examples, batch_size {batch_size}"
        )

    def epoch(e: int) -> list[list[int]]:
        drawn = length_grouped_batches(lengths, batch_size, seed + e)
        return [b for b in drawn if len(b) == batch_size]

    def endless(e: int, skip: int) -> Iterator[list[int]]:
        while True:
            yield from epoch(e)[skip:]
            e, skip = e + 1, 0

    return endless(*divmod(start, len(epoch(0))))


def batch_order(lengths: list[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The first ``steps`` batches of :func:`batches_from` as a list (for a few batches: a
    training loop iterates :func:`batches_from` itself).

    Raises:
        ValueError: there are fewer examples than ``batch_size``.
    """
    return list(itertools.islice(batches_from(lengths, batch_size, seed), steps))


def lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier before optimizer step ``step`` (0-based): warm-up, then decay.

    Linear warm-up from 0 over ``warmup_steps`` steps, then linear decay to 0 at ``steps``; the
    schedule of transformers' ``get_linear_schedule_with_warmup``.

    Args:
        step: Optimizer steps done so far.
        steps: Total optimizer steps.
        warmup_steps: Warm-up steps.

    Returns:
        The factor in [0, 1].
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (steps - step) / max(1, steps - warmup_steps))


def _rng_fork(device: str):
    """Fork torch's global RNG (and the device's), so seeding dropout leaves the caller's alone."""
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    return torch.random.fork_rng(devices=devices)


def _step_loss(model, head, inputs: dict, labels: torch.Tensor, dtype, mask_logits: bool):
    """The mean loss over the batch's scored tokens: through the chunked LM head where the
    model splits into backbone and head (:func:`~loraplace.training.evaluate.scoring_head`),
    else from the model's logits at the scored positions."""
    if head is None:
        return completion_loss(
            forward_scored(model, inputs, labels, mask_logits=mask_logits), labels
        )
    keep = completion_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    total = head_loss(scored_hidden(head, inputs, labels), targets, head.head, dtype)
    return total / max(targets.numel(), 1)


@contextlib.contextmanager
def _prefix_for(prefix: PrefixCache | None, model, batch_ids: list[int]):
    if prefix is None:
        yield
        return
    with prefix.attached(model):
        prefix.select(batch_ids)
        yield


# C901: the training step reads best as one loop.
def train_adapter(  # noqa: C901
    model,
    features: Sequence[dict],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float,
    max_grad_norm: float,
    seed: int,
    device: str,
    dtype: torch.dtype,
    prefix: PrefixCache | None = None,
    on_step: Callable[[dict], None] | None = None,
    checkpoint_steps: Collection[int] = (),
    on_checkpoint: Callable[[int], None] | None = None,
    progress=None,
    pad_token_id: int = 0,
    resume: TrainState | None = None,
    on_state: Callable[[TrainState], None] | None = None,
    state_every_s: float = 300.0,
) -> TrainResult:
    """Train the trainable (LoRA) parameters of ``model`` for ``steps`` optimizer steps.

    The batches are :func:`batches_from` ``(lengths, batch_size, seed)``, right-padded to their
    longest sequence. Each step computes the mean next-token cross-entropy over the batch's
    scored tokens (in float32, logits only at scored positions and only
    :data:`~loraplace.training.evaluate.HEAD_CHUNK` rows of them at a time), clips the gradient
    norm at ``max_grad_norm`` and takes a fused AdamW step at ``learning_rate *
    lr_factor(step)`` on the float32 adapter. The base weights are never touched. LoRA dropout
    is seeded with ``seed`` inside a forked RNG, so the caller's random state is unchanged.
    With ``dtype`` bf16 the forward runs under bf16 autocast, on the CPU or CUDA (no loss
    scaling is needed for bf16).

    Args:
        model: A PEFT-wrapped causal LM whose only trainable parameters are the adapter's; it
            is left in training mode.
        features: Tokenized training examples (``input_ids``, ``labels``).
        steps: Optimizer steps.
        batch_size: Examples per step.
        learning_rate: Peak learning rate.
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm.
        seed: Seeds the data order and the LoRA dropout.
        device: Where the model is.
        dtype: Compute dtype (bf16 turns on bf16 autocast).
        prefix: A :class:`~loraplace.prefix.PrefixCache` built on ``features``; the forward then
            starts at its layer. It must be at or below the lowest adapted layer.
        on_step: Called after each step with ``{"step", "loss", "learning_rate", "grad_norm",
            "tokens", "time_s"}`` (``tokens`` cumulative, ``time_s`` training time so far,
            ``learning_rate`` the rate this step used, ``grad_norm`` the norm before clipping).
        checkpoint_steps: Steps (1-based) after whose optimizer step ``on_checkpoint`` runs.
        on_checkpoint: Called with the step number; its time is not training time, and the
            model is put back in training mode afterwards.
        progress: Optional tqdm-like bar, advanced by one per step.
        pad_token_id: Id written into padding positions (they are masked, so any valid id).
        resume: A state ``on_state`` gave: training goes on from its step, with its weights,
            optimizer and random state, and gives the same numbers as an unbroken run.
        on_state: Called with the loop's :class:`TrainState` after a step (and its checkpoint)
            once ``state_every_s`` seconds have passed since the last call, and after the last
            step; it saves it for ``resume``. Its time is not training time.
        state_every_s: Seconds between ``on_state`` calls.

    Returns:
        A :class:`TrainResult`. A non-finite loss is reported to ``on_step`` (with
        ``grad_norm`` None), makes no update, and stops training with ``nonfinite=True``.

    Raises:
        ValueError: there is nothing to train, fewer examples than ``batch_size``, or ``prefix``
            was built on other features.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if prefix is not None:
        prefix.check(features)
    lengths = [len(f["input_ids"]) for f in features]
    collate = DynamicPaddingCollator(pad_token_id=pad_token_id)
    mask_logits = accepts_logits_mask(model)
    head = scoring_head(model, device=device, dtype=dtype)
    # Fused AdamW (one kernel for all parameters) where torch has it, as HF Trainer's default.
    fused = torch.device(device).type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=fused)
    checkpoints = set(checkpoint_steps)

    done, tokens, train_time, nonfinite, start = 0, 0, 0.0, False, 0
    if resume is not None:
        with torch.no_grad():
            for p, saved in zip(params, resume.params, strict=True):
                p.copy_(saved)
        optimizer.load_state_dict(resume.optimizer)
        done, tokens, train_time, start = (
            resume.done,
            resume.tokens,
            resume.train_time_s,
            resume.step,
        )
    model.train()
    cuda = device.startswith("cuda")
    last_state = time.perf_counter()
    with _rng_fork(device):
        torch.manual_seed(seed)
        if resume is not None:
            torch.set_rng_state(resume.rng)
            if cuda and resume.device_rng is not None:
                torch.cuda.set_rng_state(resume.device_rng, torch.device(device))
            if progress is not None:
                progress.update(start)
        batches = itertools.islice(batches_from(lengths, batch_size, seed, start), steps - start)
        for step, batch_ids in enumerate(batches, start=start):
            started = time.perf_counter()
            batch = collate([features[i] for i in batch_ids])
            labels = batch.pop("labels").to(device)
            inputs = {k: v.to(device) for k, v in batch.items()}
            # Attached for the forward pass only: nothing below the cache's layer is in the
            # autograd graph, and ``on_checkpoint`` must see the whole model.
            with (
                _prefix_for(prefix, model, batch_ids),
                autocast_for(device, dtype),
                adapter_sums(model, dtype),
            ):
                loss = _step_loss(model, head, inputs, labels, dtype, mask_logits)
            loss_value = loss.item()
            batch_tokens = int(inputs["attention_mask"].sum())
            rate = learning_rate * lr_factor(step, steps, warmup_steps)
            grad_norm = None
            if math.isfinite(loss_value):
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
                for group in optimizer.param_groups:
                    group["lr"] = rate
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                done += 1
            else:
                nonfinite = True
            del loss
            train_time += time.perf_counter() - started
            record = {
                "step": step + 1,
                "loss": loss_value,
                "learning_rate": rate,
                "grad_norm": grad_norm,
                "tokens": tokens + batch_tokens,
                "time_s": round(train_time, 4),
            }
            if not nonfinite:
                tokens += batch_tokens
            if progress is not None:
                progress.update(1)
                if hasattr(progress, "set_postfix"):
                    progress.set_postfix(loss=f"{loss_value:.3f}")
            if on_step is not None:
                on_step(record)
            if nonfinite:
                break
            if step + 1 in checkpoints and on_checkpoint is not None:
                on_checkpoint(step + 1)
                model.train()
            due = time.perf_counter() - last_state >= state_every_s or step + 1 == steps
            if on_state is not None and due:
                on_state(
                    TrainState(
                        step + 1,
                        done,
                        tokens,
                        train_time,
                        [p.detach() for p in params],
                        optimizer.state_dict(),
                        torch.get_rng_state(),
                        torch.cuda.get_rng_state(torch.device(device)) if cuda else None,
                    )
                )
                last_state = time.perf_counter()
    return TrainResult(done, train_time, tokens, nonfinite)
