"""Typed settings, one dataclass per concept, shared by ``loraplace run`` and study configs.

Each field's default is defined here and nowhere else: the CLI options of ``run`` are derived
from these dataclasses (:func:`field_help` reads each field's docstring as its ``--help``
text), and a study YAML's sections are built from them. Every problem is collected and raised
once as a :class:`~loraplace.errors.ConfigError` naming the field as it is spelled in a study
YAML and the bad value.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
from dataclasses import dataclass, field, fields

from loraplace.errors import ConfigError, short_repr

#: How close a parameter-matched count must come to its budget before ``loraplace plan
#: --match-params`` tries one rank for attention and one for MLP modules: 2.5%.
MATCH_TOLERANCE = 0.025

#: Format names accepted by ``DataConfig.format`` (each is read by :mod:`loraplace.data.formats`,
#: ``choice`` by :mod:`loraplace.data.tasks`).
FORMATS = ("gsm8k", "alpaca", "messages", "text", "choice")

#: Values of ``report.verdicts_on``: the measure the report's recommendation reads.
VERDICT_MEASURES = ("auto", "loss", "accuracy")

__all__ = [
    "MATCH_TOLERANCE",
    "NO_RUN",
    "RECORDED",
    "SCOPE",
    "STUDY_ONLY",
    "VERDICT_MEASURES",
    "keys_of_scope",
    "AutoSpec",
    "METHODS",
    "DataConfig",
    "LoraSettings",
    "TrainingSettings",
    "EvalSettings",
    "ReportSettings",
    "SCALINGS",
    "PRECISIONS",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_EXAMPLES",
    "MAX_TOKENS",
    "MAX_BATCH",
    "MAX_RANK",
    "MAX_LIST",
    "MAX_LEARNING_RATE",
    "MAX_FACTOR",
    "MAX_PARAMS",
    "int_in",
    "number_in",
    "check_fields",
    "field_doc",
    "field_help",
    "is_int",
    "is_number",
    "planned_pairs",
    "planned_shape",
    "planned_terms",
    "planned_tost",
    "T_ONLY",
]

#: Seeds are passed to numpy and torch, which take 32-bit unsigned seeds.
MAX_SEED = 2**32 - 1

# Upper bounds that keep a typo from eating the machine: each lies far beyond any real study
# and far below what would run for centuries or fill memory (``steps: 10**12`` was once
# accepted and estimated at 547 million hours). The error names the range.
#: Optimizer steps of a run or a probe (a million steps is a real study; ten million the cap).
MAX_STEPS = 10_000_000
#: Examples in a split, and eval problems scored for accuracy.
MAX_EXAMPLES = 10_000_000
#: Tokens per example and generated tokens per problem (the model's context caps both again).
MAX_TOKENS = 1_048_576
#: Sequences per batch.
MAX_BATCH = 65_536
#: LoRA ranks.
MAX_RANK = 65_536
#: Entries of a list setting: seeds, selection seeds, a learning-rate grid, eval checkpoints.
MAX_LIST = 1_000
#: Learning rates (AdamW diverges long before this).
MAX_LEARNING_RATE = 10.0
#: Other positive factors: LoRA alpha, weight decay, the clipping norm, the equivalence margin.
MAX_FACTOR = 1.0e6
#: A parameter budget (ten trillion).
MAX_PARAMS = 10**13
#: LoRA scaling conventions (see docs/CONCEPTS.md, "LoRA scaling").
SCALINGS = ("standard", "rslora")
#: Numeric precisions of a run (see docs/CONCEPTS.md, "Precision").
PRECISIONS = ("fp32", "bf16", "auto")


def is_int(value) -> bool:
    """An ``int`` that is not a ``bool`` (YAML's ``true`` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_in(low: int, high: int) -> tuple:
    """A :func:`check_fields` rule: an integer in ``[low, high]``."""
    return (lambda v: is_int(v) and low <= v <= high, f"an integer in [{low}, {high}]")


def number_in(low: float, high: float, *, low_open: bool = True) -> tuple:
    """A :func:`check_fields` rule: a finite number in ``(low, high]`` (``[low, high]`` when
    ``low_open`` is false)."""
    span = f"{_plain(low)}, {_plain(high)}]"
    if low_open:
        return (lambda v: is_number(v) and low < v <= high, f"a number in ({span}")
    return (lambda v: is_number(v) and low <= v <= high, f"a number in [{span}")


def _plain(x: float) -> str:
    """A bound as a user writes it: ``1000000`` rather than ``1e+06``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _is_seed(value) -> bool:
    return is_int(value) and 0 <= value <= MAX_SEED


def _seed_list_problem(name: str, seeds, *, required: bool) -> str | None:
    if seeds is None and not required:
        return None
    if not isinstance(seeds, list) or not seeds or not all(_is_seed(s) for s in seeds):
        return (
            f"{name} must be a non-empty list of integers in [0, {MAX_SEED}], "
            f"got {short_repr(seeds)}"
        )
    if len(seeds) > MAX_LIST:
        return f"{name} has {len(seeds)} seeds; at most {MAX_LIST} are allowed"
    if len(set(seeds)) != len(seeds):
        return f"{name} has duplicates: {short_repr(seeds)}"
    return None


def check_fields(obj, section: str, rules: dict[str, tuple]) -> list[str]:
    """Check ``obj``'s fields against ``{name: (predicate, description)}``; return the problems."""
    problems = []
    for name, (ok, description) in rules.items():
        value = getattr(obj, name)
        if not ok(value):
            problems.append(f"{section}.{name} must be {description}, got {short_repr(value)}")
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


@functools.cache
def _docstrings(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal after each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


#: The key of a field's ``metadata`` that says what the field decides (:func:`keys_of_scope`).
#: A field without it decides how every run computes, and so belongs to each run's recipe.
SCOPE = "scope"
#: Only a study has it: which runs it makes (its seed lists and learning-rate grid). A single
#: ``loraplace run`` does not take it.
STUDY_ONLY = "study"
#: The study decides it for each run, and each run records its own value (its learning rate):
#: runs are compared by their records, not by the study's value.
RECORDED = "recorded"
#: Decides no run at all (the report, trackers, where runs execute, reuse).
NO_RUN = "no-run"


def keys_of_scope(cls, *scopes: str) -> tuple[str, ...]:
    """The names of the fields of dataclass ``cls`` whose :data:`SCOPE` is one of ``scopes``.

    The one declaration of which settings belong to a study rather than to its runs: resume,
    reuse, the study's identity, the ``run`` command's options and the API read it here.
    """
    return tuple(f.name for f in fields(cls) if f.metadata.get(SCOPE) in scopes)


def field_doc(cls, name: str) -> str:
    """The docstring of field ``name`` of dataclass ``cls``, on one line ("" without one)."""
    return _docstrings(cls).get(name, "")


def field_help(cls, name: str) -> str:
    """The docstring of field ``name`` of settings class ``cls``, with its default appended."""
    default = next(f.default for f in fields(cls) if f.name == name)
    text = field_doc(cls, name)
    text = text.replace("%", "%%")  # argparse formats help strings with %
    return f"{text} (default: {default})" if default is not None else text


@dataclass
class DataConfig:
    """What to train and evaluate on. Fixed per study: every run sees the same splits."""

    dataset: str = "gsm8k"
    """A built-in alias (gsm8k), a built-in task scored by accuracy (piqa, boolq, asdiv,
    tweet-sentiment), a local .json/.jsonl/.txt file, or a hub dataset id (owner/name or
    owner/name:config; needs the datasets package and network access)."""
    train_examples: int = 256
    """Training examples drawn from the source."""
    eval_examples: int = 64
    """Held-out evaluation examples, disjoint from every other split."""
    validation_examples: int = 0
    """Validation examples carved from the training pool (disjoint from train and eval), on
    which learning rates are selected; 0 for none."""
    max_length: int = 384
    """Maximum tokens per example (prompt + completion); longer completions are cut at the end,
    and an example whose prompt alone is too long is dropped."""
    format: str | None = None
    """gsm8k, alpaca, messages, text or choice (context, choices, label: scored by accuracy);
    unset detects it from the first record's fields."""
    split_seed: int = 0
    """Seed of the deterministic split into eval, validation and train examples. Fixed per
    study; not a run's training seed."""

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "data",
            {
                "dataset": (
                    lambda v: isinstance(v, str) and bool(v.strip()),
                    "a dataset alias, file path or hub id",
                ),
                "train_examples": int_in(1, MAX_EXAMPLES),
                "eval_examples": int_in(1, MAX_EXAMPLES),
                "validation_examples": int_in(0, MAX_EXAMPLES),
                "max_length": int_in(2, MAX_TOKENS),
                "format": (
                    lambda v: v is None or v in FORMATS,
                    f"one of {', '.join(FORMATS)} (or null to detect it)",
                ),
                "split_seed": (_is_seed, f"an integer in [0, {MAX_SEED}]"),
            },
        )
        _raise(problems)


@dataclass
class LoraSettings:
    """LoRA hyperparameters, the same for every strategy of a study."""

    rank: int = 8
    """Global LoRA rank; a strategy part's :rN, a rank sweep or parameter matching overrides
    it."""
    alpha: float = 16.0
    """LoRA alpha. Each module's scaling is alpha / r (standard) or alpha / sqrt(r) (rslora),
    with r the module's own rank."""
    dropout: float = 0.0
    """Dropout on the LoRA input. Off by default: short runs have little to regularise, and
    on a CPU the dropout masks cost about 30% of training time."""
    scaling: str = "standard"
    """LoRA scaling convention: standard (alpha / r) or rslora (alpha / sqrt(r), the
    rank-stabilised scaling of arXiv 2312.03732)."""

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "lora",
            {
                "rank": int_in(1, MAX_RANK),
                "alpha": number_in(0, MAX_FACTOR),
                "dropout": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
                "scaling": (lambda v: v in SCALINGS, f"one of {', '.join(SCALINGS)}"),
            },
        )
        _raise(problems)


