"""Measurements after training: eval loss over completion tokens, and task accuracy.

``eval_losses`` gives each eval example's summed loss and scored-token count, the unit of the
paired per-example statistics. ``eval_loss`` is their token-weighted mean over every scored eval
token (the completion tokens; prompt tokens carry label -100), so
``perplexity = exp(eval_loss)`` is the perplexity of exactly those tokens. A mean of per-batch
means would weight short batches too heavily and break that identity.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary
from transformers import StoppingCriteria, StoppingCriteriaList

from loraplace.data.batching import IGNORE_INDEX, DynamicPaddingCollator, encode_prompt
from loraplace.data.formats import Example, extract_final_number
from loraplace.training.precision import adapter_sums, autocast_for
from loraplace.training.prefix import PrefixCache

__all__ = [
    "HEAD_CHUNK",
    "ExampleLoss",
    "ScoringHead",
    "answer_complete",
    "eval_loss",
    "eval_losses",
    "eval_accuracy",
    "forward_scored",
    "merged_adapters",
    "completion_positions",
    "completion_logits",
    "completion_loss",
    "accepts_logits_mask",
    "adapters_for_eval",
    "head_loss",
    "head_token_losses",
    "scored_token_losses",
    "scoring_head",
]

#: Rows of logits the LM head computes at a time (:func:`head_loss`): with SmolLM2's 49,152-token
#: vocabulary, 256 rows of float32 logits are 50 MB, whatever the batch.
HEAD_CHUNK = 256


def completion_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean ``(batch, length)`` mask of the positions whose *next* token is scored.

    Only these positions need logits: prompt and padding positions carry no loss, and the LM
    head (a ``hidden x vocabulary`` matmul, ~21% of SmolLM2-135M's forward FLOPs) and its
    log-softmax are skipped there.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def _accepts(model, argument: str) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(inner.forward).parameters


def accepts_logits_mask(model) -> bool:
    """Whether the causal LM's ``forward`` takes ``logits_to_keep`` (then a boolean mask works)."""
    return _accepts(model, "logits_to_keep")


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


def forward_scored(model, inputs: dict, labels: torch.Tensor, *, mask_logits: bool) -> torch.Tensor:
    """Run ``model`` on a batch and return its logits at the scored positions.

    Args:
        model: A causal LM (PEFT-wrapped or not).
        inputs: The batch without labels (``input_ids``, ``attention_mask``), on the device.
        labels: The batch's labels (-100 where nothing is scored).
        mask_logits: Whether the model takes a boolean ``logits_to_keep`` mask
            (:func:`accepts_logits_mask`); without it the full logits are computed.

    Returns:
        ``(scored positions, vocabulary)`` logits, rows in row-major order of
        :func:`completion_positions`.
    """
    keep = completion_positions(labels)
    options = {"logits_to_keep": keep} if mask_logits else {}
    if _accepts(model, "use_cache"):
        # A scoring pass never reuses keys and values; a cache would only copy them per layer.
        options["use_cache"] = False
    return completion_logits(model(**inputs, **options).logits, keep)


class ScoringHead(NamedTuple):
    """A causal LM split into the module that makes its last hidden states and its LM head."""

    backbone: nn.Module
    """The decoder stack: ``backbone(input_ids, attention_mask).last_hidden_state``."""
    head: nn.Linear
    """The frozen LM head: the model's logits are ``head(last_hidden_state)``, nothing more."""


