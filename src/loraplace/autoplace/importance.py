"""Importance scores of adaptable modules, and the files that show them.

- ``snr`` (:func:`snr_scores`): data-free, from the base weights; the share of a weight's
  spectral energy in singular values above the Marchenko–Pastur bulk edge, in the spirit of
  Spectrum (Hartford et al., 2024, https://arxiv.org/abs/2406.06623).
- ``grad`` (:func:`contribution_scores`, the default; :func:`gradient_sensitivity` as an
  alternative): data-driven, from an all-linear LoRA probe trained briefly on the training split;
  the mean norm of each adapter's output ``‖ΔW x‖`` (LoRA-drop, Zhou et al., 2024,
  https://arxiv.org/abs/2402.07721).

:func:`write_importance` writes ``importance.csv`` and ``importance.png`` (docs/PLACEMENT.md).
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loraplace import store
from loraplace.placement.arch import ArchInfo
from loraplace.placement.grammar import ROLES
from loraplace.training.evaluate import accepts_logits_mask
from loraplace.training.precision import autocast_for

__all__ = [
    "mp_median",
    "spectral_signal_fraction",
    "snr_scores",
    "contribution_scores",
    "gradient_sensitivity",
    "write_importance",
]


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
    for proj in arch.projections:
        weight = _module(model, proj.name).weight
        if weight.is_meta:
            raise ValueError("snr needs the model's weights; this model was built on 'meta'")
        scores[proj.name] = spectral_signal_fraction(weight)
    return scores


# --- grad: data-driven, from a briefly trained all-linear LoRA probe ---------------------------


def _lora_layers(peft_model: nn.Module, arch: ArchInfo) -> dict[str, nn.Module]:
    """Arch module name -> the PEFT LoRA layer wrapping it, for every wrapped classified module."""
    wanted = {proj.name for proj in arch.projections}
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
    ranks = dict(chosen) if isinstance(chosen, Mapping) else dict.fromkeys(chosen, 0)
    roles = [r for r in ROLES if r in arch.roles_present]
    grid = np.full((arch.num_layers, len(roles)), np.nan)
    marks: list[tuple[int, int]] = []
    csv_path = out / "importance.csv"
    table = io.StringIO(newline="")
    writer = csv.writer(table)
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
    # Both files atomically and never through a link, inside out_dir (docs/FORMATS.md).
    store.write_text_atomic(csv_path, table.getvalue())
    png_path = out / "importance.png"
    try:
        store.write_atomic(png_path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    finally:
        plt.close(fig)
    return csv_path, png_path