@dataclass
class TrainingSettings:
    """Optimisation settings; with the seed they fix everything a run does."""

    steps: int = 24
    """Optimizer steps per run."""
    batch_size: int = 4
    """Examples per step (dynamic padding, length-grouped batches)."""
    learning_rate: float = field(default=2.0e-4, metadata={SCOPE: RECORDED})
    """Peak learning rate (AdamW), used when no learning-rate grid is given."""
    warmup_steps: int = 2
    """Linear warm-up steps before the linear decay to zero."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA parameters."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    seeds: list[int] | None = field(default=None, metadata={SCOPE: STUDY_ONLY})
    """Seeds of a study (each strategy runs once per seed; default [0, 1]). A run's seed fixes
    the LoRA initialisation, dropout and data order."""
    learning_rates: list[float] | None = field(default=None, metadata={SCOPE: STUDY_ONLY})
    """A learning-rate grid: each (strategy, rank) is first trained at every value on the
    selection seeds and scored on the validation split; the final runs use the value with the
    lowest validation loss. Unset: every run uses learning_rate."""
    selection_seeds: list[int] | None = field(default=None, metadata={SCOPE: STUDY_ONLY})
    """Seeds of the learning-rate selection stage (default: the first seed)."""
    precision: str = "fp32"
    """fp32, bf16 (frozen base weights in bf16, forward under bf16 autocast; adapters,
    optimizer and losses in fp32) or auto (bf16 where the CPU has AMX-BF16 or AVX512-BF16 or
    the GPU has bf16, else fp32). A study saves the precision auto chose, and never mixes
    two."""

    def __post_init__(self) -> None:
        if self.seeds is None:
            self.seeds = [0, 1]
        if self.learning_rates and self.selection_seeds is None and isinstance(self.seeds, list):
            # Resolved once and saved in study.yaml, so a later --seeds cannot move selection
            # to another seed under runs already trained at the rate chosen on this one.
            self.selection_seeds = self.seeds[:1]
        problems = check_fields(
            self,
            "training",
            {
                "steps": int_in(1, MAX_STEPS),
                "batch_size": int_in(1, MAX_BATCH),
                "learning_rate": number_in(0, MAX_LEARNING_RATE),
                "warmup_steps": int_in(0, MAX_STEPS),
                "weight_decay": number_in(0, MAX_FACTOR, low_open=False),
                "max_grad_norm": number_in(0, MAX_FACTOR),
                "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            },
        )
        seed_problem = _seed_list_problem("training.seeds", self.seeds, required=True)
        problems += [seed_problem] if seed_problem else []
        grid = self.learning_rates
        if grid is not None:
            if (
                not isinstance(grid, list)
                or not grid
                or len(grid) > MAX_LIST
                or not all(is_number(v) and 0 < v <= MAX_LEARNING_RATE for v in grid)
            ):
                problems.append(
                    f"training.learning_rates must be a non-empty list of at most {MAX_LIST} "
                    f"numbers in (0, {_plain(MAX_LEARNING_RATE)}], got {short_repr(grid)}"
                )
            elif len(set(grid)) != len(grid):
                problems.append(f"training.learning_rates has duplicates: {short_repr(grid)}")
        selection = self.selection_seeds
        if selection is not None:
            if grid is None:
                problems.append(
                    "training.selection_seeds is set but training.learning_rates is not"
                )
            else:
                problem = _seed_list_problem("training.selection_seeds", selection, required=True)
                problems += [problem] if problem else []
        _raise(problems)

    @property
    def selection(self) -> list[int]:
        """The seeds of the learning-rate selection stage (empty without a grid)."""
        if not self.learning_rates:
            return []
        return list(self.selection_seeds or self.seeds[:1])


@dataclass
class EvalSettings:
    """What is measured after (and during) training."""

    accuracy_examples: int = 0
    """Eval problems scored by greedy decoding for task accuracy (GSM8K-style answers); 0
    skips it. A 135M model scores near zero on GSM8K, and a handful of problems carries no
    information, so it is opt-in."""
    max_new_tokens: int = 256
    """Generation budget per problem for accuracy."""
    batch_size: int = 8
    """Sequences per forward pass when evaluating loss and accuracy."""
    checkpoints: list[float] | None = None
    """Fractions of the training steps (in (0, 1]) at which eval loss is also measured, e.g.
    [0.25, 0.5, 1.0]; the curve goes to metrics.jsonl and the report checks ranking stability.
    The final step is always evaluated."""

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "eval",
            {
                "accuracy_examples": int_in(0, MAX_EXAMPLES),
                "max_new_tokens": int_in(1, MAX_TOKENS),
                "batch_size": int_in(1, MAX_BATCH),
                "checkpoints": (
                    lambda v: (
                        v is None
                        or (
                            isinstance(v, list)
                            and 0 < len(v) <= MAX_LIST
                            and all(is_number(f) and 0 < f <= 1 for f in v)
                            and len(set(v)) == len(v)
                        )
                    ),
                    f"a non-empty list of at most {MAX_LIST} distinct fractions in (0, 1]",
                ),
            },
        )
        _raise(problems)

    def checkpoint_steps(self, steps: int) -> list[int]:
        """The optimizer steps at which eval loss is measured: the checkpoints and the last."""
        fractions = self.checkpoints or []
        return sorted({max(1, min(steps, round(f * steps))) for f in fractions} | {steps})


@dataclass
class ReportSettings:
    """How the report turns numbers into sentences (see docs/STATISTICS.md)."""

    equivalence_margin: float = 0.01
    """Margin, in nats of eval loss, within which two strategies count as equivalent when a
    TOST equivalence test shows it (0.01 nats is a 1% change in perplexity)."""
    note: str | None = None
    """A sentence printed under the report's title, e.g. what the study can and cannot show."""
    lowest: bool = True
    """Whether the findings test the condition with the lowest mean eval loss against every
    other (without a rank sweep); its tests then join the comparisons with the reference in
    one Holm family. ``false`` keeps that family to the comparisons with the reference alone,
    as an analysis plan fixed in advance may require."""
    comparisons: list | None = None
    """Planned comparisons, fixed in advance: each ``[A, B]`` (paired t of A − B over seeds,
    and TOST within the margin), ``[A, B, t-only]`` (paired t alone) or ``[[A, B], [C, D]]``,
    the per-seed difference of differences (A − B) − (C − D) (paired t alone), A to D strategy
    names. The t-tests form one Holm family and the TOSTs another; they are the findings'
    families, and the report opens with a recommendation drawn from them
    (docs/STATISTICS.md). Not with ``ranks``."""
    accuracy_margin: float = 1.5
    """Margin, in accuracy points, of the TOST of a planned comparison on accuracy (for a
    study that scores accuracy)."""
    verdicts_on: str = "auto"
    """The measure the recommendation reads: ``auto`` (accuracy where the study's task is
    scored by accuracy, else eval loss), ``loss`` or ``accuracy``. ``loss`` on a task scored by
    accuracy keeps its accuracy tests in the report, labelled descriptive, as an analysis plan
    may fix in advance (docs/ATLAS-PLAN.md, task 2)."""

    @property
    def accuracy_descriptive(self) -> bool:
        """Whether tests on accuracy are reported beside the verdicts rather than as them."""
        return self.verdicts_on == "loss"

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "report",
            {
                "equivalence_margin": number_in(0, MAX_FACTOR),
                "accuracy_margin": number_in(0, 100),
                "verdicts_on": (
                    lambda v: v in VERDICT_MEASURES,
                    "one of " + ", ".join(VERDICT_MEASURES),
                ),
                "comparisons": (
                    lambda v: (
                        v is None
                        or (
                            isinstance(v, list)
                            and 0 < len(v) <= MAX_LIST
                            and all(planned_shape(c) for c in v)
                        )
                    ),
                    "a non-empty list of [A, B], [A, B, t-only] or [[A, B], [C, D]] "
                    "(strategy names)",
                ),
                "lowest": (lambda v: isinstance(v, bool), "true or false"),
                "note": (
                    lambda v: v is None or (isinstance(v, str) and len(v) <= 1000),
                    "a string of at most 1000 characters",
                ),
            },
        )
        _raise(problems)

    def planned_problems(self, strategies, sweep: bool = False) -> list[str]:
        """Why ``comparisons`` does not fit a study's ``strategies`` (one line per problem).

        Args:
            strategies: The study's strategy names.
            sweep: Whether the study sweeps ranks (planned comparisons name conditions of a
                study without ``ranks``).
        """
        if not self.comparisons:
            return []
        if sweep:
            return ["report.comparisons cannot be used with ranks: it names strategies of a "
                    "study without a rank sweep"]  # fmt: skip
        names, problems = list(strategies), []
        for i, entry in enumerate(self.comparisons):
            terms = planned_terms(entry)
            unknown = [n for n in dict.fromkeys(terms) if n not in names]
            if unknown:
                problems.append(
                    f"report.comparisons[{i}] names {short_repr(unknown[0])}, not a strategy of "
                    f"this study (strategies: {', '.join(names)})"
                )
            elif any(a == b for a, b in planned_pairs(entry)):
                problems.append(
                    f"report.comparisons[{i}] compares a strategy with itself: {short_repr(entry)}"
                )
        return problems


def _is_pair(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(x, str) and x.strip() for x in value)
    )


#: The third element of ``[A, B, t-only]``: a planned difference tested without a TOST.
T_ONLY = "t-only"


def _t_only(entry) -> bool:
    return isinstance(entry, list) and len(entry) == 3 and entry[2] == T_ONLY


def planned_shape(entry) -> bool:
    """Whether ``entry`` of ``report.comparisons`` is ``[A, B]``, ``[A, B, t-only]`` or
    ``[[A, B], [C, D]]``."""
    return (
        _is_pair(entry)
        or (_t_only(entry) and _is_pair(entry[:2]))
        or (isinstance(entry, list) and len(entry) == 2 and all(_is_pair(x) for x in entry))
    )


def planned_pairs(entry) -> list[tuple[str, str]]:
    """The ``(A, B)`` differences of a well-shaped planned comparison: one, or two."""
    if _t_only(entry):
        return [tuple(entry[:2])]
    return [tuple(entry)] if _is_pair(entry) else [tuple(x) for x in entry]


def planned_tost(entry) -> bool:
    """Whether a well-shaped planned comparison has a TOST: ``[A, B]`` only."""
    return _is_pair(entry)


def planned_terms(entry) -> list[str]:
    """The strategy names of a well-shaped planned comparison, in order."""
    return [name for pair in planned_pairs(entry) for name in pair]


