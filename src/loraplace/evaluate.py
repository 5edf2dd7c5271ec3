"""Measurements after training: eval loss over completion tokens, and task accuracy.

``eval_loss`` is the token-weighted mean cross-entropy over every scored eval token (the
completion tokens; prompt tokens carry label -100), so ``perplexity = exp(eval_loss)`` is the
perplexity of exactly those tokens. A mean of per-batch means would weight short batches too
heavily and break that identity.
"""

from __future__ import annotations

import contextlib
import inspect
import math

import torch
import torch.nn.functional as F

from loraplace.data import DynamicPaddingCollator, Example, encode_prompt, extract_final_number

__all__ = [
    "eval_loss",
    "eval_accuracy",
    "autocast_for",
    "completion_positions",
    "completion_logits",
    "completion_loss",
    "accepts_logits_mask",
]

IGNORE_INDEX = -100


def completion_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean ``(batch, length)`` mask of the positions whose *next* token is scored.

    Only these positions need logits: prompt and padding positions carry no loss, and the LM
    head (a ``hidden x vocabulary`` matmul, ~21% of SmolLM2-135M's forward FLOPs) and its
    log-softmax are skipped there.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def accepts_logits_mask(model) -> bool:
    """Whether the causal LM's ``forward`` takes ``logits_to_keep`` (a boolean mask is then supported)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def completion_logits(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``(scored positions, vocabulary)`` logits, whether the model already selected them or not."""
    return logits if logits.dim() == 2 else logits[keep]


def completion_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "mean",
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy over the scored tokens of ``labels``.

    ``logits`` are either the model's full ``(batch, length, vocabulary)`` output or only the
    rows at :func:`completion_positions` (a model called with ``logits_to_keep=mask``); both give
    the same loss as the usual shifted cross-entropy with ``ignore_index=-100``. ``"mean"``
    divides the summed loss by ``num_items`` (the scored-token count when not given).
    """
    keep = completion_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    total = F.cross_entropy(completion_logits(logits, keep).float(), targets, reduction="sum")
    if reduction == "sum":
        return total
    return total / (num_items if num_items is not None else max(targets.numel(), 1))


def autocast_for(device: str, dtype: torch.dtype):
    """bf16 autocast on CUDA when asked for; a no-op context elsewhere."""
    if device.startswith("cuda") and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def eval_loss(
    model,
    features: list[dict],
    collator: DynamicPaddingCollator,
    *,
    batch_size: int,
    device: str,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, int]:
    """Token-weighted mean cross-entropy over all scored tokens of ``features``.

    Returns:
        ``(eval_loss, scored_tokens)``. The loss is ``nan`` when the model produces non-finite
        logits, so callers can report it instead of a misleading number.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    mask_logits = accepts_logits_mask(model)
    try:
        for batch_ids in _length_sorted_batches(
            [len(f["input_ids"]) for f in features], batch_size
        ):
            batch = {k: v.to(device) for k, v in collator([features[i] for i in batch_ids]).items()}
            labels = batch.pop("labels")
            if mask_logits:
                batch["logits_to_keep"] = completion_positions(labels)
            with autocast_for(device, dtype):
                logits = model(**batch).logits
            total += completion_loss(logits, labels, reduction="sum").item()
            count += int((labels[:, 1:] != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no scored eval tokens: every eval example is fully masked")
    loss = total / count
    return (loss if math.isfinite(loss) else float("nan")), count


@torch.inference_mode()
def eval_accuracy(
    model,
    tokenizer,
    examples: list[Example],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: str,
    dtype: torch.dtype = torch.float32,
) -> tuple[float | None, list[dict]]:
    """Exact match of the final number from greedy decoding (GSM8K-style answers).

    Returns:
        ``(accuracy, samples)``; accuracy is ``None`` when no example has a reference answer.
        ``samples`` holds each problem's reference, prediction and generated text.
    """
    scored = [e for e in examples if e.answer is not None]
    if not scored:
        return None, []
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    was_training = model.training
    model.eval()
    samples = []
    try:
        prompts = [encode_prompt(tokenizer, e.prompt) for e in scored]
        for start in range(0, len(scored), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            # Left padding, so every sequence's generation starts right after its own prompt.
            input_ids = torch.tensor(
                [[pad_id] * (width - len(p)) + p for p in chunk], device=device
            )
            attention = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device
            )
            with autocast_for(device, dtype):
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            for example, row in zip(scored[start : start + batch_size], out[:, width:]):
                text = tokenizer.decode(row, skip_special_tokens=True)
                prediction = extract_final_number(text)
                samples.append(
                    {
                        "answer": example.answer,
                        "prediction": prediction,
                        "correct": prediction == example.answer,
                        "generated": text,
                    }
                )
    finally:
        model.train(was_training)
    return sum(s["correct"] for s in samples) / len(samples), samples
