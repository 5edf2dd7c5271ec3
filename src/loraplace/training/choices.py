"""Accuracy on a task's eval problems: multiple choice by log-likelihood, numbers by generation.

**Multiple choice** (:class:`~loraplace.data.tasks.ChoiceExample`), the ``acc`` and
``acc_norm`` of lm-evaluation-harness. Each choice is scored as a continuation of the context:
the choice after one space (:data:`~loraplace.data.tasks.DELIMITER`), tokenized on its own as
in training, and its log-likelihood is the sum of its tokens' log-probabilities given the
context and the tokens before them. ``acc`` takes the choice with the highest log-likelihood;
``acc_norm`` divides each log-likelihood by the choice's length in characters first (the
delimiter not counted), so a long choice is not penalised for having more tokens. A tie goes
to the first choice. The log-likelihoods come from the same per-example loss pass that
measures eval loss (``losses``, :func:`loraplace.training.evaluate.eval_losses`: a choice's
summed cross-entropy is minus its log-likelihood).

**Numbers** (:class:`~loraplace.data.tasks.NumberExample`), ``exact_match``: greedy decoding
from the context, up to :data:`NUMBER_TOKENS` new tokens, ending at the first newline or EOS
(the answer line); the first number of that line, normalised, must equal the reference.
Generation rather than ranking, because the answer is open: there is no list of candidates
to rank, and the model must produce the number itself.

A task's accuracy covers every problem of the eval split; each problem's outcome is recorded
(:meth:`TaskScore.rows`), so two runs pair by seed and by problem.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from loraplace.data.batching import IGNORE_INDEX, encode_prompt
from loraplace.data.formats import Example, extract_final_number
from loraplace.data.tasks import DELIMITER, ChoiceExample, NumberExample
from loraplace.training.precision import autocast_for

__all__ = [
    "NUMBER_TOKENS",
    "LossFn",
    "LossPass",
    "TaskScore",
    "choice_features",
    "first_number",
    "generate_numbers",
    "score_choices",
    "score_task",
    "scoring_tokens",
    "shared_context_pass",
    "task_problems",
]

NUMBER_TOKENS = 24
"""Generation budget of a numeric answer: the answer line (a number and its unit)."""

LossFn = Callable[[list[dict]], Sequence[tuple[int, int, float]]]
"""Per-feature ``(example, scored tokens, summed cross-entropy)``, in the order of the features
(:func:`loraplace.training.evaluate.eval_losses` with the model and settings bound)."""

LossPass = Callable[..., Sequence[tuple[int, int, float]]]
"""A loss pass called as ``loss_pass(model, features, collator, batch_size=, device=, dtype=)``
(:func:`loraplace.training.evaluate.eval_losses`)."""


def choice_features(examples: Sequence[ChoiceExample], tokenizer) -> list[dict]:
    """One feature per (problem, choice): the context's tokens, then the choice's, scored.

    The context is encoded as in training (:func:`~loraplace.data.batching.encode_prompt`:
    the tokenizer's leading tokens, then the text); the continuation, the delimiter and the
    choice, on its own. Labels are -100 on the context, so only the choice's tokens are scored.

    Returns:
        Features with ``input_ids``, ``labels``, ``example`` (the problem's position in
        ``examples``) and ``choice`` (the choice's index).
    """
    features = []
    for index, example in enumerate(examples):
        context = encode_prompt(tokenizer, example.prompt)
        continuations = tokenizer(
            [DELIMITER + choice for choice in example.choices], add_special_tokens=False
        )["input_ids"]
        for choice, continuation in enumerate(continuations):
            continuation = list(continuation)
            features.append(
                {
                    "input_ids": context + continuation,
                    "labels": [IGNORE_INDEX] * len(context) + continuation,
                    "example": index,
                    "choice": choice,
                }
            )
    return features


def _argmax(values: Sequence[float]) -> int:
    """The first index of the largest value (as numpy's argmax breaks ties)."""
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


def score_choices(
    examples: Sequence[ChoiceExample], tokenizer, losses: LossFn, *, positions=None
) -> list[dict]:
    """``acc`` and ``acc_norm`` outcomes of multiple-choice problems.

    Args:
        examples: the problems.
        tokenizer: the model's tokenizer.
        losses: the per-feature loss pass (see :data:`LossFn`).
        positions: each problem's index in its split (default: its position in ``examples``).

    Returns:
        One row per problem: ``example``, ``label``, ``loglik`` (each choice's
        log-likelihood), ``tokens`` (each choice's scored tokens), ``chars`` (each choice's
        length in characters), ``chosen`` and ``correct`` (``acc``), ``chosen_norm`` and
        ``correct_norm`` (``acc_norm``).
    """
    features = choice_features(examples, tokenizer)
    scored = list(losses(features))
    if len(scored) != len(features):
        raise AssertionError(f"{len(scored)} losses for {len(features)} choice features")
    lls: list[list[float]] = [[0.0] * len(e.choices) for e in examples]
    tokens: list[list[int]] = [[0] * len(e.choices) for e in examples]
    for feature, (_, count, loss_sum) in zip(features, scored):
        lls[feature["example"]][feature["choice"]] = -float(loss_sum)
        tokens[feature["example"]][feature["choice"]] = int(count)
    rows = []
    for i, example in enumerate(examples):
        chars = [len(choice) for choice in example.choices]
        chosen = _argmax(lls[i])
        chosen_norm = _argmax([ll / max(n, 1) for ll, n in zip(lls[i], chars)])
        rows.append(
            {
                "example": positions[i] if positions is not None else i,
                "label": example.label,
                "loglik": lls[i],
                "tokens": tokens[i],
                "chars": chars,
                "chosen": chosen,
                "correct": chosen == example.label,
                "chosen_norm": chosen_norm,
                "correct_norm": chosen_norm == example.label,
            }
        )
    return rows


def _signature_has(model, argument: str) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(inner.forward).parameters


def _split(feature: dict) -> tuple[list[int], list[int]]:
    """A choice feature's context and continuation tokens (where the labels start)."""
    labels = feature["labels"]
    start = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    return list(feature["input_ids"][:start]), list(feature["input_ids"][start:])


@torch.inference_mode()
def shared_context_pass(
    model,
    features: Sequence[dict],
    collator,
    *,
    batch_size: int,
    device: str,
    dtype: torch.dtype = torch.float32,
) -> list[tuple[int, int, float]]:
    """Each choice feature's summed loss, its problem's context run once for all its choices.

    The same numbers as the loss pass of eval loss (:data:`LossPass`) on
    :func:`choice_features`, for a fraction of its cost: a problem's context is the longest part
    of each of its choice sequences, and here it runs once. Contexts are left-padded into a batch
    (positions counted from each row's first token) and run with the key/value cache; each
    choice's first token is scored from the context's last logits, and its further tokens are
    run on a copy of the cache. Features of one problem whose contexts differ are run alone.

    Returns:
        ``(example, scored tokens, summed cross-entropy)`` per feature, in order.
    """
    pad = collator.pad_token_id
    groups: dict[tuple, list[int]] = {}
    split = [_split(f) for f in features]
    for i, feature in enumerate(features):
        groups.setdefault((feature["example"], tuple(split[i][0])), []).append(i)
    order = sorted(groups.values(), key=lambda g: -len(split[g[0]][0]))
    keep = {"logits_to_keep": 1} if _signature_has(model, "logits_to_keep") else {}
    out: list[tuple[int, int, float] | None] = [None] * len(features)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            contexts = [split[g[0]][0] for g in batch]
            width = max(len(c) for c in contexts)
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], device=device)
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
            mask = mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with autocast_for(device, dtype):
                result = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **keep,
                )
            first = torch.log_softmax(result.logits[:, -1].float(), -1)
            pairs = [(row, i) for row, group in enumerate(batch) for i in group]
            sums = {i: float(first[row, split[i][1][0]]) for row, i in pairs}
            rest = [(row, i) for row, i in pairs if len(split[i][1]) > 1]
            for chunk_start in range(0, len(rest), batch_size):
                chunk = rest[chunk_start : chunk_start + batch_size]
                more = max(len(split[i][1]) - 1 for _, i in chunk)
                tails = [split[i][1][:-1] for _, i in chunk]
                rows = torch.tensor([row for row, _ in chunk], device=device)
                cache = copy.deepcopy(result.past_key_values)
                cache.reorder_cache(rows)
                tail_mask = torch.tensor(
                    [[1] * len(t) + [0] * (more - len(t)) for t in tails], device=device
                )
                with autocast_for(device, dtype):
                    logits = model(
                        input_ids=torch.tensor(
                            [t + [pad] * (more - len(t)) for t in tails], device=device
                        ),
                        attention_mask=torch.cat([mask[rows], tail_mask], dim=1),
                        position_ids=mask[rows].sum(-1, keepdim=True)
                        + torch.arange(more, device=device),
                        past_key_values=cache,
                        use_cache=True,
                    ).logits.float()
                norm = torch.logsumexp(logits, -1)
                for k, (_, i) in enumerate(chunk):
                    targets = torch.tensor(split[i][1][1:], device=device)
                    n = len(targets)
                    picked = logits[k, torch.arange(n, device=device), targets]
                    sums[i] += float((picked - norm[k, :n]).double().sum())
            for _, i in pairs:
                out[i] = (int(features[i]["example"]), len(split[i][1]), -sums[i])
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


