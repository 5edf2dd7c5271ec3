"""From examples to padded batches: prompt formatting, masked tokenization, dynamic padding and
length-grouped batch order.

Loss is computed on completion tokens only: prompt tokens get the label -100. Batches are padded
to their own longest sequence, never to a fixed maximum, and length grouping puts sequences of
similar length together so little compute is spent on padding (see docs/CONCEPTS.md).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from loraplace.data.context import plain_context
from loraplace.data.formats import Example
from loraplace.errors import DataError

__all__ = [
    "IGNORE_INDEX",
    "DynamicPaddingCollator",
    "encode_prompt",
    "format_prompt",
    "length_grouped_batches",
    "tokenize_examples",
]

IGNORE_INDEX = -100
"""Label value that PyTorch's cross-entropy (and HF models) skip."""


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: list[dict]) -> str:
    """The prompt text exactly as the model sees it before the completion.

    Uses the tokenizer's chat template with `add_generation_prompt=True` when it has one;
    otherwise a plain `"User: ...\\nAssistant: "` layout (one `"Role: content"` line per message).
    A task's plain-text context (:mod:`loraplace.data.context`) is written as is.

    Args:
        tokenizer: A Hugging Face tokenizer.
        prompt: Chat messages (`{"role", "content"}` dicts); `[]` for plain text.

    Returns:
        The prompt string; `""` for an empty prompt.
    """
    if not prompt:
        return ""
    context = plain_context(prompt)
    if context is not None:
        return context
    if _has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert isinstance(text, str), type(text)
        return text
    lines = [f"{message['role'].capitalize()}: {message['content']}" for message in prompt]
    return "\n".join(lines) + "\nAssistant: "


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """Token ids the tokenizer puts before any text by default (e.g. LLaMA's BOS), else []."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def encode_prompt(tokenizer: Any, prompt: list[dict]) -> list[int]:
    """Token ids of `format_prompt(tokenizer, prompt)`, exactly as used in training.

    Use these ids (not a re-tokenized string) to generate from the prompt at evaluation time.
    A chat template writes its own special tokens (its BOS, if any, is part of the text). Without
    a template, or for plain text, the tokenizer's default leading tokens (BOS) are prepended.
    """
    return _encode_prompt(tokenizer, prompt, _leading_special_ids(tokenizer))


def _encode_prompt(tokenizer: Any, prompt: list[dict], lead: list[int]) -> list[int]:
    text = format_prompt(tokenizer, prompt)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
    if prompt and _has_chat_template(tokenizer) and plain_context(prompt) is None:
        return ids
    return lead + ids


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, max_length: int
) -> tuple[list[dict], dict]:
    """Tokenize examples for causal-LM training with the loss on completion tokens only.

    Prompt and completion are encoded separately, so the prompt mask is exact whatever the
    tokenizer merges at the boundary; the completion ends with the EOS token. A sequence longer
    than `max_length` loses the end of its completion (and then has no EOS); an example whose
    prompt leaves no completion token to score is dropped.

    Args:
        examples: Examples from `load_dataset_split`.
        tokenizer: A Hugging Face tokenizer with an EOS token.
        max_length: Maximum tokens per sequence.

    Returns:
        `(features, stats)`. Each feature is `{"input_ids": [...], "labels": [...], "example":
        i}` with labels equal to input_ids except -100 on the prompt tokens, and `example` the
        index of its example in `examples`, so per-example results stay aligned with the split
        when examples are dropped. stats: `examples` (kept), `dropped`,
        `truncated`, `tokens` (total of kept sequences), `completion_tokens` (tokens the loss is
        computed on, after the causal shift), `mean_length`, `longest`.

    Raises:
        DataError: the tokenizer has no EOS token.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(
            "the tokenizer has no EOS token; set tokenizer.eos_token so completions can end"
        )
    lead = _leading_special_ids(tokenizer)
    prompts = [_encode_prompt(tokenizer, example.prompt, lead) for example in examples]
    texts = [example.completion for example in examples]
    completions = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    features, dropped, truncated, scored_total = [], 0, 0, 0
    for index, (prompt_ids, completion_ids) in enumerate(zip(prompts, completions)):
        completion_ids = list(completion_ids) + [eos]
        cut = len(prompt_ids) + len(completion_ids) > max_length
        if cut:
            completion_ids = completion_ids[: max(0, max_length - len(prompt_ids))]
        # The first token of a sequence has no previous token, so it is never scored.
        scored = len(completion_ids) - (0 if prompt_ids else 1)
        if scored < 1:
            dropped += 1
            continue
        truncated += cut
        features.append(
            {
                "input_ids": prompt_ids + completion_ids,
                "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
                "example": index,
            }
        )
        scored_total += scored
    lengths = [len(feature["input_ids"]) for feature in features]
    stats = {
        "examples": len(features),
        "dropped": dropped,
        "truncated": truncated,
        "tokens": sum(lengths),
        "completion_tokens": scored_total,
        "mean_length": sum(lengths) / len(lengths) if lengths else 0.0,
        "longest": max(lengths, default=0),
    }
    return features, stats


class DynamicPaddingCollator:
    """Pads a batch to its own longest sequence (never to a fixed maximum), on the right.

    Padding uses the pad id in `input_ids`, 0 in `attention_mask` and -100 in `labels`. Keys
    other than `input_ids` and `labels` (such as `example`) are ignored.

    Args:
        tokenizer: Used for its pad id (falling back to its EOS id); or pass `pad_token_id`.
        pad_token_id: Explicit pad id (overrides the tokenizer's).
        pad_to_multiple_of: Round the padded length up to a multiple of this (e.g. 8 for
            tensor cores); None pads exactly to the longest sequence.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
            if pad_token_id is None:
                pad_token_id = tokenizer.eos_token_id
        if pad_token_id is None:
            raise ValueError(
                "DynamicPaddingCollator needs a tokenizer with a pad or EOS token, or pad_token_id"
            )
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        ids = [list(map(int, feature["input_ids"])) for feature in features]
        labels = [
            list(map(int, feature.get("labels", feature["input_ids"]))) for feature in features
        ]
        width = max(len(row) for row in ids)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        label_tensor = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        for row, (row_ids, row_labels) in enumerate(zip(ids, labels)):
            n = len(row_ids)
            input_ids[row, :n] = torch.tensor(row_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            label_tensor[row, :n] = torch.tensor(row_labels, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_tensor}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, *, mega_batch_mult: int = 16
) -> list[list[int]]:
    """Deterministic batches of indices that group sequences of similar length.

    Shuffle the indices with `seed`, cut them into mega-batches of `batch_size *
    mega_batch_mult`, sort each mega-batch by length (descending), cut it into batches, then
    shuffle the batch order with the same random stream. Every index appears exactly once; only
    the last batch of a mega-batch can be smaller than `batch_size`. (The scheme of HF
    `Trainer`'s `group_by_length`.)

    Args:
        lengths: Sequence length of each example.
        batch_size: Examples per batch.
        seed: Random seed; the same seed gives the same batches.
        mega_batch_mult: Mega-batch size in batches; larger groups lengths more tightly but
            makes the order less random.

    Returns:
        A list of batches, each a list of indices into `lengths`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if mega_batch_mult < 1:
        raise ValueError(f"mega_batch_mult must be >= 1, got {mega_batch_mult}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_mult
    batches = []
    for start in range(0, len(order), mega):
        group = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches
