"""Automatic placement: the modules most worth adapting under a trainable-parameter budget.

A placement problem has one **unit** per adaptable projection module (a fused module such as
GPT-2's ``c_attn`` is one unit), each costing ``rank * (in + out)`` LoRA parameters, exactly as
:mod:`loraplace.plan` counts them. A **score** per unit says how much it is worth adapting:

- ``snr`` (:func:`snr_scores`): data-free, from the base weights; the share of a weight's
  spectral energy in singular values above the Marchenko–Pastur bulk edge, in the spirit of
  Spectrum (Hartford et al., 2024, https://arxiv.org/abs/2406.06623).
- ``grad`` (:func:`contribution_scores`, the default; :func:`gradient_sensitivity` as an
  alternative): data-driven, from an all-linear LoRA probe trained briefly on the training split;
  the mean norm of each adapter's output ``‖ΔW x‖`` (LoRA-drop, Zhou et al., 2024,
  https://arxiv.org/abs/2402.07721).
- ``random`` (:func:`random_selection`): the control, a placement drawn uniformly from all
  placements that fit the same budget window.

:func:`select` solves the 0/1 knapsack exactly (maximum total score, cost within
``[(1 - tolerance) * budget, budget]``), and :func:`render_strategy` writes the chosen modules as
a readable strategy string that compiles back to exactly them. docs/PLACEMENT.md explains what
each score measures, what it costs, and why no placement claim means anything without the random
control.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loraplace.arch import ArchInfo
from loraplace.errors import StrategyError
from loraplace.evaluate import accepts_logits_mask, autocast_for
from loraplace.plan import compile_plan
from loraplace.strategy import ATTN_ROLES, MLP_ROLES, ROLES, LayerSelector

__all__ = [
    "METHODS",
    "Unit",
    "Selection",
    "Placement",
    "units_of",
    "mp_median",
    "spectral_signal_fraction",
    "snr_scores",
    "contribution_scores",
    "gradient_sensitivity",
    "select",
    "random_selection",
    "render_strategy",
    "place",
    "place_random",
    "write_importance",
]

#: Placement methods: data-free weight spectra, a trained probe's adapter outputs, the control.
METHODS: tuple[str, ...] = ("snr", "grad", "random")

#: Dynamic-programming tables larger than this many cells are refused (0.8 GB as float64).
_MAX_DP_CELLS = 100_000_000


@dataclass(frozen=True)
class Unit:
    """One adaptable module: the thing a placement takes or leaves.

    Attributes:
        module: full module name in the model (``model.layers.3.self_attn.q_proj``).
        layer: its 0-based decoder layer.
        roles: the roles it carries (several for a fused module, which is adapted whole).
        in_features: input width.
        out_features: output width.
    """

    module: str
    layer: int
    roles: tuple[str, ...]
    in_features: int
    out_features: int

    def cost(self, rank: int) -> int:
        """LoRA parameters of this module at ``rank``: ``rank * (in + out)`` (A and B)."""
        return rank * (self.in_features + self.out_features)


def units_of(arch: ArchInfo) -> tuple[Unit, ...]:
    """The placement units of a classified model, in model order (one per projection module)."""
    return tuple(
        Unit(p.name, p.layer, p.roles, p.in_features, p.out_features) for p in arch.projections
    )


# --- snr: data-free, from the weight spectra ----------------------------------------------------


@functools.lru_cache(maxsize=256)
def mp_median(beta: float) -> float:
    """Median of the Marchenko–Pastur law with aspect ratio ``beta`` and unit noise variance.

    The law of the eigenvalues of ``X Xᵀ / n`` for an ``m x n`` matrix ``X`` of i.i.d.
    unit-variance entries with ``beta = m / n <= 1``, with density
    ``√((b - x)(x - a)) / (2π beta x)`` on ``[a, b] = [(1 - √beta)², (1 + √beta)²]``. Found by
    root finding on its distribution function, integrated numerically after the substitution
    ``x = 1 + beta + 2√beta cos φ``, which makes the integrand smooth even at ``beta = 1``.

    Args:
        beta: the aspect ratio, in ``(0, 1]``.

    Returns:
        The median eigenvalue.
    """
    from scipy.integrate import quad
    from scipy.optimize import brentq

    if not 0 < beta <= 1:
        raise ValueError(f"the aspect ratio must be in (0, 1], got {beta}")
    centre, radius = 1 + beta, 2 * math.sqrt(beta)

    def density(phi: float) -> float:  # the density times |dx/dφ|
        return (radius * math.sin(phi)) ** 2 / (
            2 * math.pi * beta * (centre + radius * math.cos(phi))
        )

    # Mass below x = centre + radius * cos(phi) is the integral from phi to π.
    phi = brentq(lambda t: quad(density, t, math.pi)[0] - 0.5, 0.0, math.pi, xtol=1e-13)
    return centre + radius * math.cos(phi)


def spectral_signal_fraction(weight: torch.Tensor) -> float:
    """Share of a matrix's spectral energy above the Marchenko–Pastur bulk edge.

    Model the ``m x n`` weight (``m <= n`` after transposing, which changes no singular value)
    as signal plus i.i.d. noise of unknown variance ``σ²``. Pure noise has its singular values
    in a bulk that ends at ``σ (√m + √n)``. ``σ`` is estimated from the median singular value,
    matched to the median of the Marchenko–Pastur law (Gavish & Donoho, 2014,
    https://arxiv.org/abs/1305.5870): ``σ = s_med / √(n · mp_median(m / n))``. The score is
    ``f = Σ s² over s > edge / Σ s²``, in ``[0, 1]`` (``f / (1 - f)`` is an energy
    signal-to-noise ratio; Spectrum estimates ``σ`` and normalises differently). It is 0 for
    pure noise (up to finite-size fluctuations of the top singular value), near 1 for a strong
    low-rank matrix, and 0 for a flat spectrum such as the identity's, however structured.

    The squared singular values are the eigenvalues of the ``m x m`` Gram matrix, computed in
    float64: ``m² n`` multiply-adds plus an ``m x m`` eigensolve, about twice as fast as an SVD
    on CPU and exact enough for energies.

    Args:
        weight: a 2-D tensor on a real device (any dtype).

    Returns:
        The signal fraction ``f``.
    """
    matrix = weight.detach().double()
    if matrix.shape[0] > matrix.shape[1]:
        matrix = matrix.T
    m, n = matrix.shape
    energy = torch.linalg.eigvalsh(matrix @ matrix.T).clamp_min(0).cpu()
    sigma = math.sqrt(float(energy.median()) / (n * mp_median(m / n)))
    edge = sigma * (math.sqrt(m) + math.sqrt(n))
    total = float(energy.sum())
    return float(energy[energy > edge**2].sum()) / total if total > 0 else 0.0


def _module(model: nn.Module, name: str) -> nn.Module:
    """The module ``name`` of a base model, also inside a PEFT wrapper (its base layer)."""
    for candidate in (name, f"base_model.model.{name}"):
        try:
            module = model.get_submodule(candidate)
        except AttributeError:
            continue
        return getattr(module, "base_layer", module)
    raise ValueError(f"the model has no module '{name}'; was it classified from another model?")


def snr_scores(model: nn.Module, arch: ArchInfo) -> dict[str, float]:
    """Data-free scores: each module's :func:`spectral_signal_fraction` of its base weight.

    One singular-value decomposition per module (``O(m² n)`` for an ``m x n`` weight, ``m <= n``).
    Works for ``nn.Linear`` and transformers ``Conv1D`` (whose weight is stored transposed) and
    scores a fused module's whole weight.

    Args:
        model: the model with its real weights (not built on ``meta``); a PEFT-wrapped model is
            read through its base layers.
        arch: the classifier's result for ``model``.

    Returns:
        Full module name -> score in ``[0, 1]``.

    Raises:
        ValueError: when the weights are on the ``meta`` device.
    """
    scores = {}
    for unit in units_of(arch):
        weight = _module(model, unit.module).weight
        if weight.is_meta:
            raise ValueError("snr needs the model's weights; this model was built on 'meta'")
        scores[unit.module] = spectral_signal_fraction(weight)
    return scores


# --- grad: data-driven, from a briefly trained all-linear LoRA probe ---------------------------


def _lora_layers(peft_model: nn.Module, arch: ArchInfo) -> dict[str, nn.Module]:
    """Arch module name -> the PEFT LoRA layer wrapping it, for every wrapped classified module."""
    wanted = {unit.module for unit in units_of(arch)}
    found = {}
    for name, module in peft_model.named_modules():
        key = name.removeprefix("base_model.model.")
        if key in wanted and hasattr(module, "lora_A") and hasattr(module, "lora_B"):
            found[key] = module
    if not found:
        raise ValueError("the probe model has no LoRA layer on any classified module")
    return found


def _forward(model: nn.Module, batch: Mapping, device: str, dtype: torch.dtype, labels: bool):
    inputs = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
    }
    if labels:
        inputs["labels"] = batch["labels"].to(device)
    elif accepts_logits_mask(model):
        inputs["logits_to_keep"] = 1  # the scores need the layers' activations, not the logits
    with autocast_for(device, dtype):
        return model(**inputs)


def contribution_scores(
    peft_model: nn.Module,
    arch: ArchInfo,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Data-driven scores: each adapter's mean output norm ``‖ΔW x‖`` over the probe batches.

    LoRA-drop's importance (Zhou et al., 2024, https://arxiv.org/abs/2402.07721): after a short
    all-linear LoRA training, an adapter whose update ``ΔW x = scaling · B A x`` stays small on
    the training data changes its module's output little. Forward hooks on every LoRA ``B``
    collect the norm per token, averaged over non-padding tokens; one forward pass per batch in
    inference mode, without logits where the model allows.

    Args:
        peft_model: a PEFT model with LoRA on the modules to score, already trained briefly.
        arch: the classifier's result for its base model.
        batches: dicts with ``input_ids`` and ``attention_mask`` tensors (as
            ``DynamicPaddingCollator`` makes them) from the training split.
        device: where the model is.
        dtype: compute dtype (bf16 autocast on CUDA when ``torch.bfloat16``).

    Returns:
        Full module name -> mean ``‖ΔW x‖`` over tokens, for every LoRA-wrapped module.

    Raises:
        ValueError: when the model has no LoRA layer, or the batches hold no token.
    """
    layers = _lora_layers(peft_model, arch)
    totals = {name: torch.zeros((), dtype=torch.float64, device=device) for name in layers}
    mask: list[torch.Tensor] = []

    def hook_for(name: str, scale: float):
        def hook(_module, _inputs, output):
            norms = output.float().norm(dim=-1) * scale
            totals[name] += (norms * mask[0]).sum().double()

        return hook

    handles = [
        layer.lora_B[adapter].register_forward_hook(hook_for(name, layer.scaling[adapter]))
        for name, layer in layers.items()
        for adapter in layer.active_adapters[:1]
    ]
    was_training, tokens = peft_model.training, 0
    peft_model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                mask[:] = [batch["attention_mask"].to(device).float()]
                _forward(peft_model, batch, device, dtype, labels=False)
                tokens += int(batch["attention_mask"].sum())
    finally:
        for handle in handles:
            handle.remove()
        peft_model.train(was_training)
    if tokens == 0:
        raise ValueError("the probe batches hold no non-padding token")
    return {name: float(total) / tokens for name, total in totals.items()}


def gradient_sensitivity(
    peft_model: nn.Module,
    arch: ArchInfo,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Gradient sensitivity ``Σ |θ · ∂L/∂θ|`` over each module's LoRA parameters, batch mean.

    AdaLoRA's importance (Zhang et al., 2023, https://arxiv.org/abs/2303.10512), without its
    smoothing: a first-order estimate of how much the loss would change if the adapter's
    parameters were zeroed. One forward and backward pass per batch (about three forward
    passes' time) with gradients kept on the LoRA parameters only; ``batches`` need ``labels``.
    Before any training ``B = 0`` makes every score 0: use a probe trained briefly.

    Args:
        peft_model: a PEFT model with LoRA on the modules to score.
        arch: the classifier's result for its base model.
        batches: dicts with ``input_ids``, ``attention_mask`` and ``labels`` tensors.
        device: where the model is.
        dtype: compute dtype (bf16 autocast on CUDA when ``torch.bfloat16``).

    Returns:
        Full module name -> mean sensitivity per batch, for every LoRA-wrapped module.

    Raises:
        ValueError: when the model has no LoRA layer, or ``batches`` is empty.
    """
    layers = _lora_layers(peft_model, arch)
    params = {
        name: [layer.lora_A[a].weight, layer.lora_B[a].weight]
        for name, layer in layers.items()
        for a in layer.active_adapters[:1]
    }
    flags = {id(p): p.requires_grad for ps in params.values() for p in ps}
    totals = dict.fromkeys(params, 0.0)
    was_training, count = peft_model.training, 0
    peft_model.eval()  # no dropout: the same batches give the same scores
    try:
        for ps in params.values():
            for p in ps:
                p.requires_grad_(True)
                p.grad = None
        for batch in batches:
            _forward(peft_model, batch, device, dtype, labels=True).loss.backward()
            for name, ps in params.items():
                totals[name] += sum(float((p.detach() * p.grad).abs().sum()) for p in ps)
                for p in ps:
                    p.grad = None
            count += 1
    finally:
        for ps in params.values():
            for p in ps:
                p.grad = None
                p.requires_grad_(flags[id(p)])
        peft_model.train(was_training)
    if count == 0:
        raise ValueError("gradient sensitivity needs at least one batch")
    return {name: total / count for name, total in totals.items()}


# --- selection: exact knapsack, and the uniform random control -----------------------------------


@dataclass(frozen=True)
class Selection:
    """The modules a selection takes, with their ranks.

    Attributes:
        chosen: full module name -> LoRA rank, in model order.
        cost: LoRA parameters of the chosen modules (``Σ rank * (in + out)``).
        budget: the parameter budget it was selected for.
        score: the total score maximised (``None`` for the random control).
    """

    chosen: dict[str, int]
    cost: int
    budget: int
    score: float | None = None


def _options(units, rank: int, ranks: Iterable[int] | None) -> tuple[list, int]:
    """Per unit, its ``(rank, cost)`` options; and the gcd of every cost (the DP's cost step)."""
    choices = sorted(set(ranks)) if ranks is not None else [rank]
    if not choices or any(not isinstance(r, int) or r < 1 for r in choices):
        raise StrategyError(f"ranks must be positive integers, got {list(choices)}")
    options = [[(r, unit.cost(r)) for r in choices] for unit in units]
    step = math.gcd(*(cost for opts in options for _, cost in opts))
    return options, step


def _window(units, options, step: int, budget: int, tolerance: float) -> tuple[int, int]:
    """The DP's cost window ``[low, high]`` in steps, after the checks that can fail early."""
    if not units:
        raise StrategyError("nothing to place: no adaptable module")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise StrategyError(f"the parameter budget must be a positive integer, got {budget!r}")
    if not 0 <= tolerance < 1:
        raise StrategyError(f"the budget tolerance must be in [0, 1), got {tolerance}")
    cheapest = min(cost for opts in options for _, cost in opts)
    if budget < cheapest:
        unit, (r, _) = min(zip(units, (o[0] for o in options)), key=lambda u: u[0].cost(u[1][0]))
        raise StrategyError(
            f"budget {budget:,} is below the cheapest module: {unit.module} costs {cheapest:,} "
            f"at rank {r}; raise the budget or lower the rank"
        )
    low_params = budget - math.floor(budget * tolerance)
    everything = sum(max(cost for _, cost in opts) for opts in options)
    if everything < low_params:
        raise StrategyError(
            f"budget {budget:,} cannot be reached: adapting every module at the highest rank "
            f"costs {everything:,}; lower the budget to at most {everything:,} or raise the rank"
        )
    high = budget // step
    if (high + 1) * len(units) > _MAX_DP_CELLS:
        raise StrategyError(f"budget {budget:,} is too large to place exactly on this model")
    return -(-low_params // step), high


def _no_fit(budget: int, tolerance: float, reachable: np.ndarray, step: int) -> StrategyError:
    below = int(np.flatnonzero(reachable).max()) * step
    return StrategyError(
        f"no placement costs between {budget - math.floor(budget * tolerance):,} and {budget:,} "
        f"parameters (within {tolerance:.0%} of the budget); the closest below costs {below:,}"
    )


def select(
    units: Iterable[Unit],
    scores: Mapping[str, float],
    budget: int,
    *,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> Selection:
    """The modules of maximal total score whose cost lies within ``tolerance`` below ``budget``.

    An exact 0/1 knapsack by dynamic programming over costs divided by their greatest common
    divisor (one rank gives few distinct costs, so the table is small: 1,591 costs x 210 units for
    SmolLM2-135M at any budget up to ``all``). With several ``ranks`` each unit takes at most
    one of them, and a unit at rank ``r`` is worth ``score * sqrt(r / min(ranks))``: more rank is
    worth more, with diminishing returns, so a higher rank goes only where a score pays for it.
    Ties are broken deterministically: the fuller budget first, then, unit by unit in model
    order from the last, not taking a unit (or taking its lower rank) over taking it.

    Args:
        units: the candidate modules (:func:`units_of`).
        scores: full module name -> score (higher = more worth adapting); every unit needs one.
        budget: the most LoRA parameters the selection may cost.
        rank: the LoRA rank when ``ranks`` is not given.
        ranks: several ranks to choose from per unit, e.g. ``(4, 8, 16)``.
        tolerance: the selection costs at least ``(1 - tolerance) * budget``.

    Returns:
        The selection; ``cost <= budget`` and ``cost >= budget - floor(tolerance * budget)``.

    Raises:
        StrategyError: a unit without a finite score, or a budget that cannot be met (below the
            cheapest module, above everything, or no combination inside the window).
    """
    units = list(units)
    missing = [u.module for u in units if not math.isfinite(scores.get(u.module, math.nan))]
    if missing:
        raise StrategyError(
            f"{len(missing)} module(s) have no finite score (e.g. {missing[0]}); the scores must "
            f"cover every module the placement may choose"
        )
    options, step = _options(units, rank, ranks)
    low, high = _window(units, options, step, budget, tolerance)
    base = min(r for r, _ in options[0])
    best = np.full(high + 1, -np.inf)
    best[0] = 0.0
    taken = np.zeros((len(units), high + 1), dtype=np.uint8)  # 0 = left out, k = option k
    for i, (unit, opts) in enumerate(zip(units, options)):
        new = best.copy()
        for k, (r, cost) in enumerate(opts, start=1):
            w = cost // step
            if w > high:
                continue
            candidate = best[: high + 1 - w] + scores[unit.module] * math.sqrt(r / base)
            better = candidate > new[w:]  # strict: an equal score keeps the earlier choice
            new[w:][better] = candidate[better]
            taken[i, w:][better] = k
        best = new
    window = best[low:]
    if not np.isfinite(window).any():
        raise _no_fit(budget, tolerance, np.isfinite(best), step)
    c = low + int(np.flatnonzero(window == window[np.isfinite(window)].max()).max())
    total, chosen = float(best[c]), {}
    for i in range(len(units) - 1, -1, -1):
        k = int(taken[i, c])
        if k:
            r, cost = options[i][k - 1]
            chosen[units[i].module] = r
            c -= cost // step
    assert c == 0, "knapsack backtrack did not end at cost 0"
    return _selection(units, chosen, budget, total)


def _selection(units, chosen: dict[str, int], budget: int, score: float | None) -> Selection:
    ordered = {u.module: chosen[u.module] for u in units if u.module in chosen}
    cost = sum(u.cost(chosen[u.module]) for u in units if u.module in chosen)
    return Selection(ordered, cost, budget, score)


def random_selection(
    units: Iterable[Unit],
    budget: int,
    seed: int,
    *,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> Selection:
    """The random control: a placement drawn uniformly from all placements in the budget window.

    "Uniform" means every selection (each unit left out or given one of ``ranks``) whose cost
    lies in ``[budget - floor(tolerance * budget), budget]`` is equally likely: the window
    :func:`select` chooses from, with no information about which module matters. With unequal
    costs a module's chance of being taken then depends on its cost (below half of everything,
    cheaper modules are taken more often); that is what "no preference among placements at this
    budget" implies, and it is why a per-module coin flip would not do. Sampled exactly: count
    the selections per cost by dynamic programming, then draw backwards unit by unit.

    Args:
        units: the candidate modules (:func:`units_of`).
        budget: the most LoRA parameters the selection may cost.
        seed: the random seed; the same seed gives the same selection.
        rank: the LoRA rank when ``ranks`` is not given.
        ranks: several ranks to choose from per unit.
        tolerance: the selection costs at least ``(1 - tolerance) * budget``.

    Returns:
        The selection, with ``score`` None.

    Raises:
        StrategyError: a budget that cannot be met (as for :func:`select`).
    """
    units = list(units)
    options, step = _options(units, rank, ranks)
    low, high = _window(units, options, step, budget, tolerance)
    # counts[i][c]: number of selections of the first i units costing c steps, each row scaled
    # by its maximum (only ratios within a row are used, and the raw counts overflow floats).
    counts = np.zeros((len(units) + 1, high + 1))
    counts[0, 0] = 1.0
    for i, opts in enumerate(options):
        row = counts[i].copy()
        for _, cost in opts:
            w = cost // step
            if w <= high:
                row[w:] += counts[i, : high + 1 - w]
        counts[i + 1] = row / row.max()
    window = counts[-1, low:]
    if not window.any():
        raise _no_fit(budget, tolerance, counts[-1] > 0, step)
    rng = np.random.default_rng(seed)
    c = low + int(rng.choice(len(window), p=window / window.sum()))
    chosen = {}
    for i in range(len(units) - 1, -1, -1):
        steps = [0] + [cost // step for _, cost in options[i]]
        weights = np.array([counts[i, c - w] if c - w >= 0 else 0.0 for w in steps])
        k = int(rng.choice(len(steps), p=weights / weights.sum()))
        if k:
            chosen[units[i].module] = options[i][k - 1][0]
            c -= steps[k]
    return _selection(units, chosen, budget, None)


# --- rendering: the chosen modules as a readable strategy string --------------------------------


def _group_names(roles: frozenset[str], present: frozenset[str]) -> str:
    """Group names for a role set: ``all``, ``attn``, ``qkv``, ``mlp`` where they fit exactly."""
    if roles == present:
        return "all"
    names: list[str] = []
    for block, word in ((ATTN_ROLES, "attn"), (MLP_ROLES, "mlp")):
        in_block = [r for r in block if r in present]
        mine = [r for r in block if r in roles]
        if in_block and mine == in_block:
            names.append(word)
        elif {"q", "k", "v"} <= set(mine):
            names += ["qkv"] + [r for r in mine if r not in ("q", "k", "v")]
        else:
            names += mine
    return ",".join(names)


def _layers_text(layers: frozenset[int], num_layers: int) -> str:
    """The shortest selector of exactly ``layers``: nothing for all, an ``every:``, or a list."""
    if len(layers) == num_layers:
        return ""
    text = str(LayerSelector.from_layers(layers))
    offset = min(layers)
    for n in range(2, num_layers):
        if layers == frozenset(range(offset, num_layers, n)) and len(layers) >= 3:
            every = f"every:{n}" if offset == 0 else f"every:{n}:{offset}"
            text = min(text, every, key=len)
    return "@" + text


def render_strategy(chosen: Mapping[str, int] | Iterable[str], arch: ArchInfo, rank: int) -> str:
    """A strategy string that adapts exactly the ``chosen`` modules at their ranks.

    Two spellings are tried, and the one with fewer parts (then the shorter) wins: group the roles
    that share a layer set (``q,v+o@10-19``), or group the layers that share a role set
    (``mlp@20-29+q,v@0-3,7``). Role sets are named with ``all``/``attn``/``qkv``/``mlp`` where
    they are exactly that group in this model, layers as sorted runs (``0-3,7``) or
    ``every:N[:OFFSET]``, and ``:rN`` appears only on parts whose rank is not ``rank``.

    Args:
        chosen: full module name -> rank, or module names (all at ``rank``).
        arch: the classifier's result for the model.
        rank: the global rank the strategy will be compiled with.

    Returns:
        The strategy string; ``compile_plan`` of it at ``rank`` adapts exactly ``chosen``.

    Raises:
        StrategyError: when ``chosen`` is empty or names a module ``arch`` does not have.
    """
    if not isinstance(chosen, Mapping):
        chosen = dict.fromkeys(chosen, rank)
    by_name = {p.name: p for p in arch.projections}
    unknown = [name for name in chosen if name not in by_name]
    if not chosen or unknown:
        raise StrategyError(f"cannot render a placement of {unknown or 'no module'}")
    present = frozenset(arch.roles_present)
    layers_of: dict[tuple[int, str], set[int]] = {}
    for name, r in chosen.items():
        for role in by_name[name].roles:
            layers_of.setdefault((r, role), set()).add(by_name[name].layer)
    by_layers: dict[tuple[int, frozenset[int]], set[str]] = {}
    by_roles: dict[tuple[int, frozenset[str]], set[int]] = {}
    for (r, role), layers in layers_of.items():
        by_layers.setdefault((r, frozenset(layers)), set()).add(role)
        for layer in layers:
            roles = frozenset(q for (rq, q), ls in layers_of.items() if rq == r and layer in ls)
            by_roles.setdefault((r, roles), set()).add(layer)
    spellings = [
        [(r, frozenset(roles), layers) for (r, layers), roles in by_layers.items()],
        [(r, roles, frozenset(layers)) for (r, roles), layers in by_roles.items()],
    ]

    def part(r: int, roles: frozenset[str], layers: frozenset[int]) -> str:
        suffix = "" if r == rank else f":r{r}"
        return _group_names(roles, present) + _layers_text(layers, arch.num_layers) + suffix

    def order(item):
        r, roles, layers = item
        return (r != rank, r, min(ROLES.index(q) for q in roles), min(layers))

    texts = ["+".join(part(*item) for item in sorted(parts, key=order)) for parts in spellings]
    text = min(texts, key=lambda t: (t.count("+"), len(t)))
    plan = compile_plan(text, arch, rank, base_params=0)
    assert plan.module_ranks == {
        p.name: chosen[p.name] for p in arch.projections if p.name in chosen
    }, f"rendered strategy '{text}' does not adapt exactly the chosen modules"
    return text


# --- the whole placement ----------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """An automatic placement, ready to be used as a strategy.

    Attributes:
        method: how the modules were scored (one of :data:`METHODS`, or the caller's name).
        strategy: the strategy string (compile it at ``rank``).
        rank: the global rank the strategy is written for.
        chosen: full module name -> rank, in model order.
        trainable_params: LoRA parameters of the placement (``compile_plan``'s count).
        budget: the parameter budget.
        score: the total score maximised (``None`` for the random control).
    """

    method: str
    strategy: str
    rank: int
    chosen: dict[str, int]
    trainable_params: int
    budget: int
    score: float | None

    @property
    def fill(self) -> float:
        """``trainable_params / budget``, in ``[1 - tolerance, 1]``."""
        return self.trainable_params / self.budget

    def to_json(self) -> dict:
        return {**self.__dict__, "fill": self.fill}


def _placement(method: str, selection: Selection, arch: ArchInfo, rank: int) -> Placement:
    text = render_strategy(selection.chosen, arch, rank)
    trainable = compile_plan(text, arch, rank, base_params=0).trainable_params
    assert trainable == selection.cost, "the rendered strategy's count differs from the knapsack's"
    return Placement(
        method, text, rank, selection.chosen, trainable, selection.budget, selection.score
    )


def place(
    arch: ArchInfo,
    scores: Mapping[str, float],
    budget: int,
    *,
    method: str,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> Placement:
    """The best-scoring placement of ``arch`` within ``budget`` LoRA parameters.

    Args:
        arch: the classified model.
        scores: full module name -> score for every module (e.g. :func:`snr_scores`).
        budget: the most LoRA parameters to place.
        method: the scores' name, recorded in the result.
        rank: the global rank (and the only one unless ``ranks`` is given).
        ranks: several ranks a module may get, e.g. ``(4, 8, 16)``.
        tolerance: the placement costs at least ``(1 - tolerance) * budget``.

    Returns:
        The placement; its strategy compiles to exactly its chosen modules.

    Raises:
        StrategyError: missing scores or a budget that cannot be met (see :func:`select`).
    """
    selection = select(units_of(arch), scores, budget, rank=rank, ranks=ranks, tolerance=tolerance)
    return _placement(method, selection, arch, rank)


def place_random(
    arch: ArchInfo,
    budget: int,
    seed: int,
    *,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> Placement:
    """The random control at ``budget``: see :func:`random_selection` (arguments as there)."""
    selection = random_selection(
        units_of(arch), budget, seed, rank=rank, ranks=ranks, tolerance=tolerance
    )
    return _placement("random", selection, arch, rank)


def write_importance(
    out_dir: str | Path,
    arch: ArchInfo,
    scores: Mapping[str, float] | None,
    chosen: Mapping[str, int] | Iterable[str],
    *,
    title: str = "module scores",
) -> tuple[Path, Path]:
    """Write ``importance.csv`` and ``importance.png`` (a layers x roles heatmap) to ``out_dir``.

    The CSV has one row per role of each module (a fused module gives one row per role, with the
    same score): ``layer, role, module, score, chosen, rank``; ``chosen`` is 1 or 0, ``rank`` is
    empty when not chosen, and ``score`` is empty without scores (the random control). The figure
    shades each cell by its module's score and marks the chosen cells with a dot.

    Args:
        out_dir: the directory (created if needed).
        arch: the classified model.
        scores: full module name -> score, or None.
        chosen: the placement's modules (name -> rank, or names).
        title: the figure's title.

    Returns:
        The paths of the CSV and the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranks = dict(chosen) if isinstance(chosen, Mapping) else dict.fromkeys(chosen, 0)
    roles = [r for r in ROLES if r in arch.roles_present]
    grid = np.full((arch.num_layers, len(roles)), np.nan)
    marks: list[tuple[int, int]] = []
    csv_path = out / "importance.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "role", "module", "score", "chosen", "rank"])
        for p in arch.projections:
            score = None if scores is None else scores.get(p.name)
            for role in p.roles:
                taken = p.name in ranks
                writer.writerow(
                    [
                        p.layer,
                        role,
                        p.name,
                        "" if score is None else repr(float(score)),
                        int(taken),
                        ranks[p.name] or "" if taken else "",
                    ]
                )
                grid[p.layer, roles.index(role)] = np.nan if score is None else score
                if taken:
                    marks.append((p.layer, roles.index(role)))
    height = 1.6 + 0.22 * arch.num_layers
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * len(roles), height), layout="constrained")
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    if scores is not None:
        bar = fig.colorbar(image, ax=ax, label="score")
        formatter = ScalarFormatter(useOffset=False, useMathText=True)
        bar.ax.yaxis.set_major_formatter(formatter)
    if marks:
        ys, xs = zip(*marks)
        ax.scatter(xs, ys, s=18, c="white", edgecolors="black", linewidths=0.6)
    ax.set_xticks(range(len(roles)), roles)
    ax.set_yticks(range(0, arch.num_layers, max(1, math.ceil(arch.num_layers / 40))))
    ax.set_xlabel("role (dots: chosen)")
    ax.set_ylabel("layer")
    ax.set_title(title)
    png_path = out / "importance.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path