_FIRST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def first_number(text: str) -> str | None:
    """The first number in ``text``, normalised (``1,000`` is ``1000``), or ``None``."""
    found = _FIRST_NUMBER.search(text)
    return extract_final_number(found.group(0)) if found else None


class _LineStop(StoppingCriteria):
    """Stops each sequence at EOS or at its first generated newline, recording where."""

    def __init__(self, tokenizer, width: int, rows: int):
        self.tokenizer, self.width = tokenizer, width
        self.kept: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.width
        for row in range(input_ids.shape[0]):
            if self.kept[row] is not None:
                continue
            token = int(input_ids[row, -1])
            if token == self.tokenizer.eos_token_id or "\n" in self.tokenizer.decode([token]):
                self.kept[row] = generated
        done = [k is not None for k in self.kept]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate_numbers(
    model,
    tokenizer,
    examples: Sequence[NumberExample],
    *,
    batch_size: int,
    device: str,
    dtype: torch.dtype = torch.float32,
    max_new_tokens: int = NUMBER_TOKENS,
    positions=None,
    progress=None,
) -> list[dict]:
    """``exact_match`` outcomes of numeric problems, by greedy decoding of the answer line.

    Returns:
        One row per problem: ``example``, ``number`` (the reference), ``generated`` (the
        answer line), ``prediction`` (its first number) and ``correct``.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    rows = []
    try:
        prompts = [encode_prompt(tokenizer, e.prompt) for e in examples]
        for start in range(0, len(examples), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            # Left padding: every row's answer starts right after its own context.
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            stop = _LineStop(tokenizer, width, len(chunk))
            with autocast_for(device, dtype):
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                    stopping_criteria=StoppingCriteriaList([stop]),
                )
            for offset, (row, kept) in enumerate(zip(out, stop.kept)):
                i = start + offset
                generated = row[width : width + (kept or max_new_tokens)]
                text = tokenizer.decode(generated, skip_special_tokens=True)
                line = text.split("\n")[0].strip()
                prediction = first_number(line)
                rows.append(
                    {
                        "example": positions[i] if positions is not None else i,
                        "number": examples[i].number,
                        "generated": line,
                        "prediction": prediction,
                        "correct": prediction == examples[i].number,
                    }
                )
            if progress is not None:
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    return rows


@dataclass
class TaskScore:
    """A task's accuracy on the eval split, and each problem's outcome."""

    metric: str
    """``acc`` (multiple choice, with ``acc_norm`` beside it) or ``exact_match``."""
    rows: list[dict]
    """One row per problem (:func:`score_choices`, :func:`generate_numbers`)."""

    @property
    def accuracy(self) -> float | None:
        return sum(r["correct"] for r in self.rows) / len(self.rows) if self.rows else None

    @property
    def accuracy_norm(self) -> float | None:
        if self.metric != "acc" or not self.rows:
            return None
        return sum(r["correct_norm"] for r in self.rows) / len(self.rows)

    def record(self) -> dict:
        """The run record's accuracy fields: ``accuracy``, ``accuracy_examples``,
        ``accuracy_metric``, ``correct`` (each problem's outcome, in split order) and, for
        multiple choice, ``accuracy_norm`` and ``correct_norm``."""
        out = {
            "accuracy": self.accuracy,
            "accuracy_examples": len(self.rows),
            "accuracy_metric": self.metric,
            "correct": [bool(r["correct"]) for r in self.rows],
        }
        if self.metric == "acc":
            out["accuracy_norm"] = self.accuracy_norm
            out["correct_norm"] = [bool(r["correct_norm"]) for r in self.rows]
        return out

    def jsonl(self) -> str:
        """The rows as JSON lines (``eval_answers.jsonl``)."""
        return "".join(json.dumps(row) + "\n" for row in self.rows)


def _shares_context(features: Sequence[dict]) -> bool:
    """Whether :func:`score_task` runs each problem's context once for all its choices: that
    pays where the context is the longer part (a tweet or a passage before a one-word answer);
    before a long answer (PIQA's solutions) it costs more."""
    contexts = [len(_split(f)[0]) for f in features]
    repeated = sum(contexts) - sum(n for f, n in zip(features, contexts) if f["choice"] == 0)
    answers = sum(len(_split(f)[1]) for f in features)
    return repeated > answers


def scoring_tokens(examples: Sequence[Example], tokenizer) -> int:
    """The tokens :func:`score_task` runs through the model to score ``examples`` (0 where none
    is a task problem), for the estimate of a study's time: each choice's tokens, with its
    context once per problem where :func:`shared_context_pass` is used; a numeric problem's
    prompt and its full answer budget (:data:`NUMBER_TOKENS`), each generated token counted as
    one token of a forward pass, which it costs more than."""
    choices = [e for e in examples if isinstance(e, ChoiceExample)]
    if choices:
        features = choice_features(choices, tokenizer)
        if not _shares_context(features):
            return sum(len(f["input_ids"]) for f in features)
        return sum(len(f["input_ids"]) if f["choice"] == 0 else len(_split(f)[1]) for f in features)
    numbers = [e for e in examples if isinstance(e, NumberExample)]
    return sum(len(encode_prompt(tokenizer, e.prompt)) + NUMBER_TOKENS for e in numbers)


def task_problems(examples: Sequence[Example]) -> int:
    """How many of ``examples`` are task problems scored by accuracy (0 for GSM8K, text...)."""
    return sum(isinstance(e, (ChoiceExample, NumberExample)) for e in examples)


def score_task(
    model,
    tokenizer,
    examples: Sequence[Example],
    collator,
    *,
    loss_pass: LossPass,
    batch_size: int,
    device: str,
    dtype: torch.dtype = torch.float32,
    progress=None,
) -> TaskScore | None:
    """The accuracy of ``model`` on the task problems among ``examples`` (an eval split).

    Args:
        model: the causal LM (PEFT-wrapped or not).
        tokenizer: its tokenizer.
        examples: the split; problems of other kinds are skipped, and rows keep each problem's
            index in the split.
        collator: pads a batch of choice features.
        loss_pass: the per-example loss pass (:data:`LossPass`), the one eval loss uses; where
            the contexts repeated over the choices outweigh the answers,
            :func:`shared_context_pass` (the same numbers, to float rounding) is used instead.
        batch_size, device, dtype: of the loss pass and of generation.
        progress: optional tqdm-like bar, advanced by problems.

    Returns:
        The score, or ``None`` when the split holds no task problem (GSM8K, text, ...).
    """
    choices = [(i, e) for i, e in enumerate(examples) if isinstance(e, ChoiceExample)]
    numbers = [(i, e) for i, e in enumerate(examples) if isinstance(e, NumberExample)]
    if choices:
        features = choice_features([e for _, e in choices], tokenizer)
        chosen = shared_context_pass if _shares_context(features) else loss_pass

        def losses(features: list[dict]):
            return chosen(
                model, features, collator, batch_size=batch_size, device=device, dtype=dtype
            )

        rows = score_choices(
            [e for _, e in choices], tokenizer, losses, positions=[i for i, _ in choices]
        )
        if progress is not None:
            progress.update(len(choices))
        return TaskScore("acc", rows)
    if numbers:
        rows = generate_numbers(
            model,
            tokenizer,
            [e for _, e in numbers],
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            positions=[i for i, _ in numbers],
            progress=progress,
        )
        return TaskScore("exact_match", rows)
    return None