#: Placement methods: data-free weight spectra, a trained probe's adapter outputs, the control.
METHODS: tuple[str, ...] = ("snr", "grad", "random")


@dataclass
class AutoSpec:
    """An automatic strategy: how to score modules and how many parameters to place.

    In a study config: ``strategies: {auto-grad: {auto: {method: grad, budget: attention-only}}}``.
    """

    method: str = "grad"
    """grad (a short LoRA probe on the training split), snr (base weights) or random."""
    budget: int | str = "attn"
    """Trainable parameters to place: an integer, or a strategy (a name in the study, or a
    strategy string) whose count at the rank is the budget."""
    rank: int | None = None
    """Rank of every chosen module (default: the study's rank, or each sweep rank)."""
    seed: int = 0
    """Seed of the probe (and of the random control)."""
    probe_per_seed: bool = False
    """Resolve a placement for each training seed (with that seed), to measure the probe's own
    variance; by default one placement serves every seed."""
    probe_steps: int = 16
    """Optimizer steps of the grad probe."""
    probe_rank: int = 4
    """Rank of the grad probe's all-linear LoRA."""
    probe_learning_rate: float = 1.0e-3
    """Learning rate of the grad probe."""
    probe_batches: int = 4
    """Training batches the adapters' output norms are averaged over."""

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "auto",
            {
                "method": (lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
                "budget": (
                    lambda v: (
                        (is_int(v) and 0 < v <= MAX_PARAMS)
                        or (isinstance(v, str) and bool(v.strip()))
                    ),
                    f"an integer in [1, {MAX_PARAMS}] or a strategy",
                ),
                "rank": (
                    lambda v: v is None or int_in(1, MAX_RANK)[0](v),
                    int_in(1, MAX_RANK)[1],
                ),
                "seed": (lambda v: is_int(v) and 0 <= v < 2**32, "an integer in [0, 2^32)"),
                "probe_per_seed": (lambda v: isinstance(v, bool), "true or false"),
                "probe_steps": int_in(1, MAX_STEPS),
                "probe_rank": int_in(1, MAX_RANK),
                "probe_learning_rate": number_in(0, MAX_LEARNING_RATE),
                "probe_batches": int_in(1, MAX_STEPS),
            },
        )
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_mapping(cls, raw, where: str) -> AutoSpec:
        """Build from a config mapping, naming unknown keys and bad values under ``where``."""
        from dataclasses import fields

        if not isinstance(raw, dict):
            raise ConfigError([f"{where}.auto must be a mapping, got {short_repr(raw)}"])
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in raw if k not in valid]
        problems = [f"unknown key '{where}.auto.{k}' (valid: {', '.join(valid)})" for k in unknown]
        try:
            spec = cls(**{k: v for k, v in raw.items() if k in valid})
        except ConfigError as exc:
            problems += [p.replace("auto.", f"{where}.auto.", 1) for p in exc.problems]
        except TypeError as exc:
            problems.append(f"{where}.auto: {exc}")
        if problems:
            raise ConfigError(problems)
        return spec