def scoring_head(model, *, device: str, dtype: torch.dtype) -> ScoringHead | None:
    """The model's backbone and LM head, where its logits are exactly the head's output.

    Checked, not assumed: four tokens go through the whole model and through the backbone and
    head, in evaluation mode and ``dtype``, and the two sets of logits must agree. The answer
    is kept for the head's weight tensor, the model's class and ``dtype``: every run of a
    study shares its base's frozen head, so the check runs once per process, not once per run.
    A model whose forward does more after the head (soft-capping, a logit scale) or whose head
    is trained (LoRA on ``lm_head``) gets ``None``: its callers then ask the model for its
    logits.

    Args:
        model: A causal LM, PEFT-wrapped or not.
        device: Where the model is.
        dtype: The run's compute dtype (bf16 autocast when bf16).

    Returns:
        A :class:`ScoringHead`, or ``None``.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    backbone = getattr(inner, "base_model", inner)
    if type(head) is not nn.Linear or backbone is inner:
        return None
    if any(p.requires_grad for p in head.parameters()):
        return None
    known = _SPLIT_CHECKED.setdefault(head.weight, {})
    key = (type(inner), dtype)
    if key not in known:
        known[key] = _splits(model, backbone, head, device, dtype)
    return ScoringHead(backbone, head) if known[key] else None


#: Head weight -> {(model class, dtype): whether the logits are the head's output}.
_SPLIT_CHECKED = WeakIdKeyDictionary()


def _splits(model, backbone, head: nn.Linear, device: str, dtype: torch.dtype) -> bool:
    ids = (torch.arange(4, device=device) % head.out_features)[None]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_for(device, dtype):
            whole = model(input_ids=ids, **_no_cache(model)).logits.float()
            hidden = backbone(input_ids=ids, **_no_cache(backbone)).last_hidden_state
            split = _head_logits(hidden[0], head, dtype)
    except Exception:  # noqa: BLE001 - any failure means "ask the model for its logits"
        return False
    finally:
        model.train(was_training)
    return split.shape == whole[0].shape and torch.allclose(split, whole[0], rtol=1e-3, atol=1e-3)


def _no_cache(module) -> dict:
    # A scoring pass never reuses keys and values; a cache would only copy them per layer.
    return {"use_cache": False} if _accepts(module, "use_cache") else {}


def _head_logits(hidden: torch.Tensor, head: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    """float32 logits of ``hidden`` rows: the head module itself (its hooks run) under the
    run's autocast."""
    with autocast_for(hidden.device.type, dtype):
        return head(hidden).float()


def scored_hidden(head: ScoringHead, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """``(scored positions, hidden)``: the backbone's last hidden states where a loss is taken,
    rows in row-major order of :func:`completion_positions`."""
    keep = completion_positions(labels)
    return head.backbone(**inputs, **_no_cache(head.backbone)).last_hidden_state[keep]


class _ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of the LM head's logits, ``chunk`` rows at a time.

    The logits never exist for more than one chunk: the gradient with respect to the hidden
    states, ``(softmax - onehot) @ W``, is computed chunk by chunk in the forward pass and kept
    (``rows x hidden``, small), so the backward pass only scales it. The head's weights are
    frozen, so they need no gradient.
    """

    @staticmethod
    def forward(ctx, hidden, head, targets, dtype, chunk):
        grads = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _head_logits(hidden[rows], head, dtype)
            lse = torch.logsumexp(logits, dim=-1)
            wanted = targets[rows]
            total += (lse - logits.gather(1, wanted[:, None]).squeeze(1)).sum()
            if grads is not None:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(wanted), device=probs.device), wanted] -= 1.0
                with torch.autocast(hidden.device.type, enabled=False):
                    grads[rows] = (probs.to(dtype) @ head.weight.to(dtype)).to(grads.dtype)
        ctx.save_for_backward(grads)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (grads,) = ctx.saved_tensors
        return grads * grad_total, None, None, None, None


def head_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Linear,
    dtype: torch.dtype,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Summed next-token cross-entropy of the scored rows, computed ``chunk`` rows at a time.

    The loss and its gradient equal ``F.cross_entropy(head(hidden).float(), targets,
    reduction="sum")`` (in float32 to summation order), with the head's matmul in ``dtype``;
    memory grows with ``chunk x vocabulary``, not with the batch's scored tokens.

    Args:
        hidden: ``(scored positions, hidden)`` states (:func:`scored_hidden`).
        targets: The next token at each of those positions.
        head: The frozen LM head.
        dtype: The matmul's dtype (the run's compute dtype).
        chunk: Rows per matmul (default :data:`HEAD_CHUNK`).

    Returns:
        The float32 scalar sum; divide by the token count for the mean.
    """
    return _ChunkedHeadLoss.apply(hidden, head, targets, dtype, chunk or HEAD_CHUNK)


@torch.no_grad()
def head_token_losses(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Linear,
    dtype: torch.dtype,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """float32 cross-entropy of each scored row, ``chunk`` rows at a time (evaluation; default
    :data:`HEAD_CHUNK`)."""
    chunk = chunk or HEAD_CHUNK
    losses = [
        F.cross_entropy(
            _head_logits(hidden[start : start + chunk], head, dtype),
            targets[start : start + chunk],
            reduction="none",
        )
        for start in range(0, hidden.shape[0], chunk)
    ]
    return torch.cat(losses) if losses else hidden.new_zeros((0,), dtype=torch.float32)


def scored_token_losses(
    model,
    head: ScoringHead | None,
    inputs: dict,
    labels: torch.Tensor,
    *,
    dtype: torch.dtype,
    mask_logits: bool,
) -> torch.Tensor:
    """float32 next-token loss at each scored position of a batch (row-major order of
    :func:`completion_positions`): through ``head`` where there is one, else the model's own
    logits at the scored positions (:func:`forward_scored`). Runs under the caller's autocast.
    """
    keep = completion_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    if head is not None:
        return head_token_losses(scored_hidden(head, inputs, labels), targets, head.head, dtype)
    logits = forward_scored(model, inputs, labels, mask_logits=mask_logits)
    return F.cross_entropy(logits.float(), targets, reduction="none")


class _MergedLinear(nn.Module):
    """Stands in for a LoRA module during evaluation: its base layer with ``W + delta``."""

    def __init__(self, base_layer: nn.Module, weight: torch.Tensor):
        super().__init__()
        self.__dict__["_base"] = base_layer  # not registered: the stand-in owns no parameters
        self.weight = weight

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.__dict__["_base"]
        if type(base) is nn.Linear:
            return F.linear(x, self.weight, base.bias)
        return torch.func.functional_call(base, {"weight": self.weight}, (x, *args), kwargs)


def _mergeable(module: nn.Module) -> bool:
    from peft.tuners.lora import Linear as LoraLinear

    return (
        isinstance(module, LoraLinear)
        and not module.merged
        and not module.disable_adapters
        and not any(a in module.lora_variant for a in module.active_adapters)
    )


@contextlib.contextmanager
def merged_adapters(model: nn.Module) -> Iterator[None]:
    """Within the block, each plain LoRA linear module computes ``x (W + s B A)^T`` in one matmul.

    The LoRA path's two small matmuls, scaling and addition are slow for their FLOPs: merging
    made eval 1.16-1.26x faster on SmolLM2-135M with ``all`` at r8 on a CPU, merging
    included. The merged weight is a new tensor: the base weights, shared with other runs, are
    never written, and the modules are restored on exit. Results equal the unmerged forward up
    to float rounding (~1e-6 relative). Modules with a LoRA variant (DoRA), disabled or already
    merged adapters are left as they are. For evaluation only: no gradient reaches the adapter
    through a merged weight.

    Args:
        model: A causal LM, PEFT-wrapped or not (then nothing changes).

    Yields:
        Nothing.
    """
    swaps = []
    try:
        with torch.no_grad():
            for name, module in list(model.named_modules()):
                if not _mergeable(module):
                    continue
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
                weight = module.base_layer.weight
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child, _MergedLinear(module.base_layer, weight + delta.to(weight)))
                swaps.append((parent, child, module))
        yield
    finally:
        for parent, child, module in swaps:
            setattr(parent, child, module)


def adapters_for_eval(model: nn.Module, dtype: torch.dtype):
    """How LoRA layers compute during evaluation: merged into their weights in float32
    (:func:`merged_adapters`, the faster), unmerged with the update added in float32 in bf16
    (:func:`~loraplace.training.precision.adapter_sums`): ``W + ΔW`` stored in bf16 would lose
    every entry of ``ΔW`` smaller than half the spacing of bf16's grid at ``W``, and a short
    run's ``ΔW`` is mostly that small."""
    if dtype == torch.float32:
        return merged_adapters(model)
    return adapter_sums(model, dtype)


class ExampleLoss(NamedTuple):
    """One eval example's summed next-token loss, the unit of paired per-example statistics."""

    example: int
    """Index of the example in its split (the feature's ``example`` key)."""
    tokens: int
    """Scored tokens of the example."""
    loss_sum: float
    """Sum of its per-token cross-entropies (nats, accumulated in float64)."""


def _length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def eval_losses(
    model,
    features: list[dict],
    collator: DynamicPaddingCollator,
    *,
    batch_size: int,
    device: str,
    dtype: torch.dtype = torch.float32,
    prefix: PrefixCache | None = None,
    progress=None,
) -> list[ExampleLoss]:
    """Per-example summed cross-entropy over the scored tokens of ``features``.

    Forward passes only, in inference mode, over length-sorted batches (little padding), with
    logits computed only at scored positions, :data:`HEAD_CHUNK` rows at a time
    (:func:`scored_token_losses`), and LoRA adapters merged into copies of their weights in
    float32 (:func:`adapters_for_eval`). Token losses are computed in float32 and summed per
    example in float64.

    Args:
        model: A causal LM (PEFT-wrapped or not); its train/eval mode is restored afterwards.
        features: Tokenized examples (``input_ids``, ``labels`` and optionally ``example``).
        collator: Pads a batch (right padding).
        batch_size: Sequences per forward pass.
        device: Where the model is.
        dtype: Compute dtype (bf16 turns on bf16 autocast).
        prefix: A :class:`~loraplace.prefix.PrefixCache` built on ``features``; the model then
            runs only the layers from the cache's layer up.
        progress: Optional tqdm-like bar, advanced by the examples of each batch.

    Returns:
        One :class:`ExampleLoss` per feature, in the order of ``features``; ``example`` is the
        feature's ``example`` key (its position in ``features`` when it has none). A
        non-finite ``loss_sum`` means the model produced non-finite logits.

    Raises:
        ValueError: ``prefix`` was built on other features.
    """
    if prefix is not None:
        prefix.check(features)
    head = scoring_head(model, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    mask_logits = accepts_logits_mask(model)
    sums = [0.0] * len(features)
    counts = [0] * len(features)
    try:
        with (
            prefix.attached(model) if prefix is not None else contextlib.nullcontext(),
            adapters_for_eval(model, dtype),
        ):
            for batch_ids in _length_sorted_batches(
                [len(f["input_ids"]) for f in features], batch_size
            ):
                batch = collator([features[i] for i in batch_ids])
                labels = batch.pop("labels").to(device)
                inputs = {k: v.to(device) for k, v in batch.items()}
                if prefix is not None:
                    prefix.select(batch_ids)
                with autocast_for(device, dtype):
                    losses = scored_token_losses(
                        model, head, inputs, labels, dtype=dtype, mask_logits=mask_logits
                    )
                keep = completion_positions(labels)
                rows = keep.nonzero(as_tuple=True)[0]
                per_row = torch.zeros(len(batch_ids), dtype=torch.float64, device=losses.device)
                per_row.index_add_(0, rows, losses.double())
                for i, total, n in zip(batch_ids, per_row.tolist(), keep.sum(dim=1).tolist()):
                    sums[i], counts[i] = total, n
                if progress is not None:
                    progress.update(len(batch_ids))
    finally:
        model.train(was_training)
    return [
        ExampleLoss(int(f.get("example", i)), counts[i], sums[i]) for i, f in enumerate(features)
    ]


def eval_loss(
    model,
    features: list[dict],
    collator: DynamicPaddingCollator,
    *,
    batch_size: int,
    device: str,
    dtype: torch.dtype = torch.float32,
    prefix: PrefixCache | None = None,
    progress=None,
) -> tuple[float, int]:
    """Token-weighted mean cross-entropy over all scored tokens of ``features``.

    The sum of :func:`eval_losses`' ``loss_sum`` divided by the sum of its ``tokens``; the
    arguments are the same.

    Returns:
        ``(eval_loss, scored_tokens)``. The loss is ``nan`` when the model produces non-finite
        logits, so callers can report it instead of a misleading number.

    Raises:
        ValueError: no eval token is scored, or ``prefix`` was built on other features.
    """
    rows = eval_losses(
        model,
        features,
        collator,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        prefix=prefix,
        progress=progress,
    )
    count = sum(row.tokens for row in rows)
    if count == 0:
        raise ValueError("no scored eval tokens: every eval example is fully masked")
    loss = math.fsum(row.loss_sum for row in rows) / count
    return (loss if math.isfinite(loss) else float("nan")), count


_ANSWER_LINE = re.compile(r"####([^\n]*)\n")


def answer_complete(text: str) -> bool:
    """Whether ``text`` holds a finished GSM8K answer line: ``####``, a number, then a newline.

    Args:
        text: Generated text.

    Returns:
        True once some ``####`` line holding a number has been ended by a newline.
    """
    return any(extract_final_number(m.group(1)) is not None for m in _ANSWER_LINE.finditer(text))


class _AnswerStop(StoppingCriteria):
    """Stops each sequence at EOS or once its answer line is complete (see ``answer_complete``).

    Records, per row, how many generated tokens it kept, so text after the stop (padding) is
    never decoded.
    """

    def __init__(self, tokenizer, prompt_width: int, rows: int, eos_id: int | None):
        self.tokenizer = tokenizer
        self.width = prompt_width
        self.eos_id = eos_id
        self.kept: list[int | None] = [None] * rows
        self._newline: dict[int, bool] = {}

    def _has_newline(self, token: int) -> bool:
        if token not in self._newline:
            self._newline[token] = "\n" in self.tokenizer.decode([token])
        return self._newline[token]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.width
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if self.kept[row] is not None:
                continue
            if token == self.eos_id:
                self.kept[row] = generated - 1
            elif self._has_newline(token):
                text = self.tokenizer.decode(input_ids[row, self.width :], skip_special_tokens=True)
                if answer_complete(text):
                    self.kept[row] = generated
        done = [k is not None for k in self.kept]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
    progress=None,
) -> tuple[float | None, list[dict]]:
    """Exact match of the final number from greedy decoding (GSM8K-style answers).

    Batched greedy decoding with the KV cache and left padding, adapters merged in float32
    (:func:`adapters_for_eval`). Each sequence stops at EOS or as soon as its ``#### <number>``
    line is complete (a newline after it); a batch stops when all its sequences have stopped,
    so a model that answers and moves on does not spend the whole ``max_new_tokens`` budget.
    Greedy decoding is deterministic, so stopping early changes no prediction unless the model
    would later write a second ``####`` answer (merging can only flip exact near-ties).

    Args:
        model: A causal LM with ``generate`` (PEFT-wrapped or not).
        tokenizer: Its tokenizer (prompts are encoded with :func:`encode_prompt`).
        examples: Eval problems; those without a reference ``answer`` are skipped.
        max_new_tokens: Generation budget per problem.
        batch_size: Problems decoded together.
        device: Where the model is.
        dtype: Compute dtype (bf16 turns on bf16 autocast).
        progress: Optional tqdm-like bar, advanced by the problems of each batch.

    Returns:
        ``(accuracy, samples)``; accuracy is ``None`` when no example has a reference answer.
        ``samples`` holds each problem's reference, prediction and generated text.
    """
    scored = [e for e in examples if e.answer is not None]
    if not scored:
        return None, []
    was_training = model.training
    model.eval()
    try:
        with adapters_for_eval(model, dtype):
            samples = _generate_answers(
                model, tokenizer, scored, max_new_tokens, batch_size, device, dtype, progress
            )
    finally:
        model.train(was_training)
    return sum(s["correct"] for s in samples) / len(samples), samples


def _generate_answers(
    model, tokenizer, scored: list[Example], max_new_tokens, batch_size, device, dtype, progress
) -> list[dict]:
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    samples = []
    prompts = [encode_prompt(tokenizer, e.prompt) for e in scored]
    for start in range(0, len(scored), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        # Left padding, so every sequence's generation starts right after its own prompt.
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
        attention = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device
        )
        stop = _AnswerStop(tokenizer, width, len(chunk), tokenizer.eos_token_id)
        with autocast_for(device, dtype):
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([stop]),
            )
        for example, row, kept in zip(scored[start : start + batch_size], out, stop.kept):
            generated = row[width:] if kept is None else row[width : width + kept]
            text = tokenizer.decode(generated, skip_special_tokens=True)
            prediction = extract_final_number(text)
            samples.append(
                {
                    "answer": example.answer,
                    "prediction": prediction,
                    "correct": prediction == example.answer,
                    "generated": text,
                }
            )
        if progress is not None:
            progress.update(len(chunk))
    return samples
